"""One DALLMi training step: the vectorised fast path and the per-label reference loop.

Fast path: the unlabeled batch, every label's positives (deduplicated) and all L x m mixed
sequences go through the model in ONE forward of word embeddings; every label term is a
masked tensor op. Reference: the official code's structure, 1 + 3L forwards (for each label its
positives, its mixed pair(s), and the chosen unlabeled document again). Both compute the same
loss on the same draws (tests/unit/test_step.py), so speed is not bought with another method.
Both take a StepContext (what the run's steps share) and the step's draws.

On a CPU the cost of a forward is its padded tokens, and one batch of every document is padded to
its longest member: there the sequences are cut into a few length groups (`length_groups`), each
padded only to its own longest; a GPU, or a model wrapped for data parallelism (whose every forward
is a collective that all ranks must call alike), keeps the single forward.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from dallmi_core.config import AdaptConfig
from dallmi_core.method.losses import anchor_term, bce_loss, dallmi_objective, mixup_term, variational_term
from dallmi_core.method.mixup import MixupDraws, mix_sequences
from dallmi_core.method.sampling import BalancedBatch
from dallmi_core.modeling.model import base_embeddings, forward_logits, logits_from_base
from dallmi_core.modeling.tokens import TokenizedCorpus

# A CPU forward's fixed cost, in padded tokens: MiniLM's forward + backward measured 0 to 50 on
# the loaded reference machine (docs/BENCHMARKS.md); set higher so that only cuts that save many
# tokens are made (4 groups instead of 8 on short texts, 9% more padded tokens).
CPU_FORWARD_COST_TOKENS = 256


def length_groups(lengths: np.ndarray, forward_cost: float) -> list[np.ndarray]:
    """Indices cut into groups of similar length minimising padded tokens + `forward_cost` per group.

    Exact for contiguous groups of the length-sorted order (dynamic programming over cut points,
    vectorised over the previous cut); `forward_cost=inf` gives one group.
    """
    order = np.argsort(lengths, kind="stable")
    n = len(order)
    if n == 0 or not np.isfinite(forward_cost):
        return [order]
    sorted_len = lengths[order].astype(np.float64)
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    starts = np.arange(n + 1, dtype=np.float64)
    for j in range(1, n + 1):  # group (i, j] padded to sorted_len[j - 1]
        costs = best[:j] + (j - starts[:j]) * sorted_len[j - 1]
        cut[j] = int(np.argmin(costs))
        best[j] = costs[cut[j]] + forward_cost
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def _forward_cost(model, device: torch.device) -> float:
    wrapped = hasattr(model, "module")  # DDP: every forward syncs buffers, ranks must agree
    return CPU_FORWARD_COST_TOKENS if device.type == "cpu" and not wrapped else float("inf")


def _grouped_logits(model, base: torch.Tensor, mask: torch.Tensor, mixup_at: str | None, device) -> torch.Tensor:
    """Logits of every row of (ids or embeddings) `base`, forwarded in length groups, in row order."""
    lengths = mask.sum(dim=1).cpu().numpy()
    groups = length_groups(lengths, _forward_cost(model, device))
    if len(groups) == 1:
        return _logits_of(model, base, mask, mixup_at)
    parts = []
    for rows in groups:
        width = int(lengths[rows].max())
        index = torch.as_tensor(rows, device=base.device)
        parts.append(_logits_of(model, base[index, :width], mask[index, :width], mixup_at))
    order = torch.as_tensor(np.concatenate(groups), device=base.device)
    logits = torch.cat(parts)
    return torch.empty_like(logits).index_copy(0, order, logits)


def _logits_of(model, base: torch.Tensor, mask: torch.Tensor, mixup_at: str | None) -> torch.Tensor:
    if mixup_at is None:  # token ids
        return forward_logits(model, input_ids=base, attention_mask=mask)
    return logits_from_base(model, base, mask, mixup_at)


class StepContext(NamedTuple):
    """What every step of a run shares, whichever function computes the step (the vectorised one,
    the per-label reference, the benchmark's official shapes): the model (possibly wrapped for data
    parallelism), the tokenised corpus (or anything with its `collate`, such as the benchmark's
    PaddedCorpus), the run's config and the device. A step takes it with the step's own draws:
    `step(context, batch, mix)`."""

    model: torch.nn.Module
    tokens: TokenizedCorpus
    cfg: AdaptConfig
    device: torch.device


def vectorised_dallmi_step(
    context: StepContext, batch: BalancedBatch, mix: MixupDraws | None, anchor: np.ndarray | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one step with a single forward over documents and mixed sequences together.

    `anchor` [n_docs, L] (dallmi-anchored): per corpus document the source model's probabilities
    (tags set to 1); every document of the step is held to them by `cfg.anchor_weight` x the summed
    per-label KL term. It reuses the step's forward: no extra pass."""
    model, tokens, cfg, device = context
    act = np.flatnonzero(batch.active)
    n_u = len(batch.unlabeled)
    positives = batch.positives[act]  # [La, k]
    docs, inverse = np.unique(np.concatenate([batch.unlabeled, positives.ravel()]), return_inverse=True)
    rows_u = torch.as_tensor(inverse[:n_u], device=device)
    rows_p = torch.as_tensor(inverse[n_u:].reshape(positives.shape), device=device)
    act_t = torch.as_tensor(act, device=device)
    ids, mask = (t.to(device) for t in tokens.collate(docs))

    if mix is None:
        z_docs = _grouped_logits(model, ids, mask, None, device)
    else:
        pair_u = torch.as_tensor(mix.pair_u[act], device=device)  # [La, m]
        pair_p = torch.as_tensor(mix.pair_p[act], device=device)
        mix_u_rows = rows_u[pair_u].reshape(-1)
        mix_p_rows = torch.gather(rows_p, 1, pair_p).reshape(-1)
        base = base_embeddings(model, ids, cfg.mixup_at)
        mixed, mixed_mask = mix_sequences(
            base[mix_u_rows],
            base[mix_p_rows],
            mask[mix_u_rows],
            mask[mix_p_rows],
            torch.as_tensor(mix.mu[act], device=device).reshape(-1),
        )
        logits = _grouped_logits(model, torch.cat([base, mixed]), torch.cat([mask, mixed_mask]), cfg.mixup_at, device)
        z_docs, z_mixed_all = logits[: len(docs)], logits[len(docs) :]
        pairs = pair_u.shape[1]
        z_mixed_all = z_mixed_all.view(len(act), pairs, -1)
        z_mixed = torch.gather(z_mixed_all, 2, act_t.view(-1, 1, 1).expand(-1, pairs, 1)).squeeze(2)

    z_u = z_docs[rows_u][:, act_t]  # [B, La]
    z_p = z_docs[rows_p, act_t[:, None]]  # [La, k]
    variational = variational_term(z_u, z_p, cfg.variational)
    mixup = None
    if mix is not None:
        z_u_pair = z_u[pair_u, torch.arange(len(act), device=device)[:, None]]  # [La, m]
        mu = torch.as_tensor(mix.mu[act], device=device)
        mixup = mixup_term(z_u_pair, z_mixed, mu, cfg.variational, cfg.detach_target)
    loss, parts = dallmi_objective(variational, mixup, cfg.lambda_mix)
    if anchor is not None and cfg.anchor_weight > 0:
        held = anchor_term(z_docs, torch.as_tensor(anchor[docs], device=device)).sum()
        loss = loss + cfg.anchor_weight * held
        parts = {**parts, "loss": float(loss.detach()), "anchor": float(held.detach())}
    return loss, parts


