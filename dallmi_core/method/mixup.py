"""MixUp on word embeddings, as training does it: the draws, the mix, its target, scoring pairs.

x~ = mu * W[u] + (1 - mu) * W[p] over word embeddings (or the embeddings module's output, `mixup_at`),
mu weighting the UNLABELED document u, the attention mask the elementwise max of both; the target is
t = mu * phi(u) + (1 - mu) (DESIGN.md section 4). The display of a mix (decoding it into tokens)
is app/mixup_view.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dallmi_core.method.sampling import BalancedBatch
from dallmi_core.modeling.model import base_embeddings, logits_from_base
from dallmi_core.modeling.scoring import sigmoid
from dallmi_core.modeling.tokens import TokenizedCorpus


@dataclass(frozen=True)
class MixupDraws:
    """For each label and pair: a position in the unlabeled batch, one in the label's positives, mu."""

    pair_u: np.ndarray  # [L, m]
    pair_p: np.ndarray  # [L, m]
    mu: np.ndarray  # [L, m] float32, mu ~ Beta(alpha, alpha), weights the unlabeled document


def draw_mixup(rng: np.random.Generator, batch: BalancedBatch, pairs: int, alpha: float) -> MixupDraws:
    labels, k = batch.positives.shape
    return MixupDraws(
        pair_u=rng.integers(0, len(batch.unlabeled), size=(labels, pairs)),
        pair_p=rng.integers(0, k, size=(labels, pairs)),
        mu=rng.beta(alpha, alpha, size=(labels, pairs)).astype(np.float32),
    )


def mix_sequences(base_u: torch.Tensor, base_p: torch.Tensor, mask_u, mask_p, mu: torch.Tensor):
    """x~ = mu * E(u) + (1 - mu) * E(p); attention mask = elementwise max of both."""
    mu = mu.to(base_u.dtype).view(-1, 1, 1)
    return mu * base_u + (1 - mu) * base_p, torch.maximum(mask_u, mask_p)


def mixup_target(phi_u, mu) -> np.ndarray:
    """t = mu * phi(u) + (1 - mu): the pairing VPU uses, mu on the unlabeled side."""
    mu = np.asarray(mu, dtype=np.float64)
    return mu * np.asarray(phi_u, dtype=np.float64) + (1.0 - mu)


def score_pairs(
    model,
    tokens: TokenizedCorpus,
    rows_u: Sequence[int],
    rows_p: Sequence[int],
    mu: Sequence[float],
    labels: int | Sequence[int],
    *,
    mixup_at: str = "word_embeddings",
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """(phi_l(u), phi_l(x~)) for pairs of rows of `tokens` and each pair's label l (one label for all, or
    one per pair), in inference mode (train mode restored)."""
    rows_u, rows_p = np.asarray(rows_u, dtype=np.int64), np.asarray(rows_p, dtype=np.int64)
    labels = np.broadcast_to(np.asarray(labels, dtype=np.int64), rows_u.shape)
    mu = np.asarray(mu, dtype=np.float32)
    device = next(model.parameters()).device
    phi_u, phi_mixed = np.empty(len(rows_u)), np.empty(len(rows_u))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(rows_u), batch_size):
                part = slice(start, start + batch_size)
                m = len(rows_u[part])
                ids, mask = (t.to(device) for t in tokens.collate(np.r_[rows_u[part], rows_p[part]]))
                base = base_embeddings(model, ids, mixup_at)
                mixed, mixed_mask = mix_sequences(
                    base[:m], base[m:], mask[:m], mask[m:], torch.as_tensor(mu[part], device=device)
                )
                logits = logits_from_base(
                    model, torch.cat([base[:m], mixed]), torch.cat([mask[:m], mixed_mask]), mixup_at
                )
                label = torch.as_tensor(np.r_[labels[part], labels[part]], device=device)
                picked = logits.gather(1, label.view(-1, 1)).squeeze(1)
                probs = sigmoid(picked.float().cpu().numpy())
                phi_u[part], phi_mixed[part] = probs[:m], probs[m:]
    finally:
        model.train(was_training)
    return phi_u, phi_mixed


@dataclass(frozen=True)
class MixupRecord:
    """One training step's MixUp draws in corpus positions, one row per (label, pair); `score` gives the
    model's (phi(u), phi(x~)) for them on demand, so steps that nobody logs cost nothing."""

    step: int
    labels: np.ndarray
    unlabeled: np.ndarray
    positive: np.ndarray
    mu: np.ndarray
    score: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

    def scored(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(phi(u), prediction phi(x~), target t) per row."""
        phi_u, prediction = self.score(self.unlabeled, self.positive, self.mu, self.labels)
        return phi_u, prediction, mixup_target(phi_u, self.mu)
