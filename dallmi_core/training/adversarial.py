"""AAD, the unsupervised baseline of the DALLMi paper's comparison (Ryu & Lee 2020, arXiv 2010.11478).

Adversarial adaptation with knowledge distillation, done as the paper describes it for BERT and
adapted to multi-label heads: distillation through per-label sigmoids at a temperature, never a
softmax over labels; the discriminator is trained on both domain labels every step.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from dallmi_core.config import AdaptConfig
from dallmi_core.errors import ConfigError
from dallmi_core.method.losses import anchor_term
from dallmi_core.method.sampling import UnlabeledStream
from dallmi_core.modeling.model import forward_logits, unwrap
from dallmi_core.modeling.tokens import TokenizedCorpus
from dallmi_core.training.target import TargetTrainer
from dallmi_core.training.trainer import steps_for_epochs


class AadTrainer(TargetTrainer):
    """AAD, the paper's unsupervised baseline (Ryu & Lee 2020, arXiv 2010.11478): the target encoder,
    started from the source model, learns to fool a domain discriminator that sees the frozen source
    encoder's features of source text (domain 1) and its own features of target text (domain 0),
    while distilling the frozen source model's predictions on source text (multi-label: per-label
    sigmoids at temperature T, scaled by T^2). The classifier head stays the source model's."""

    stage = "adapt"

    def __init__(self, clf, tokens, tags, cfg: AdaptConfig, source_tokens: TokenizedCorpus, **kw):
        super().__init__(clf, tokens, tags, cfg, **kw)
        head = getattr(unwrap(clf.model), "classifier", None)
        if not isinstance(head, torch.nn.Module):
            raise ConfigError("aad needs a model with a `classifier` head (a BERT-style sequence classifier).")
        if len(source_tokens) == 0:
            raise ConfigError("aad needs source documents: it learns from source vs target text.")
        self.source_tokens = source_tokens
        device = self.accelerator.device
        self.teacher = copy.deepcopy(unwrap(clf.model)).to(device).eval().requires_grad_(False)
        width = unwrap(clf.model).config.hidden_size
        torch.manual_seed(cfg.seed)
        self.disc = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 1)).to(
            device
        )
        target_pool = np.asarray(self.split.train_pool)[self.rank :: self.world]
        self.target_stream = UnlabeledStream(target_pool, cfg.batch_size, np.random.default_rng(cfg.seed + self.rank))
        source_pool = np.arange(len(source_tokens))[self.rank :: self.world]
        source_rng = np.random.default_rng(cfg.seed + 7 + self.rank)
        self.source_stream = UnlabeledStream(source_pool, cfg.batch_size, source_rng)

    def param_groups(self, model):
        head = {id(p) for p in model.classifier.parameters()}
        encoder = [p for p in model.parameters() if id(p) not in head]
        return [{"params": encoder}, {"params": list(self.disc.parameters()), "lr": self.cfg.aad_disc_lr}]

    def step_budget(self):
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        if self.cfg.epochs is not None:
            return steps_for_epochs(self.cfg.epochs, len(self.split.train_pool), self.cfg.batch_size, self.world)
        return self.cfg.min_steps

    def compute_loss(self):
        source_ids, source_mask = (t.to(self.device) for t in self.source_tokens.collate(self.source_stream.next()))
        target_ids, target_mask = (t.to(self.device) for t in self.tokens.collate(self.target_stream.next()))
        with torch.no_grad():
            teacher_z, source_features = _logits_and_features(self.teacher, source_ids, source_mask)
        student_z, _ = _logits_and_features(self.model, source_ids, source_mask)
        _, target_features = _logits_and_features(self.model, target_ids, target_mask)
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        d_source = self.disc(source_features.float()).squeeze(1)
        d_target = self.disc(target_features.detach().float()).squeeze(1)
        disc_loss = bce(d_source, torch.ones_like(d_source)) + bce(d_target, torch.zeros_like(d_target))
        frozen = {name: p.detach() for name, p in self.disc.named_parameters()}  # the encoder's turn: D fixed
        fooled = torch.func.functional_call(self.disc, frozen, (target_features.float(),)).squeeze(1)
        adversarial = bce(fooled, torch.ones_like(fooled))
        t = self.cfg.aad_temperature
        distill = anchor_term(student_z / t, torch.sigmoid(teacher_z.float() / t)).mean() * t * t  # per-label KL
        loss = disc_loss + adversarial + self.cfg.aad_kd_weight * distill
        parts = {"discriminator": disc_loss, "adversarial": adversarial, "distill": distill, "loss": loss}
        return loss, {name: float(v.detach()) for name, v in parts.items()}

    def epoch_progress(self):
        return self.target_stream.progress

    def unlabeled_shard(self):
        return self.target_stream.pool

    def sampler_state(self):
        streams = {name: getattr(self, name) for name in ("target_stream", "source_stream")}
        state = {name: {"stream": s.state_dict(), "rng": s.rng.bit_generator.state} for name, s in streams.items()}
        state["disc"] = {name: v.detach().cpu().tolist() for name, v in self.disc.state_dict().items()}
        return state

    def load_sampler_state(self, state):
        for name in ("target_stream", "source_stream"):
            getattr(self, name).load_state_dict(state[name]["stream"])
            getattr(self, name).rng.bit_generator.state = state[name]["rng"]
        self.disc.load_state_dict({name: torch.tensor(v) for name, v in state["disc"].items()})


def _logits_and_features(model, ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the features the classifier head sees (the pooled first token, after dropout)."""
    seen = {}
    hook = unwrap(model).classifier.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    try:
        logits = forward_logits(model, input_ids=ids, attention_mask=mask)
    finally:
        hook.remove()
    return logits, seen["x"]
