"""The adaptation trainers: validation on held-out PU data, DALLMi and the BCE target baselines."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from dallmi_core.config import AdaptConfig
from dallmi_core.errors import ConfigError
from dallmi_core.evaluation.metrics import pu_estimated_ap
from dallmi_core.method.losses import variational_term
from dallmi_core.method.mixup import MixupRecord, draw_mixup, score_pairs
from dallmi_core.method.sampling import LabelBalancedSampler, UnlabeledStream
from dallmi_core.method.step import StepContext, vectorised_dallmi_step
from dallmi_core.modeling.scoring import logits_for, sigmoid
from dallmi_core.training.pu_split import pu_split
from dallmi_core.training.trainer import BceTrainer, Trainer, steps_for_epochs


class TargetTrainer(Trainer):
    """Shared by the adaptation methods: the PU split and validation on held-out tags."""

    evaluates = True

    def __init__(self, clf, tokens, tags: Sequence[Sequence[int]], cfg: AdaptConfig, **kw):
        super().__init__(clf, tokens, cfg, **kw)
        if len(tags) != clf.num_labels:
            raise ConfigError(f"Got tags for {len(tags)} labels but the model has {clf.num_labels}.")
        self.split = pu_split(tags, len(tokens), cfg)
        self.evaluates = any(self.split.val_tags) and bool(self.split.val_unlabeled)
        self.val_docs = np.unique(
            np.concatenate([self.split.val_unlabeled, *map(list, self.split.val_tags)]).astype(np.int64)
        )

    def validation_metrics(self):
        logits = logits_for(self.model, self.tokens, self.val_docs, device=self.device)
        row = {d: i for i, d in enumerate(self.val_docs)}
        unl = logits[[row[d] for d in self.split.val_unlabeled]]
        variational, pu_ap = [], []
        for label, held in enumerate(self.split.val_tags):
            if not held:
                continue
            pos = logits[[row[d] for d in held], label]
            v = variational_term(torch.from_numpy(unl[:, label : label + 1]), torch.from_numpy(pos[None, :]), "log")
            variational.append(float(v[0]))
            pu_ap.append(pu_estimated_ap(sigmoid(pos), sigmoid(unl[:, label])))
        metrics = {"val_variational": float(np.sum(variational)), "val_pu_ap": float(np.mean(pu_ap))}
        if self.cfg.selection == "val_variational":
            metrics["selection_score"] = -metrics["val_variational"]
        elif self.cfg.selection == "val_pu_ap":
            metrics["selection_score"] = metrics["val_pu_ap"]
        return metrics


class DallmiTrainer(TargetTrainer):
    """Variational PU loss + MixUp on word embeddings with label-balanced sampling; with `anchor`
    (dallmi-anchored) every step's documents are also held to the source model's predictions."""

    stage = "adapt"

    def __init__(self, clf, tokens, tags, cfg: AdaptConfig, anchor: np.ndarray | None = None, **kw):
        super().__init__(clf, tokens, tags, cfg, **kw)
        self.anchor = anchor
        pool = np.asarray(self.split.train_pool)[self.rank :: self.world]
        self.sampler = LabelBalancedSampler(
            pool,
            self.split.train_tags,
            batch_size=cfg.batch_size,
            positives_per_label=cfg.positives_per_label,
            seed=cfg.seed + 1000 * self.rank,
        )
        self.mix_rng = np.random.default_rng(cfg.seed + 1000 * self.rank + 1)

    def step_budget(self):
        cfg = self.cfg
        if cfg.max_steps is not None:
            return cfg.max_steps
        if cfg.epochs is not None:
            return steps_for_epochs(cfg.epochs, len(self.split.train_pool), cfg.batch_size, self.world)
        tags = [len(t) for t in self.split.train_tags if t]
        return max(cfg.min_steps, math.ceil(cfg.tag_passes * float(np.mean(tags)) / cfg.positives_per_label))

    def compute_loss(self):
        batch = self.sampler.next()
        mix = (
            draw_mixup(self.mix_rng, batch, self.cfg.mixup_pairs, self.cfg.mixup_alpha) if self.cfg.uses_mixup else None
        )
        self.state.mixup = None if mix is None else self.mixup_record(batch, mix)
        context = StepContext(self.model, self.tokens, self.cfg, self.device)
        return vectorised_dallmi_step(context, batch, mix, self.anchor)

    def mixup_record(self, batch, mix) -> MixupRecord:
        """The step's pairs in corpus positions, scored by the model only if a callback asks."""
        act = np.flatnonzero(batch.active)
        pairs = mix.pair_u.shape[1]
        return MixupRecord(
            step=self.state.step + 1,
            labels=np.repeat(act, pairs),
            unlabeled=batch.unlabeled[mix.pair_u[act]].ravel(),
            positive=np.take_along_axis(batch.positives[act], mix.pair_p[act], axis=1).ravel(),
            mu=mix.mu[act].ravel(),
            score=lambda u, p, mu, labels: score_pairs(
                self.model, self.tokens, u, p, mu, labels, mixup_at=self.cfg.mixup_at
            ),
        )

    def epoch_progress(self):
        return self.sampler.unlabeled.progress

    def unlabeled_shard(self):
        return self.sampler.unlabeled.pool

    def sampler_state(self):
        return {"sampler": self.sampler.state_dict(), "mix_rng": self.mix_rng.bit_generator.state}

    def load_sampler_state(self, state):
        self.sampler.load_state_dict(state["sampler"])
        self.mix_rng.bit_generator.state = state["mix_rng"]


class BceTargetTrainer(TargetTrainer, BceTrainer):
    """bce-partial (untagged = negative) or target-oracle (`gold` given: all gold target labels)."""

    stage = "adapt"

    def __init__(self, clf, tokens, tags, cfg: AdaptConfig, gold: np.ndarray | None = None, **kw):
        super().__init__(clf, tokens, tags, cfg, **kw)
        if gold is None:
            gold = np.zeros((len(tokens), clf.num_labels), dtype=np.float32)
            for label, docs in enumerate(self.split.train_tags):
                gold[list(docs), label] = 1.0
        self.targets = gold.astype(np.float32)
        pool = np.asarray(self.split.train_pool)[self.rank :: self.world]
        self.stream = UnlabeledStream(pool, cfg.batch_size, np.random.default_rng(cfg.seed + self.rank))

    def step_budget(self):
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        return steps_for_epochs(self.cfg.epochs or 3.0, len(self.split.train_pool), self.cfg.batch_size, self.world)
