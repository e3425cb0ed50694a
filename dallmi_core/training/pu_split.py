"""The PU split: held-out validation tags and unlabeled documents for model selection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dallmi_core.config import AdaptConfig


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
