"""Head warm-up on frozen encoder features before source fine-tuning (LP-FT).

Full fine-tuning from a randomly initialised head distorts the pretrained features and transfers
worse out of domain than the frozen features do (Kumar et al. 2022, "Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution"). Measured here (docs/BENCHMARKS.md):
plain fine-tuning of MiniLM on arxiv_shift's source rows scored 0.44 macro AP on the target, a
logistic regression on its frozen features 0.53. So the head (pooler + classifier) is first
trained alone on cached first-token features, which costs one inference pass over the source
rows, and only then is the whole model fine-tuned at a small learning rate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dallmi_core.config import SourceConfig
from dallmi_core.modeling.model import resolve_device
from dallmi_core.modeling.scoring import logits_for
from dallmi_core.modeling.tokens import TokenizedCorpus
from dallmi_core.training.callbacks import Callback, CallbackList, TrainState
from dallmi_core.training.distributed import rank_device

FEATURE_BATCH = 64  # documents per inference batch of the feature pass


@dataclass(frozen=True)
class FirstTokenHead:
    """The trainable part of a sequence classifier that reads only the first token's hidden state."""

    forward: Callable[[torch.Tensor], torch.Tensor]  # [n, H] first-token states -> [n, L] logits
    modules: tuple[nn.Module, ...]

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules for p in m.parameters()]


def first_token_head(model: nn.Module) -> FirstTokenHead | None:
    """BERT-style (pooler -> dropout -> linear) or RoBERTa/ELECTRA-style (a head with `out_proj`
    that takes the sequence and reads its first token); None for any other head."""
    classifier = getattr(model, "classifier", None)
    pooler = getattr(model.base_model, "pooler", None)
    if classifier is None:
        return None
    if pooler is not None:
        dropout = getattr(model, "dropout", nn.Identity())
        return FirstTokenHead(lambda h: classifier(dropout(pooler(h[:, None, :]))), (pooler, classifier))
    if hasattr(classifier, "out_proj"):
        return FirstTokenHead(lambda h: classifier(h[:, None, :]), (classifier,))
    return None


def first_token_states(
    model: nn.Module, tokens: TokenizedCorpus, device: torch.device, on_batch: Callable[[], None] = lambda: None
) -> torch.Tensor:
    """Encoder output at the first token for every document (inference mode, dropout off)."""
    states = logits_for(
        model,
        tokens,
        batch_size=FEATURE_BATCH,
        device=device,
        on_batch=lambda _: on_batch(),
        forward=lambda m, ids, mask: m.base_model(input_ids=ids, attention_mask=mask)[0][:, 0],
    )
    return torch.from_numpy(states).to(device)


def probe_head(
    model: nn.Module,
    tokens: TokenizedCorpus,
    targets: np.ndarray,
    cfg: SourceConfig,
    callbacks: Sequence[Callback] = (),
) -> TrainState | None:
    """Train the head alone for `cfg.probe_epochs` on frozen features; None if the head is not one
    we know how to split off (the caller then fine-tunes as usual)."""
    head = first_token_head(model)
    if head is None or cfg.probe_epochs <= 0:
        return None
    device = rank_device(resolve_device(cfg.device))  # every rank warms up the same head; DDP then syncs
    model.to(device)
    n_batches = -(-len(tokens) // FEATURE_BATCH)
    steps_per_epoch = -(-len(tokens) // cfg.batch_size)
    head_steps = int(np.ceil(cfg.probe_epochs * steps_per_epoch))
    state = TrainState(stage="probe-head", max_steps=n_batches + head_steps)
    hooks = CallbackList(list(callbacks))
    hooks.on_train_begin(state)

    def tick(parts: dict[str, float] | None = None) -> None:
        state.step += 1
        state.parts = parts or {}
        hooks.on_step_end(state)

    features = first_token_states(model, tokens, device, on_batch=tick)
    y = torch.as_tensor(targets, dtype=torch.float32, device=device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.probe_lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.eval()  # no dropout: the head fits fixed features, as a linear probe does
    done = 0
    while done < head_steps and not state.should_stop:
        for batch in torch.randperm(len(features), generator=generator).split(cfg.batch_size):
            batch = batch.to(device)
            loss = nn.functional.binary_cross_entropy_with_logits(head.forward(features[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            state.epoch = done / steps_per_epoch
            tick({"probe_loss": float(loss.detach())})  # not "loss": the fine-tuning logs that per step
            if done >= head_steps or state.should_stop:
                break
    hooks.on_train_end(state)
    return state
