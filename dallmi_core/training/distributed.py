"""Data parallelism for commands run under `torchrun` or `accelerate launch` (one process per device).

Both launchers describe the job in environment variables (RANK, WORLD_SIZE, LOCAL_RANK); a plain
`dallmi` process is rank 0 of a world of 1, and then nothing here communicates. Training is
sharded by the trainers (source.py, target.py: each rank draws its own slice of the unlabeled
stream, gradients are averaged by accelerate); scoring shards the documents here; only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Rank 0 alone writes models, predictions and the store."""
    return rank() == 0


def _process_state():
    """accelerate's process-wide state: joins the process group (gloo on CPU, nccl on GPUs)."""
    from accelerate import PartialState

    return PartialState()


def gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (a list of one without a launcher)."""
    if world_size() == 1:
        return [obj]
    _process_state()
    out: list = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def rank_device(device: str) -> torch.device:
    """This rank's device: under a launcher every rank takes its own GPU (cuda:LOCAL_RANK)."""
    if world_size() > 1 and device == "cuda":
        return _process_state().device
    return torch.device(device)


def sharded(n: int) -> np.ndarray:
    """This rank's positions among n items (rank, rank + world, ...): disjoint, together all."""
    return np.arange(n)[rank() :: world_size()]


def score_sharded(score: Callable[[Sequence[int]], np.ndarray], n: int) -> np.ndarray:
    """Scores [n, L] of n documents, each rank scoring its shard with `score(positions)`."""
    mine = sharded(n)
    parts = gather((mine, score(mine)))
    out = np.empty((n, parts[0][1].shape[1]), dtype=np.float32)
    for positions, scores in parts:
        out[positions] = scores
    return out
