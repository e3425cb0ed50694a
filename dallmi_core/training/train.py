"""Source fine-tuning, DALLMi adaptation and the BCE baselines, as one loop of named stages.

`Trainer.fit -> setup -> (train_step -> compute_loss) x N -> evaluate / checkpoint -> finish`.
Written on accelerate, so the same code runs on the CPU, one GPU or many processes (the
unlabeled pool is sharded by rank; only rank 0 writes). Model selection uses held-out PU
validation data (tags + unlabeled documents), never gold labels.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from dallmi_core.config import DALLMI_LOSS, AdaptConfig, SourceConfig, TrainingBase
from dallmi_core.errors import ConfigError, RunStateError
from dallmi_core.evaluation.metrics import pu_estimated_ap
from dallmi_core.method.losses import variational_term
from dallmi_core.method.mixup import MixupRecord, score_pairs
from dallmi_core.method.sampling import LabelBalancedSampler, UnlabeledStream
from dallmi_core.method.step import bce_step, draw_mixup, vectorised_dallmi_step
from dallmi_core.modeling.calibration import Calibration, calibrate_on_target, fit_on_source, source_calibration
from dallmi_core.modeling.model import Classifier, eager_attention, resolve_device, unwrap
from dallmi_core.modeling.precision import cpu_bf16, resolve_precision
from dallmi_core.modeling.scoring import logits_for, sigmoid
from dallmi_core.modeling.tokens import TokenizedCorpus
from dallmi_core.training.callbacks import Callback, CallbackList, EarlyStopping, TrainState
from dallmi_core.training.distributed import gather, rank_device
from dallmi_core.training.probe import probe_head
from dallmi_core.training.prototype import features_and_logits, fold_prototypes, head_linear

CHECKPOINT_FILE = "trainer_state.pt"


def make_accelerator(device: str, precision: str) -> Accelerator:
    """device auto: cuda > mps > cpu; precision auto: see `precision.resolve_precision`."""
    device_type = resolve_device(device)
    cpu = device_type == "cpu"
    precision = resolve_precision(precision, device_type)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps one process-wide state that refuses another device or precision; a
        # long-lived process (the worker, a test session) starts every run from a clean one.
        # Under torchrun/accelerate launch the distributed state must stay as it is.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=cpu, mixed_precision=precision)


@dataclass(frozen=True)
class PUSplit:
    """Training tags, held-out validation tags per label, and held-out unlabeled documents."""

    train_tags: tuple[tuple[int, ...], ...]
    val_tags: tuple[tuple[int, ...], ...]
    val_unlabeled: tuple[int, ...]
    train_pool: tuple[int, ...]


def pu_split(tags: Sequence[Sequence[int]], n_docs: int, cfg: AdaptConfig) -> PUSplit:
    """Hold out about `val_fraction` of each label's tags and `val_unlabeled` documents.

    A held-out document is validation data for every label it carries and trains none; labels
    are served rarest first and no label is left without a training tag. Held-out documents
    leave the training pool.
    """
    rng = np.random.default_rng(cfg.seed + 7919)
    distinct = [sorted({int(i) for i in label_tags}) for label_tags in tags]
    labels_of: dict[int, list[int]] = {}
    for label, docs in enumerate(distinct):
        for doc in docs:
            labels_of.setdefault(doc, []).append(label)
    remaining = [len(docs) for docs in distinct]  # training tags left per label
    held: set[int] = set()
    for label in sorted(range(len(distinct)), key=lambda lab: len(distinct[lab])):
        n = len(distinct[label])
        want = min(int(round(cfg.val_fraction * n)), n - 1) if n >= 2 else 0
        have = sum(doc in held for doc in distinct[label])
        for doc in rng.permutation(np.asarray(distinct[label], dtype=np.int64)):
            if have >= want:
                break
            doc = int(doc)
            if doc in held or any(remaining[m] <= 1 for m in labels_of[doc]):
                continue
            held.add(doc)
            have += 1
            for m in labels_of[doc]:
                remaining[m] -= 1
    train = tuple(tuple(d for d in docs if d not in held) for docs in distinct)
    val = tuple(tuple(d for d in docs if d in held) for docs in distinct)
    rest = np.setdiff1d(np.arange(n_docs), np.fromiter(held, dtype=np.int64, count=len(held)))
    n_unl = min(cfg.val_unlabeled, len(rest) // 5)  # kept under every selection: the PU estimate
    val_unl = np.sort(rng.choice(rest, size=n_unl, replace=False)) if n_unl else np.empty(0, np.int64)
    pool = np.setdiff1d(rest, val_unl)
    return PUSplit(train, val, tuple(int(i) for i in val_unl), tuple(int(i) for i in pool))


@dataclass
class TrainResult:
    clf: Classifier
    state: TrainState
    split: PUSplit | None = None
    extras: dict = field(default_factory=dict)


class Trainer:
    """The shared loop; subclasses provide `compute_loss` and the step budget."""

    stage = "train"

    def __init__(
        self,
        clf: Classifier,
        tokens: TokenizedCorpus,
        cfg: TrainingBase,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: str | os.PathLike | None = None,
    ):
        self.clf, self.tokens, self.cfg = clf, tokens, cfg
        self.callbacks = CallbackList(list(callbacks))
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.accelerator = make_accelerator(cfg.device, cfg.precision)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.best_weights: dict[str, torch.Tensor] | None = None

    # -- stages ---------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        self.setup()
        self.callbacks.on_train_begin(self.state)
        if self.state.step == 0 and self.evaluates:
            self.evaluate()
        while self.state.step < self.state.max_steps and not self.state.should_stop:
            self.train_step()
            if self.evaluates and (
                self.state.step % self.cfg.eval_every == 0 or self.state.step == self.state.max_steps
            ):
                self.evaluate()
            if self.callbacks.on_checkpoint(self.state):
                self.save_checkpoint()
        if self.state.should_stop and self.state.stop_reason == "cancelled":
            self.save_checkpoint()  # a cancelled run can be resumed without losing its steps
        return self.finish()

    def setup(self) -> None:
        set_seed(self.cfg.seed + self.rank)
        model = self.clf.model
        model.train()
        optimizer = torch.optim.AdamW(
            self.param_groups(unwrap(model)), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )
        max_steps = self.step_budget()
        from transformers import get_linear_schedule_with_warmup

        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.cfg.warmup_ratio * max_steps), max_steps)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.device = self.accelerator.device
        self.state = TrainState(stage=self.stage, max_steps=max_steps)
        self.maybe_resume()

    def train_step(self) -> None:
        eager = cpu_bf16(self.device.type, self.accelerator.mixed_precision)
        with self.accelerator.autocast(), eager_attention(self.model, enabled=eager):
            loss, parts = self.compute_loss()
        self.accelerator.backward(loss)
        if self.cfg.grad_clip > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.parts = parts
        self.state.epoch = self.epoch_progress()
        self.callbacks.on_step_end(self.state)

    def finish(self) -> TrainResult:
        if self.best_weights is not None:
            unwrap(self.model).load_state_dict(self.best_weights)
        self.callbacks.on_train_end(self.state)
        # accelerate's mixed precision patches the model's forward with autocast; the model handed back
        # must be the plain one, or every later forward (the int8 scoring copy too) runs under it
        self.clf.model = self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)
        self.clf.model.eval()
        if self.state.step:
            self.clf.model.config.dallmi_fresh_head = False
        extras = {"unlabeled_shard": self.unlabeled_shard().tolist(), "precision": self.accelerator.mixed_precision}
        return TrainResult(self.clf, self.state, getattr(self, "split", None), extras)

    # -- hooks for subclasses ------------------------------------------------------------------
    evaluates = False

    def param_groups(self, model) -> list[dict]:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def step_budget(self) -> int:
        raise NotImplementedError

    def compute_loss(self):
        raise NotImplementedError

    def epoch_progress(self) -> float:
        return 0.0

    def validation_metrics(self) -> dict:
        return {}

    def sampler_state(self) -> dict:
        return {}

    def load_sampler_state(self, state: dict) -> None: ...

    def unlabeled_shard(self) -> np.ndarray:
        """This rank's slice of the training documents (under data parallelism: disjoint per rank)."""
        return np.empty(0, dtype=np.int64)

    # -- model selection -----------------------------------------------------------------------
    def evaluate(self) -> None:
        metrics = self.validation_metrics()
        score = metrics.get("selection_score")
        improved = score is not None and (self.state.best_score is None or score > self.state.best_score + 1e-9)
        if improved:
            self.state.best_score, self.state.best_step = score, self.state.step
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in unwrap(self.model).state_dict().items()}
        metrics = {"step": self.state.step, **metrics, "improved": improved}
        self.state.history.append(metrics)
        self.callbacks.on_evaluate(self.state, metrics)

    # -- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if self.checkpoint_dir is None:
            return
        samplers = gather(self.sampler_state())  # every rank's stream, so each resumes its own shard
        if not self.accelerator.is_main_process:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "step": self.state.step,
            "history": self.state.history,
            "best_step": self.state.best_step,
            "best_score": self.state.best_score,
            "model": unwrap(self.model).state_dict(),
            "best": self.best_weights,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": samplers,
            "torch_rng": torch.get_rng_state(),
            "config": self.cfg.to_dict(),
        }
        tmp = self.checkpoint_dir / (CHECKPOINT_FILE + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, self.checkpoint_dir / CHECKPOINT_FILE)  # a kill never leaves half a file

    def maybe_resume(self) -> None:
        path = self.checkpoint_dir / CHECKPOINT_FILE if self.checkpoint_dir else None
        if path is None or not path.exists():
            return
        try:  # tensors and plain values only: a pickled object in a tampered file is never run
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise RunStateError(
                f"Checkpoint {path} cannot be resumed: it is not a checkpoint of this tool "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}); start a new run."
            ) from exc
        if payload["config"] != self.cfg.to_dict():
            raise RunStateError(f"Checkpoint {path} was written with another configuration; start a new run.")
        unwrap(self.model).load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        samplers = payload["sampler"]
        if isinstance(samplers, dict):  # written before checkpoints held one stream per rank
            samplers = [samplers]
        if len(samplers) != self.world:
            raise RunStateError(
                f"Checkpoint {path} was written by {len(samplers)} processes, this run has {self.world}; "
                "resume it with as many processes, or start a new run."
            )
        self.load_sampler_state(samplers[self.rank])
        torch.set_rng_state(payload["torch_rng"])
        self.best_weights = payload["best"]
        self.state.step = self.state.resumed_from = payload["step"]
        self.state.history, self.state.best_step, self.state.best_score = (
            payload["history"],
            payload["best_step"],
            payload["best_score"],
        )


