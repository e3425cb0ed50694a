"""Runs: the worker's queue (claim, heartbeat, cancel, finish, stale detection) and its reports
(progress, the metric series, predictions, MixUp samples). Configs are stored as JSON on the run row,
so any run can be reproduced from the store alone."""

from __future__ import annotations

import json
import math
import numbers
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dallmi_core.errors import DataError, RunStateError, StoreError
from dallmi_core.store.db import StoreBase, _chunks, _dumps, _marks

FINISH_STATUSES = ("done", "failed", "cancelled", "interrupted")  # what a worker may end a run with
PENDING = ("queued", "running", "interrupted")  # a run that will still run (an interrupted one resumes)
SINGLE_KINDS = ("finetune-source",)  # one at a time per project: each replaces the project's source model
QUICK_KINDS = ("shift",)  # bounded analyses someone waits for on a page: claimed before queued training runs


@dataclass(frozen=True)
class Run:
    id: int
    project_id: int
    kind: str
    config: dict
    status: str
    progress: dict
    heartbeat_at: float | None
    worker_pid: int | None
    cancel_requested: bool
    error: str | None
    traceback: str | None  # the full Python traceback of a crashed run; `error` keeps its one-line message
    model_path: str | None
    checkpoint_dir: str | None
    metrics: dict
    prediction_labels: tuple[str, ...] | None
    attempts: int
    created_at: float
    started_at: float | None  # when its first attempt began
    finished_at: float | None
    active_s: float | None  # seconds its finished attempts ran (None: unknown, a run resumed before migration 8)
    attempt_started_at: float | None  # when the current attempt began, while it runs

    def active_seconds(self, now: float | None = None) -> float | None:
        """How long the run has worked: its attempts' time, the running one's up to `now`, without the
        time it sat paused, interrupted or queued between them. None before it first started, or unknown."""
        if self.attempts == 0 or self.active_s is None:
            return None
        if self.status == "running" and self.attempt_started_at is not None:
            return self.active_s + max((time.time() if now is None else now) - self.attempt_started_at, 0.0)
        return self.active_s


def _run(row) -> Run:
    values = dict(row)
    for key in ("config", "progress", "metrics"):
        values[key] = json.loads(values[key] or "{}")
    labels = values.pop("labels")
    values["prediction_labels"] = None if labels is None else tuple(json.loads(labels))
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Run(**values)


