"""MixUp samples for the MixUp page: fresh pairs to show, and a mixed input "decoded" into tokens.

Decoding maps every mixed word embedding to its nearest vocabulary token by cosine similarity, so a
person sees what the model was trained on; the mixing itself is method/mixup.py's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dallmi_core.errors import DataError
from dallmi_core.modeling.model import word_embedding_matrix
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