def _steps_for_epochs(epochs: float, pool: int, batch_size: int, world: int) -> int:
    return max(1, math.ceil(epochs * pool / (batch_size * world)))


class SourceTrainer(Trainer):
    """BCE on labelled source documents, after the head's warm-up on frozen features (probe.py)."""

    stage = "finetune-source"

    def __init__(self, clf, tokens, targets: np.ndarray, cfg: SourceConfig, **kw):
        super().__init__(clf, tokens, cfg, **kw)
        self.targets = targets
        pool = np.arange(len(tokens))[self.rank :: self.world]
        self.stream = UnlabeledStream(pool, cfg.batch_size, np.random.default_rng(cfg.seed + self.rank))

    def param_groups(self, model):
        head = {id(p) for p in model.classifier.parameters()} if hasattr(model, "classifier") else set()
        body = [p for p in model.parameters() if id(p) not in head]
        groups = [{"params": body}]
        if head:
            head_lr = self.cfg.head_lr if self.cfg.head_lr is not None else self.cfg.lr
            groups.append({"params": [p for p in model.parameters() if id(p) in head], "lr": head_lr})
        return groups

    def step_budget(self):
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        epochs = self.cfg.epochs or SourceConfig.default_epochs
        return _steps_for_epochs(epochs, len(self.tokens), self.cfg.batch_size, self.world)

    def compute_loss(self):
        batch = self.stream.next()
        return bce_step(self.model, self.tokens, batch, self.targets[batch], self.device)

    def epoch_progress(self):
        return self.stream.progress

    def unlabeled_shard(self):
        return self.stream.pool

    def sampler_state(self):
        return {"stream": self.stream.state_dict(), "rng": self.stream.rng.bit_generator.state}

    def load_sampler_state(self, state):
        self.stream.load_state_dict(state["stream"])
        self.stream.rng.bit_generator.state = state["rng"]


