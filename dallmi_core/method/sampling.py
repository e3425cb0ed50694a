"""Label-balanced sampling for DALLMi: every step an unlabeled batch plus positives of every label.

The unlabeled batch is drawn from all target documents, epoch by epoch, so real untagged text
is always in the batch (the official cycle sampler draws only tagged rows; we do not copy that).
Each label's positives are cycled endlessly with reshuffling, so rare labels appear in every
step. All state is plain data (`state_dict`) so a checkpointed run resumes the same stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class UnlabeledStream:
    """Batches of `batch_size` indices drawn without replacement from `pool`, epoch after epoch."""

    def __init__(self, pool: Sequence[int], batch_size: int, rng: np.random.Generator):
        if len(pool) == 0:
            raise ValueError("The unlabeled pool is empty.")
        self.pool = np.asarray(pool, dtype=np.int64)
        self.batch_size = min(batch_size, len(self.pool))
        self.rng = rng
        self.epoch = 0
        self._order = rng.permutation(self.pool)
        self._pos = 0

    def next(self) -> np.ndarray:
        if self._pos + self.batch_size > len(self._order):
            self.epoch += 1
            self._order = self.rng.permutation(self.pool)
            self._pos = 0
        batch = self._order[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return batch

    @property
    def progress(self) -> float:
        """Epochs done, fractional."""
        return self.epoch + self._pos / len(self._order)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "order": self._order.tolist(), "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._pos = int(state["epoch"]), int(state["pos"])
        self._order = np.asarray(state["order"], dtype=np.int64)


class PositiveCycler:
    """Cycle through one label's positives, reshuffling at each pass; `take(k)` may wrap a pass."""

    def __init__(self, positives: Sequence[int], rng: np.random.Generator):
        self.positives = np.asarray(positives, dtype=np.int64)
        self.rng = rng
        self.passes = 0
        self._order = rng.permutation(self.positives)
        self._pos = 0

    def take(self, k: int) -> np.ndarray:
        out = np.empty(k, dtype=np.int64)
        for i in range(k):
            if self._pos == len(self._order):
                self._order, self._pos = self.rng.permutation(self.positives), 0
                self.passes += 1
            out[i] = self._order[self._pos]
            self._pos += 1
        return out

    def state_dict(self) -> dict:
        return {"passes": self.passes, "order": self._order.tolist(), "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        self.passes, self._pos = int(state["passes"]), int(state["pos"])
        self._order = np.asarray(state["order"], dtype=np.int64)


@dataclass(frozen=True)
class BalancedBatch:
    """One step's documents: `unlabeled` [B]; `positives` [L, k] (-1 rows for labels with no tag)."""

    unlabeled: np.ndarray
    positives: np.ndarray
    active: np.ndarray  # [L] bool: labels that have at least one tagged positive


class LabelBalancedSampler:
    """Unlabeled stream + one positive cycler per label; labels with no tagged positive are skipped."""

    def __init__(
        self,
        unlabeled_pool: Sequence[int],
        positives_by_label: Sequence[Sequence[int]],
        *,
        batch_size: int,
        positives_per_label: int,
        seed: int,
    ):
        self.rng = np.random.default_rng(seed)
        self.unlabeled = UnlabeledStream(unlabeled_pool, batch_size, self.rng)
        self.k = positives_per_label
        self.cyclers = [PositiveCycler(p, self.rng) if len(p) else None for p in positives_by_label]
        self.active = np.array([c is not None for c in self.cyclers], dtype=bool)
        if not self.active.any():
            raise ValueError("No label has a tagged positive: tag at least one document first.")

    @property
    def skipped_labels(self) -> list[int]:
        return [i for i, c in enumerate(self.cyclers) if c is None]

    def next(self) -> BalancedBatch:
        positives = np.full((len(self.cyclers), self.k), -1, dtype=np.int64)
        for label, cycler in enumerate(self.cyclers):
            if cycler is not None:
                positives[label] = cycler.take(self.k)
        return BalancedBatch(self.unlabeled.next(), positives, self.active.copy())

    def state_dict(self) -> dict:
        return {
            "rng": self.rng.bit_generator.state,
            "unlabeled": self.unlabeled.state_dict(),
            "cyclers": [c.state_dict() if c is not None else None for c in self.cyclers],
        }

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.unlabeled.load_state_dict(state["unlabeled"])
        for cycler, s in zip(self.cyclers, state["cyclers"], strict=True):
            if cycler is not None:
                cycler.load_state_dict(s)
