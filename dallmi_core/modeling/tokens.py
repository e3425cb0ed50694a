"""Tokenise a corpus once, then build dynamically padded batches from cached token ids.

Padding each batch only to its longest member (instead of every text to max_length) is most of
the CPU speed-up on short texts; sorting by length before batching (scoring) removes the rest.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class TokenizedCorpus:
    """Token ids per document (truncated, special tokens included), and the pad id."""

    ids: tuple[np.ndarray, ...]
    pad_id: int
    max_length: int

    @classmethod
    def build(cls, tokenizer, texts: Sequence[str], max_length: int, chunk: int = 2048) -> TokenizedCorpus:
        ids: list[np.ndarray] = []
        for start in range(0, len(texts), chunk):
            enc = tokenizer(
                list(texts[start : start + chunk]),
                truncation=True,
                max_length=max_length,
                padding=False,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
            ids.extend(np.asarray(row, dtype=np.int64) for row in enc["input_ids"])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return cls(tuple(ids), int(pad), max_length)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(row) for row in self.ids), dtype=np.int64, count=len(self.ids))

    def collate(self, indices: Sequence[int], pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) [n, T], T = longest row (or `pad_to`, the official shape)."""
        rows = [self.ids[int(i)] for i in indices]
        width = pad_to if pad_to is not None else max(len(r) for r in rows)
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for r, row in enumerate(rows):
            input_ids[r, : len(row)] = row
            mask[r, : len(row)] = 1
        return torch.from_numpy(input_ids), torch.from_numpy(mask)


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Index batches in order of length, so each padded batch wastes almost nothing (scoring)."""
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