class RunsMixin(StoreBase):
    """The run rows and everything a run writes; composed into Store (uses its get_project)."""

    def enqueue_run(self, project_id: int, kind: str, config: Mapping) -> int:
        """Queue a run; `config` is stored as JSON so the run can be reproduced from the store alone.
        A second source fine-tuning of a project while one is pending is refused (checked in the same
        write transaction, so two sessions clicking at once cannot both queue one)."""
        with self.transaction():
            self.get_project(project_id)
            self._refuse_a_second(project_id, kind)
            return self.conn.execute(
                "INSERT INTO runs (project_id, kind, config, created_at) VALUES (?, ?, ?, ?)",
                (project_id, kind, _dumps(dict(config)), time.time()),
            ).lastrowid

    def _refuse_a_second(self, project_id: int, kind: str, *, but: int | None = None) -> None:
        """Inside the write that would add one: a RunStateError when another `kind` run (not `but`) is pending."""
        if kind not in SINGLE_KINDS:
            return
        pending = self._one(
            "SELECT id, status FROM runs WHERE project_id = ? AND kind = ? AND id != ? "
            f"AND status IN ({_marks(PENDING)}) ORDER BY id LIMIT 1",
            [project_id, kind, -1 if but is None else but, *PENDING],
        )
        if pending is not None:
            raise RunStateError(
                f"run {pending[0]} ({kind}) is already {pending[1]} for this project: wait for it to "
                "finish, or cancel it on the Adapt page, before starting another."
            )

    def get_run(self, run_id: int) -> Run:
        row = self._one("SELECT * FROM runs WHERE id = ?", (run_id,))
        if row is None:
            raise StoreError(f"run {run_id} does not exist (it may have been deleted).")
        return _run(row)

    def list_runs(self, project_id: int | None = None, *, status: str | Sequence[str] | None = None) -> list[Run]:
        """Newest first, optionally of one project and/or with one of the given statuses."""
        where, params = ["1"], []
        if project_id is not None:
            where, params = [*where, "project_id = ?"], [*params, project_id]
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where, params = [*where, f"status IN ({_marks(statuses)})"], [*params, *statuses]
        return [
            _run(row) for row in self._rows(f"SELECT * FROM runs WHERE {' AND '.join(where)} ORDER BY id DESC", params)
        ]

    def has_queued_runs(self) -> bool:
        """True when a run waits for a worker (queued, or interrupted and to be resumed)."""
        return self._one("SELECT 1 FROM runs WHERE status IN ('queued', 'interrupted') LIMIT 1") is not None

    def claim_next_run(self, worker_pid: int, *, kinds: Sequence[str] | None = None) -> Run | None:
        """Atomically take the oldest interrupted run (to resume from its checkpoint), else the oldest
        queued one (QUICK_KINDS first), and mark it running for `worker_pid`; None when there is nothing
        to do. The previous attempt's progress is replaced by {"stage": "resuming"} ({"stage": "starting"}
        for a queued run)."""
        kind_sql, params = (f"AND kind IN ({_marks(kinds)})", list(kinds)) if kinds else ("", [])
        with self.transaction():
            row = self._one(
                f"SELECT id, status FROM runs WHERE status IN ('interrupted', 'queued') {kind_sql} "
                f"ORDER BY status = 'queued', kind NOT IN ({_marks(QUICK_KINDS)}), id LIMIT 1",
                [*params, *QUICK_KINDS],
            )
            if row is None:
                return None
            now = time.time()
            progress = {"stage": "resuming" if row["status"] == "interrupted" else "starting"}
            self.conn.execute(
                "UPDATE runs SET status = 'running', worker_pid = ?, heartbeat_at = ?, "
                "started_at = coalesce(started_at, ?), attempt_started_at = ?, attempts = attempts + 1, "
                "error = NULL, traceback = NULL, progress = ? WHERE id = ?",
                (worker_pid, now, now, now, _dumps(progress), row[0]),
            )
            return self.get_run(row[0])

    def _update_running(self, run_id: int, sql: str, params: Sequence) -> bool:
        with self.transaction():
            return (
                self.conn.execute(
                    f"UPDATE runs SET {sql} WHERE id = ? AND status = 'running'", [*params, run_id]
                ).rowcount
                == 1
            )

    def heartbeat(self, run_id: int) -> bool:
        """False when the run is no longer running (cancelled, marked interrupted): the worker should stop."""
        return self._update_running(run_id, "heartbeat_at = ?", [time.time()])

    def update_progress(self, run_id: int, progress: Mapping, *, metrics: Mapping[str, Any] | None = None) -> bool:
        """Store the latest progress dict, for display only (also a heartbeat), and append `metrics`
        (e.g. the step's loss parts: nothing else is logged) to run_metrics at progress['step'].
        False when the run is no longer running."""
        if metrics and progress.get("step") is None:
            raise ValueError("update_progress: metrics need progress['step'] to be logged at.")
        with self.transaction():
            values = [_dumps(dict(progress)), time.time()]
            if not self._update_running(run_id, "progress = ?, heartbeat_at = ?", values):
                return False
            if metrics:
                self.log_metrics(run_id, int(progress["step"]), metrics, stage=progress.get("stage"))
        return True

    def log_metrics(self, run_id: int, step: int, values: Mapping[str, Any], *, stage: str | None = None) -> None:
        """Append the finite real values (others are skipped) to the run's time series, in `stage`
        (the training stage that counts these steps; default: the run's kind, its one stage)."""
        rows = [
            (run_id, step, name, float(v), stage)
            for name, v in values.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
        ]
        with self.transaction():
            self.conn.executemany(
                "INSERT INTO run_metrics (run_id, step, name, value, stage) "
                "VALUES (?, ?, ?, ?, coalesce(?, (SELECT kind FROM runs WHERE id = ?)))",
                [(*row, run_id) for row in rows],
            )

    def drop_metrics_after(self, run_id: int, step: int, *, stage: str | None = None) -> int:
        """Delete the run's series rows past `step` (of `stage` only, when given), for a run resumed from
        its checkpoint at `step`: it logs those steps again, so the killed attempt's rows would be
        duplicates; an earlier stage, which counted its own steps, keeps its rows. Returns the count."""
        where, params = ("AND stage = ?", [stage]) if stage is not None else ("", [])
        with self.transaction():
            sql = f"DELETE FROM run_metrics WHERE run_id = ? AND step > ? {where}"
            return self.conn.execute(sql, [run_id, int(step), *params]).rowcount

    def run_metrics(self, run_id: int, name: str | None = None) -> list[tuple[int, str, float]]:
        where, params = ("AND name = ?", [name]) if name else ("", [])
        return [
            tuple(r)
            for r in self._rows(
                f"SELECT step, name, value FROM run_metrics WHERE run_id = ? {where} ORDER BY step, rowid",
                [run_id, *params],
            )
        ]

    def staged_metrics(self, run_id: int) -> list[tuple[str, int, str, float]]:
        """The run's series as (stage, step, name, value) rows, in the order they were logged."""
        return [
            tuple(r)
            for r in self._rows(
                "SELECT stage, step, name, value FROM run_metrics WHERE run_id = ? ORDER BY rowid", (run_id,)
            )
        ]

    def set_checkpoint(self, run_id: int, checkpoint_dir: str) -> bool:
        return self._update_running(run_id, "checkpoint_dir = ?", [str(checkpoint_dir)])

    def request_cancel(self, run_id: int) -> str:
        """Queued or interrupted runs are cancelled at once; a running one gets the flag its worker
        polls. Returns the run's status afterwards (a finished run is left as it is)."""
        with self.transaction():
            run = self.get_run(run_id)
            if run.status in ("queued", "interrupted"):
                self.conn.execute(
                    "UPDATE runs SET status = 'cancelled', cancel_requested = 1, finished_at = ? WHERE id = ?",
                    (time.time(), run_id),
                )
                return "cancelled"
            if run.status == "running":
                self.conn.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?", (run_id,))
            return run.status

    def requeue_run(self, run_id: int) -> Run:
        """Put a cancelled or interrupted run back in the queue as interrupted (its cancel flag
        cleared), so the next claim resumes it from its checkpoint. A fine-tuning is refused while
        another of its project is pending (one started after this one was cancelled)."""
        with self.transaction():
            run = self.get_run(run_id)
            if run.status not in ("cancelled", "interrupted"):
                raise RunStateError(
                    f"run {run_id} is {run.status}; only a cancelled or interrupted run can be resumed."
                )
            self._refuse_a_second(run.project_id, run.kind, but=run.id)  # a fine-tuning started since
            self.conn.execute(
                "UPDATE runs SET status = 'interrupted', cancel_requested = 0, finished_at = NULL, "
                "error = NULL, traceback = NULL WHERE id = ?",
                (run_id,),
            )
            return self.get_run(run_id)

    def is_cancel_requested(self, run_id: int) -> bool:
        """Also True when the run was deleted (its project removed): the worker should stop."""
        row = self._one("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,))
        return row is None or bool(row[0])

    def finish_run(
        self,
        run_id: int,
        status: str,
        *,
        error: str | None = None,
        traceback: str | None = None,
        model_path: str | None = None,
        metrics: Mapping | None = None,
    ) -> Run:
        """The worker's last word on a running run: done, failed, cancelled, or interrupted (to be
        resumed by the next claim). Anything but a running run is a RunStateError."""
        if status not in FINISH_STATUSES:
            raise RunStateError(f"cannot finish a run as {status!r}; use one of {', '.join(FINISH_STATUSES)}.")
        with self.transaction():
            run = self.get_run(run_id)
            if run.status != "running":
                raise RunStateError(f"run {run_id} is {run.status}, not running, so it cannot become {status}.")
            now = time.time()
            self.conn.execute(
                "UPDATE runs SET status = ?, error = ?, traceback = ?, model_path = coalesce(?, model_path), "
                "metrics = coalesce(?, metrics), heartbeat_at = ?, finished_at = ?, "
                "active_s = active_s + coalesce(max(? - attempt_started_at, 0), 0), attempt_started_at = NULL "
                "WHERE id = ?",
                (
                    status,
                    error,
                    traceback,
                    None if model_path is None else str(model_path),
                    _dumps(None if metrics is None else dict(metrics)),
                    now,
                    None if status == "interrupted" else now,
                    now,
                    run_id,
                ),
            )
            return self.get_run(run_id)

    def mark_stale_runs_interrupted(self, timeout_s: float, *, now: float | None = None) -> list[int]:
        """Runs 'running' without a heartbeat for `timeout_s` (their worker died) become interrupted,
        so the next claim resumes them; those whose cancel was requested become cancelled. Returns ids."""
        cutoff = (time.time() if now is None else now) - timeout_s
        with self.transaction():
            ids = [
                r[0]
                for r in self._rows(
                    "SELECT id FROM runs WHERE status = 'running' AND coalesce(heartbeat_at, started_at, 0) < ?",
                    (cutoff,),
                )
            ]
            for part in _chunks(ids):
                self.conn.execute(
                    "UPDATE runs SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'interrupted' END, "
                    "finished_at = CASE WHEN cancel_requested THEN ? END, worker_pid = NULL, "
                    "active_s = active_s + coalesce(max(heartbeat_at - attempt_started_at, 0), 0), "
                    "attempt_started_at = NULL, "  # it worked until its last heartbeat
                    f"error = 'its worker stopped sending heartbeats' WHERE id IN ({_marks(part)})",
                    [time.time(), *part],
                )
        return ids

    # ---- predictions and MixUp samples ---------------------------------------------------------

    def save_predictions(
        self,
        run_id: int,
        document_ids: Sequence[int],
        scores,
        *,
        labels: Sequence[str] | None = None,
        replace: bool = True,
    ) -> int:
        """Scores [n, L] (probabilities) as one float32 blob per document; `replace=False` appends a
        chunk (streamed scoring). The label order (default: the project's) is kept on the run."""
        scores = np.asarray(scores, dtype="<f4")
        if scores.ndim != 2 or scores.shape[0] != len(document_ids):
            raise DataError(f"scores have shape {scores.shape}; expected ({len(document_ids)}, number of labels).")
        with self.transaction():
            run = self.get_run(run_id)
            labels = tuple(labels or self.get_project(run.project_id).labels)
            if len(labels) != scores.shape[1]:
                raise DataError(f"scores have {scores.shape[1]} columns but there are {len(labels)} labels.")
            if replace:
                self.conn.execute("DELETE FROM predictions WHERE run_id = ?", (run_id,))
            self.conn.execute("UPDATE runs SET labels = ? WHERE id = ?", (_dumps(list(labels)), run_id))
            self.conn.executemany(
                "INSERT OR REPLACE INTO predictions VALUES (?, ?, ?)",
                ((run_id, int(doc), row.tobytes()) for doc, row in zip(document_ids, scores, strict=True)),
            )
        return len(document_ids)

    def count_unscored(self, project_id: int, run_id: int) -> int:
        """Target and eval documents of the project that run `run_id` has no predictions for."""
        return self._rows(
            "SELECT count(*) FROM documents d WHERE d.project_id = ? AND d.domain IN ('target', 'eval') AND NOT "
            "EXISTS (SELECT 1 FROM predictions p WHERE p.run_id = ? AND p.document_id = d.id)",
            (project_id, run_id),
        )[0][0]

    def load_predictions(self, run_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(document ids int64 [n], scores float32 [n, L]) in document id order."""
        width = len(self.get_run(run_id).prediction_labels or ())
        rows = self._rows(
            "SELECT document_id, scores FROM predictions WHERE run_id = ? ORDER BY document_id", (run_id,)
        )
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        scores = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), width)
        return ids, scores.astype(np.float32)

    def log_mixup_samples(self, run_id: int, step: int, samples: Iterable[Mapping]) -> int:
        """Rows with label, positive_doc, unlabeled_doc, mu, prediction, target (for the MixUp view)."""
        rows = [
            (
                run_id,
                step,
                s["label"],
                s.get("positive_doc"),
                s.get("unlabeled_doc"),
                s.get("mu"),
                s.get("prediction"),
                s.get("target"),
            )
            for s in samples
        ]
        with self.transaction():
            self.conn.executemany(
                "INSERT INTO mixup_samples (run_id, step, label, positive_doc, unlabeled_doc, "
                "mu, prediction, target) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    def drop_mixup_samples_after(self, run_id: int, step: int) -> int:
        """Delete the MixUp rows past `step` (a run resumed from its checkpoint there logs them again)."""
        with self.transaction():
            return self.conn.execute(
                "DELETE FROM mixup_samples WHERE run_id = ? AND step > ?", (run_id, int(step))
            ).rowcount

    def mixup_samples(self, run_id: int, *, label: str | None = None, limit: int = 1000) -> list[dict]:
        where, params = ("AND label = ?", [label]) if label else ("", [])
        return [
            dict(r)
            for r in self._rows(
                "SELECT step, label, positive_doc, unlabeled_doc, mu, prediction, target FROM mixup_samples "
                f"WHERE run_id = ? {where} ORDER BY step DESC, id LIMIT ?",
                [run_id, *params, limit],
            )
        ]
