"""MixUp samples for display: fresh pairs, their scores under a model, and the mixed input "decoded".

The same mixing as training (step.py): x~ = mu * W[u] + (1 - mu) * W[p] over word embeddings, mu
weighting the UNLABELED document u, the attention mask the elementwise max of both; the target is
t = mu * phi(u) + (1 - mu) (DESIGN.md section 4). Decoding maps every mixed word embedding to its
nearest vocabulary token by cosine similarity, so a person sees what the model was trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dallmi_core.errors import DataError
from dallmi_core.method.step import _base_embeddings, _logits_from_base, _mix
from dallmi_core.modeling.model import word_embedding_matrix
from dallmi_core.modeling.scoring import sigmoid
from dallmi_core.modeling.tokens import TokenizedCorpus


@dataclass(frozen=True)
class Pairs:
    """Document ids of (tagged positive, unlabeled) pairs and their mu ~ Beta(alpha, alpha)."""

    positive: np.ndarray  # int64 [n]
    unlabeled: np.ndarray  # int64 [n]
    mu: np.ndarray  # float32 [n], weights the unlabeled document


def draw_pairs(
    positives: Sequence[int], unlabeled: Sequence[int], n: int, *, alpha: float = 0.3, seed: int = 0
) -> Pairs:
    """n fresh pairs as training draws them: a tagged positive, an unlabeled document, mu ~ Beta(alpha, alpha)."""
    if not len(positives):
        raise DataError("no document is tagged with this label, so there is nothing to mix: tag a few positives.")
    if not len(unlabeled):
        raise DataError("there are no target documents to mix with: import the target text first.")
    rng = np.random.default_rng(seed)
    return Pairs(
        positive=rng.choice(np.asarray(positives, dtype=np.int64), size=n),
        unlabeled=rng.choice(np.asarray(unlabeled, dtype=np.int64), size=n),
        mu=rng.beta(alpha, alpha, size=n).astype(np.float32),
    )


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
                base = _base_embeddings(model, ids, mixup_at)
                mixed, mixed_mask = _mix(
                    base[:m], base[m:], mask[:m], mask[m:], torch.as_tensor(mu[part], device=device)
                )
                logits = _logits_from_base(
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


def decode_mixed(
    embeddings, ids_u: Sequence[int], ids_p: Sequence[int], mu: float, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest vocabulary token (cosine) to each mixed word embedding, and that cosine similarity.

    `embeddings` is the word-embedding matrix [V, H]; the shorter document is padded with `pad_id`
    (as a batch pads it), so there is one position per token of the longer one. mu = 0 gives the
    positive document's tokens, mu = 1 the unlabeled one's."""
    w = torch.as_tensor(embeddings).detach().float()
    width = max(len(ids_u), len(ids_p))
    if not width:
        raise DataError("both documents are empty: nothing to decode.")

    def padded(ids: Sequence[int]) -> torch.Tensor:
        return torch.as_tensor(list(ids) + [pad_id] * (width - len(ids)), dtype=torch.long)

    mixed = mu * w[padded(ids_u)] + (1.0 - mu) * w[padded(ids_p)]
    unit = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    similarity = (mixed / mixed.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ unit.T
    best = similarity.max(dim=1)
    return best.indices.numpy().astype(np.int64), best.values.numpy().astype(np.float32)


def decode_pair(model, tokenizer, text_u: str, text_p: str, mu: float, *, max_length: int = 128) -> list[dict]:
    """Per position: the unlabeled and positive tokens, the decoded nearest token and its similarity."""
    tokens = TokenizedCorpus.build(tokenizer, [text_u, text_p], max_length)
    ids_u, ids_p = tokens.ids[0].tolist(), tokens.ids[1].tolist()
    nearest, similarity = decode_mixed(word_embedding_matrix(model), ids_u, ids_p, float(mu), tokens.pad_id)
    width = len(nearest)
    names = tokenizer.convert_ids_to_tokens
    pad = names([tokens.pad_id])[0]
    return [
        {
            "unlabeled": names([ids_u[i]])[0] if i < len(ids_u) else pad,
            "positive": names([ids_p[i]])[0] if i < len(ids_p) else pad,
            "mixed": name,
            "similarity": float(similarity[i]),
        }
        for i, name in zip(range(width), names(nearest.tolist()), strict=True)
    ]