class _TargetTrainer(Trainer):
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


class DallmiTrainer(_TargetTrainer):
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
            return _steps_for_epochs(cfg.epochs, len(self.split.train_pool), cfg.batch_size, self.world)
        tags = [len(t) for t in self.split.train_tags if t]
        return max(cfg.min_steps, math.ceil(cfg.tag_passes * float(np.mean(tags)) / cfg.positives_per_label))

    def compute_loss(self):
        batch = self.sampler.next()
        mix = (
            draw_mixup(self.mix_rng, batch, self.cfg.mixup_pairs, self.cfg.mixup_alpha) if self.cfg.uses_mixup else None
        )
        self.state.mixup = None if mix is None else self.mixup_record(batch, mix)
        return vectorised_dallmi_step(self.model, self.tokens, batch, mix, self.cfg, self.device, self.anchor)

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


class BceTargetTrainer(_TargetTrainer):
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
        return _steps_for_epochs(self.cfg.epochs or 3.0, len(self.split.train_pool), self.cfg.batch_size, self.world)

    def compute_loss(self):
        batch = self.stream.next()
        return bce_step(self.model, self.tokens, batch, self.targets[batch], self.device)

    def epoch_progress(self):
        return self.stream.progress

    def unlabeled_shard(self):
        return self.stream.pool

    def sampler_state(self):
        return {"stream": self.stream.state_dict(), "rng": self.stream.rng.bit_generator.state}

    def load_sampler_state(self, state):
        self.stream.load_state_dict(state["stream"])
        self.stream.rng.bit_generator.state = state["rng"]


