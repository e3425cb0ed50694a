"""The claimed run an executor works on (store, folders, stop checks, reporting) and the callbacks
that carry its training progress, evaluations and MixUp samples into the store."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dallmi_core.store import Project, Run, Store
from dallmi_core.training.callbacks import Callback, CancelCallback, CheckpointEvery

DEFAULT_CHECKPOINT_EVERY = 50


class Stopped(Exception):
    """The run was cancelled, the worker is shutting down, or the run is no longer ours."""


@dataclass
class Job:
    """A claimed run with what its executor needs: the store, its folders, stop checks, reporting."""

    store: Store
    run: Run
    stopping: threading.Event
    lost: threading.Event = field(default_factory=threading.Event)

    @property
    def project(self) -> Project:
        return self.store.get_project(self.run.project_id)

    @property
    def model_dir(self) -> Path:
        return self.store.models_dir / f"run-{self.run.id}"

    def checkpoint_dir(self) -> Path:
        path = self.store.data_dir / "runs" / str(self.run.id) / "checkpoint"
        self.store.set_checkpoint(self.run.id, str(path))
        return path

    def should_stop(self) -> bool:
        return self.stopping.is_set() or self.lost.is_set() or self.store.is_cancel_requested(self.run.id)

    def check(self) -> None:
        if self.should_stop():
            raise Stopped

    def report(self, progress: dict, metrics: Mapping | None = None) -> None:
        """The progress to show (and `metrics` to append to the run's series at progress['step'])."""
        if not self.store.update_progress(self.run.id, progress, metrics=metrics):
            self.lost.set()

    def callbacks(self) -> list[Callback]:
        every = int(self.run.config.get("checkpoint_every") or DEFAULT_CHECKPOINT_EVERY)
        return [
            _ProgressToStore(self),
            _EvalToStore(self.store, self.run.id),
            CancelCallback(self.should_stop),
            CheckpointEvery(every),
        ]


class _ProgressToStore(Callback):
    """Every step's progress into the run row, its loss parts (only those) into the run's series.

    A run resumed from its checkpoint at step s first drops its stage's series rows past s: the attempt
    that was killed logged steps it had not checkpointed, and this attempt logs them again (an earlier
    stage, the head warm-up that a resumed fine-tuning skips, counted its own steps and keeps them)."""

    def __init__(self, job: Job):
        self.job = job

    def on_train_begin(self, state):
        if state.resumed_from:
            self.job.store.drop_metrics_after(self.job.run.id, state.resumed_from, stage=state.stage)

    def on_step_end(self, state):
        self.job.report(state.progress(), metrics=state.parts)


class _EvalToStore(Callback):
    """Validation metrics (PU loss, PU-estimated AP) into the run's time series."""

    def __init__(self, store: Store, run_id: int):
        self.store, self.run_id = store, run_id

    def on_evaluate(self, state, metrics):
        values = {k: v for k, v in metrics.items() if k != "step"}
        self.store.log_metrics(self.run_id, state.step, values, stage=state.stage)


class MixupToStore(Callback):
    """A bounded sample of the MixUp pairs trained on (about `per_label` per label, spread over the
    run) into mixup_samples, scored by the model right after their step; a resumed run first drops
    the rows of the steps it trains again."""

    def __init__(self, store: Store, run_id: int, doc_ids: Sequence[int], labels: Sequence[str], per_label: int = 32):
        self.store, self.run_id, self.doc_ids, self.labels = store, run_id, np.asarray(doc_ids), list(labels)
        self.per_label, self.every = per_label, 1

    def on_train_begin(self, state):
        self.every = max(1, state.max_steps // self.per_label)
        if state.resumed_from:
            self.store.drop_mixup_samples_after(self.run_id, state.resumed_from)

    def on_step_end(self, state):
        record = state.mixup
        if record is None or (record.step % self.every and record.step != state.max_steps):
            return
        phi_u, prediction, target = record.scored()
        self.store.log_mixup_samples(
            self.run_id,
            record.step,
            (
                {
                    "label": self.labels[int(label)],
                    "positive_doc": int(self.doc_ids[p]),
                    "unlabeled_doc": int(self.doc_ids[u]),
                    "mu": float(mu),
                    "prediction": float(pred),
                    "target": float(t),
                }
                for label, p, u, mu, pred, t in zip(
                    record.labels, record.positive, record.unlabeled, record.mu, prediction, target, strict=True
                )
            ),
        )