def reference_dallmi_step(
    context: StepContext, batch: BalancedBatch, mix: MixupDraws | None, pad_to: int | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """The official per-label loop (1 + 3L forwards); `pad_to=128` reproduces its padding too."""
    model, tokens, cfg, device = context

    def logits_of(indices) -> torch.Tensor:
        ids, mask = (t.to(device) for t in tokens.collate(indices, pad_to))
        return forward_logits(model, input_ids=ids, attention_mask=mask)

    z_u_all = logits_of(batch.unlabeled)
    v_terms, r_terms = [], []
    for label in np.flatnonzero(batch.active):
        z_p = logits_of(batch.positives[label])[:, label]
        v_terms.append(variational_term(z_u_all[:, label : label + 1], z_p[None, :], cfg.variational))
        if mix is None:
            continue
        u_docs = batch.unlabeled[mix.pair_u[label]]
        p_docs = batch.positives[label][mix.pair_p[label]]
        ids, mask = (t.to(device) for t in tokens.collate(np.concatenate([u_docs, p_docs]), pad_to))
        base = base_embeddings(model, ids, cfg.mixup_at)
        m = len(u_docs)
        mu = torch.as_tensor(mix.mu[label], device=device)
        mixed, mixed_mask = mix_sequences(base[:m], base[m:], mask[:m], mask[m:], mu)
        z_mixed = logits_from_base(model, mixed, mixed_mask, cfg.mixup_at)[:, label]
        z_u_pair = logits_of(u_docs)[:, label]  # the official code forwards the chosen doc again
        r_terms.append(mixup_term(z_u_pair[None, :], z_mixed[None, :], mu[None, :], cfg.variational, cfg.detach_target))
    variational = torch.cat(v_terms)
    mixup = torch.cat(r_terms) if r_terms else None
    return dallmi_objective(variational, mixup, cfg.lambda_mix)


def bce_step(
    model, tokens: TokenizedCorpus, indices: np.ndarray, targets: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, dict[str, float]]:
    """Supervised multi-label BCE on a batch (source fine-tuning and the BCE baselines).

    The batch stays uniformly drawn (length-bucketed batches would correlate with the labels: on
    multi-label text, longer documents carry more labels); on a CPU it is forwarded in length groups."""
    ids, mask = (t.to(device) for t in tokens.collate(indices))
    logits = _grouped_logits(model, ids, mask, None, device)
    loss = bce_loss(logits, torch.as_tensor(targets, device=device))
    return loss, {"loss": float(loss.detach())}