def interpolate_weights(model: torch.nn.Module, start: dict[str, torch.Tensor], alpha: float) -> None:
    """WiSE-FT (Wortsman et al. 2022) in place: every floating weight becomes alpha * its adapted
    value + (1 - alpha) * its value in `start` (the source model's)."""
    with torch.no_grad():
        for name, value in unwrap(model).state_dict().items():
            if value.is_floating_point():
                value.mul_(alpha).add_(start[name].to(value.device, value.dtype), alpha=1 - alpha)


def calibration_rows(n: int, cfg: SourceConfig) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out calibration rows) of the source rows; with too few to hold out,
    every row trains and the calibration is fitted on the training rows (slightly overconfident)."""
    held = int(round(cfg.calibration_fraction * n))
    if held < SourceConfig.min_calibration_rows or n - held < 1:
        everything = np.arange(n)
        return everything, everything
    order = np.random.default_rng(cfg.seed + 104729).permutation(n)
    return np.sort(order[held:]), np.sort(order[:held])


def finetune_source(
    clf: Classifier,
    texts: Sequence[str],
    targets: np.ndarray,
    cfg: SourceConfig,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir=None,
) -> TrainResult:
    """Fine-tune `clf` with BCE on labelled source texts (targets [n, L] 0/1): first the head alone
    on frozen features (skipped when resuming: the checkpoint holds the weights), then everything;
    finally the per-label Platt calibration on the held-out source rows (`calibration_fraction`)."""
    train_rows, held_rows = calibration_rows(len(texts), cfg)
    targets = np.asarray(targets)
    tokens = TokenizedCorpus.build(clf.tokenizer, [texts[i] for i in train_rows], cfg.max_length)
    resuming = checkpoint_dir is not None and (Path(checkpoint_dir) / CHECKPOINT_FILE).exists()
    if not resuming:
        probed = probe_head(clf.model, tokens, targets[train_rows], cfg, callbacks)
        if probed is not None and probed.should_stop:  # cancelled during the warm-up: nothing to resume
            clf.model.eval()
            return TrainResult(clf, probed)
    trainer = SourceTrainer(clf, tokens, targets[train_rows], cfg, callbacks=callbacks, checkpoint_dir=checkpoint_dir)
    result = trainer.fit()
    if result.state.stop_reason != "cancelled":
        held = TokenizedCorpus.build(clf.tokenizer, [texts[i] for i in held_rows], cfg.max_length)
        logits = logits_for(result.clf.model, held)
        fits = fit_on_source(logits, targets[held_rows], clf.label_names)
        result.clf.set_calibration(source_calibration(fits, logits, clf.label_names), source_fit=fits)
    return result


def calibrate_adapted(
    result: TrainResult,
    tokens: TokenizedCorpus,
    tags: Sequence[Sequence[int]],
    prior: CalibrationInputs,
    logits: np.ndarray | None = None,
) -> Calibration:
    """The adapted model's calibration on all its target documents (the priors estimated before it
    trained, by the source model; `logits` if its pass over them is done already); attached to the
    model's config."""
    clf = result.clf
    logits = logits_for(clf.model, tokens) if logits is None else logits
    calibration = calibrate_on_target(
        clf.label_names, logits, tags, source_fit=prior.source_fit, prior_logits=prior.logits, seed=result.state.step
    )
    clf.set_calibration(calibration)
    return calibration


