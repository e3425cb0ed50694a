"""What a run does: the executors of the worker's run kinds (finetune-source, adapt, score, shift).

Each executor gets a `Job` (the claimed run, the store, stop checks, reporting) and returns the
model folder (None for an analysis: shift) and the metrics to record; the worker (`worker.py`) owns
the process, the queue loop, the lock and the heartbeat. torch and the training libraries are
imported inside the executors, so importing this package (the worker and the services do) stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable

from dallmi_core.app.jobs.adapt import run_adapt
from dallmi_core.app.jobs.finetune_source import run_finetune_source
from dallmi_core.app.jobs.job import Job
from dallmi_core.app.jobs.score import run_score
from dallmi_core.app.jobs.shift import run_shift

RUN_KINDS = ("finetune-source", "adapt", "score", "shift")

EXECUTORS: dict[str, Callable[[Job], tuple[str | None, dict]]] = {
    "finetune-source": run_finetune_source,
    "adapt": run_adapt,
    "score": run_score,
    "shift": run_shift,
}