def calibrate_source_on_target(
    clf: Classifier, texts: Sequence[str], tags: Sequence[Sequence[int]], max_length: int, seed: int = 0
) -> Calibration | None:
    """A source model's calibration re-estimated on target `texts` and their tags (its source fit
    kept); a model without a source fit keeps the calibration it carries."""
    fit = clf.source_fit()
    if fit is None or not len(texts):
        return clf.calibration()
    logits = logits_for(clf.model, TokenizedCorpus.build(clf.tokenizer, texts, max_length))
    calibration = calibrate_on_target(clf.label_names, logits, tags, source_fit=fit, same_model=True, seed=seed)
    clf.set_calibration(calibration, source_fit=fit)
    return calibration


@dataclass(frozen=True)
class CalibrationInputs:
    """What the initial model says about the target before adapting: its logits and source fit."""

    logits: np.ndarray | None
    source_fit: dict | None


def adapt(
    clf: Classifier,
    texts: Sequence[str],
    tags: Sequence[Sequence[int]],
    cfg: AdaptConfig,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir=None,
    gold: np.ndarray | None = None,
    tokens: TokenizedCorpus | None = None,
    source_texts: Sequence[str] | None = None,
) -> TrainResult:
    """Adapt `clf` to target `texts`; `tags[l]` lists the documents tagged positive for label l.

    A source model with a source fit first scores the target (one inference pass): the label priors
    are estimated from it; after training the adapted model is calibrated on the target with them.
    dallmi-anchored uses that pass as its anchor too, and ends with the WiSE-FT interpolation toward
    the source weights and the tags' prototypes folded into the head (one pass, which the
    calibration reuses); a model whose head was never trained has no knowledge to keep, and is not
    anchored. aad also needs `source_texts`."""
    tokens = tokens or TokenizedCorpus.build(clf.tokenizer, texts, cfg.max_length)
    callbacks = list(callbacks)
    if cfg.patience is not None:
        callbacks.append(EarlyStopping(cfg.patience))
    source_fit = clf.source_fit()
    anchored = cfg.anchored and not clf.fresh_head
    clf.model.to(rank_device(resolve_device(cfg.device)))  # each rank on its own device under a launcher
    start_logits = logits_for(clf.model, tokens) if source_fit or anchored else None
    inputs = CalibrationInputs(start_logits if source_fit else None, source_fit)
    start = {k: v.detach().to("cpu", copy=True) for k, v in clf.model.state_dict().items()} if anchored else None
    kw = {"callbacks": callbacks, "checkpoint_dir": checkpoint_dir}
    if cfg.method in DALLMI_LOSS:
        anchor = anchor_targets(start_logits, tags) if anchored else None
        result = DallmiTrainer(clf, tokens, tags, cfg, anchor=anchor, **kw).fit()
    elif cfg.method == "aad":
        if not source_texts:
            raise ConfigError("aad needs source documents: it learns from source vs target text.")
        from dallmi_core.training.adversarial import AadTrainer  # it builds on this module's trainers

        source_tokens = TokenizedCorpus.build(clf.tokenizer, source_texts, cfg.max_length)
        result = AadTrainer(clf, tokens, tags, cfg, source_tokens=source_tokens, **kw).fit()
    elif cfg.method == "target-oracle":
        if gold is None:
            raise ConfigError("target-oracle needs gold target labels (it is the upper bound).")
        result = BceTargetTrainer(clf, tokens, tags, cfg, gold=gold, **kw).fit()
    else:
        result = BceTargetTrainer(clf, tokens, tags, cfg, **kw).fit()
    if result.state.stop_reason != "cancelled":
        final_logits = None
        if anchored and cfg.wise_alpha < 1:
            interpolate_weights(result.clf.model, start, cfg.wise_alpha)
        if anchored and cfg.prototype_weight > 0 and head_linear(result.clf.model) is not None:
            features, logits = features_and_logits(result.clf.model, tokens)
            final_logits = fold_prototypes(result.clf.model, features, logits, tags, cfg.prototype_weight)
        result.extras["anchored"] = anchored
        result.extras["calibration"] = calibrate_adapted(result, tokens, tags, inputs, final_logits)
    return result


def anchor_targets(logits: np.ndarray, tags: Sequence[Sequence[int]]) -> np.ndarray:
    """The anchor of dallmi-anchored: the source model's probabilities per document and label, 1
    where the user tagged the document with the label."""
    targets = sigmoid(logits).astype(np.float32)
    for label, docs in enumerate(tags):
        targets[list(docs), label] = 1.0
    return targets
