"""The use-cases the pages and the CLI call, so pages stay thin: no SQL, no torch, no file layout.

Every user error is a DallmiError subclass whose message says how to fix it. Runs are only queued
here; the worker process (started on demand by `ensure_worker`, in presence.py) executes them, and
the store is the only channel between the two.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dallmi_core.app.jobs import RUN_KINDS
from dallmi_core.app.presence import AppHeartbeat, ensure_worker
from dallmi_core.app.process import worker_running
from dallmi_core.config import AdaptConfig, SourceConfig, precision_words
from dallmi_core.errors import ConfigError, DataError, RunStateError, StoreError
from dallmi_core.store import Project, Run, Store, open_store
from dallmi_core.store.runs import PENDING  # a run that will still run: re-exported for the pages

RECOMMENDED_TAGS = 8  # positives per label below which the coverage meter warns
PRECISION_WORDS = precision_words  # "no" -> "float32", "bf16" -> "bf16 autocast" (run outcomes)
SOURCE_EPOCHS = SourceConfig.default_epochs  # fine-tuning epochs after the head's warm-up (Data page default)


@dataclass(frozen=True)
class LabelCoverage:
    label: str
    positives: int
    minimum: int
    reviewed_not: int = 0  # target documents marked "reviewed: not <label>" (never training negatives)
    unreviewed: int = 0  # target documents neither tagged nor reviewed-not for the label

    @property
    def enough(self) -> bool:
        return self.positives >= self.minimum


@dataclass(frozen=True)
class RunStatus:
    run_id: int
    kind: str
    status: str
    progress: dict
    metrics: dict
    error: str | None
    traceback: str | None  # the full traceback of a failed run (the error is its last line)
    attempts: int
    heartbeat_age_s: float | None  # seconds since the worker last reported (running runs only)
    worker_alive: bool
    can_cancel: bool
    can_resume: bool


@dataclass(frozen=True)
class RunResults:
    run: Run
    labels: tuple[str, ...]
    document_ids: np.ndarray  # int64 [n]
    scores: np.ndarray  # float32 [n, L]
    series: dict[str, list[tuple[int, float]]]  # metric name -> (step, value), one value per step


@dataclass(frozen=True)
class Refresh:
    """The score run that refreshes the predictions the candidates are ranked by, and why it runs."""

    run_id: int
    reason: str
    queued_now: bool  # False: it was already queued or running


def _has_checkpoint(run: Run) -> bool:
    folder = Path(run.checkpoint_dir) if run.checkpoint_dir else None
    return folder is not None and folder.is_dir() and any(p.suffix == ".pt" for p in folder.iterdir())


def _model_labels(folder: str) -> list[str]:
    """Check a model folder without loading it (no torch in the app process) and read its label
    names; the worker's full check (model.check_model_dir) runs again when it loads the folder."""
    if "\x00" in str(folder):  # the OS would refuse it with a ValueError, not an OSError
        raise ConfigError(f"{folder!r} cannot be a model folder: its path contains a NUL character.")
    path = Path(folder)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"{path} is not a model folder: {path / 'config.json'} cannot be read ({exc.strerror or exc})."
        ) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path / 'config.json'} is not valid JSON ({exc}).") from exc
    if not any(path.glob("*.safetensors")):
        raise ConfigError(f"{path} has no *.safetensors weights: not a usable model folder.")
    id2label = (config.get("id2label") if isinstance(config, dict) else None) or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def open_services(
    data_dir: str | os.PathLike | None = None, *, autostart_worker: bool = True, app_heartbeat: bool = False
) -> Services:
    """Open the store of `data_dir` (default $DALLMI_DATA_DIR or ./dallmi_data); with
    `autostart_worker`, a worker is started when runs are pending (e.g. after an app restart). With
    `app_heartbeat` (the app's one handle per process), this process beats into the store until closed,
    so the worker it starts knows when the app is gone."""
    services = Services(open_store(data_dir), autostart_worker=autostart_worker)
    if app_heartbeat:
        services.start_app_heartbeat()
    if autostart_worker and services.store.list_runs(status=PENDING):
        ensure_worker(services.data_dir)
    return services


class Services:
    """One handle per app/CLI process; its Store is safe to share between Streamlit's threads."""

    def __init__(self, store: Store, *, autostart_worker: bool = True):
        self.store, self.autostart_worker = store, autostart_worker
        self.app_heartbeat: AppHeartbeat | None = None

    @property
    def data_dir(self) -> Path:
        return self.store.data_dir

    def close(self) -> None:
        if self.app_heartbeat is not None:
            self.app_heartbeat.stop()
        self.store.close()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start_app_heartbeat(self) -> AppHeartbeat:
        """Beat into the store as a live app process (once per handle; stopped by close)."""
        if self.app_heartbeat is None:
            self.app_heartbeat = AppHeartbeat(self.store.path).start()
        return self.app_heartbeat

    # ---- projects -------------------------------------------------------------------------------

    def create_project(
        self, name: str, labels: Sequence[str] = (), *, source_model: str | None = None, backbone: str | None = None
    ) -> Project:
        """A source model folder (its labels are the default label set) or a backbone (default:
        the offline MiniLM) that a finetune-source run or pure PU adaptation starts from."""
        if source_model and backbone:
            raise ConfigError("give a source model folder or a backbone, not both.")
        if source_model:
            model_labels = _model_labels(str(Path(source_model).expanduser()))
            source_model = str(Path(source_model).expanduser().resolve())
            labels = list(labels) or model_labels
            missing = [label for label in labels if label not in model_labels]
            if missing:
                raise ConfigError(
                    f"the source model has no output for {', '.join(missing)}; its labels are "
                    f"{', '.join(model_labels)}."
                )
        return self.store.create_project(
            name, labels, source_model=source_model, settings={"backbone": backbone or "default"}
        )

    def delete_project(self, project_id: int) -> None:
        """Rows go by cascade (a running run sees that and stops); finished runs' folders go too. A
        folder that cannot be removed is named in a StoreError (the rows are gone either way)."""
        runs = self.store.list_runs(project_id)
        self.store.delete_project(project_id)
        stuck = []
        for run in runs:
            if run.status != "running":
                for folder in (self.store.models_dir / f"run-{run.id}", self.data_dir / "runs" / str(run.id)):
                    try:
                        shutil.rmtree(folder)
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        stuck.append(f"{folder} ({exc.strerror or exc})")
        if stuck:
            raise StoreError(
                f"project {project_id} is deleted, but these folders could not be removed: {'; '.join(stuck)}. "
                "Remove them by hand to free the disk space."
            )

    # ---- data -------------------------------------------------------------------------------------

    # ---- annotation -------------------------------------------------------------------------------

    def coverage(self, project_id: int, minimum: int = RECOMMENDED_TAGS) -> list[LabelCoverage]:
        """Per label, in the project's label order: tagged positives against a recommended minimum,
        documents reviewed as not carrying it, and those not reviewed at all.

        Only target documents count: adaptation trains on their tags alone, so a tag on a source
        or eval document would make the meter say "enough" for a label that has no training positive."""
        tags = self.store.tags_by_label(project_id, domain="target")
        marks = self.store.reviews_by_label(project_id, domain="target")
        total = self.store.count_documents(project_id)["target"]
        return [
            LabelCoverage(label, len(docs), minimum, len(marks[label]), total - len(docs) - len(marks[label]))
            for label, docs in tags.items()
        ]

    # ---- runs -------------------------------------------------------------------------------------

    def refresh_predictions(self, project_id: int) -> Refresh | None:
        """Queue a score run with the newest model when the latest predictions are stale (the ranked
        candidates then refresh without a manual run); a score run already queued or running is the
        refresh. None when the predictions are current, there is no model to score with, or the last
        score run failed or was cancelled since the latest predictions (no retry loop: the Adapt page
        shows why, and the next adaptation or a manual run starts afresh)."""
        from dallmi_core.app.candidates import latest_predictions_run, stale_predictions

        last = next((r for r in self.store.list_runs(project_id) if r.kind == "score"), None)
        if last is not None and last.status in PENDING:
            return Refresh(last.id, "a score run is already under way", queued_now=False)
        latest = latest_predictions_run(self.store, project_id)
        if last is not None and last.status in ("failed", "cancelled") and (latest is None or last.id > latest.id):
            return None
        stale = stale_predictions(self.store, project_id)
        if stale is None:
            return None
        return Refresh(self.start_run(project_id, "score", model=stale.model), stale.reason, queued_now=True)

    def start_run(
        self,
        project_id: int,
        kind: str,
        config: Mapping | SourceConfig | AdaptConfig | None = None,
        *,
        model: str | None = None,
        checkpoint_every: int | None = None,
    ) -> int:
        """Validate, queue, and make sure a worker serves the queue; returns the run id.

        `config`: AdaptConfig/SourceConfig settings (finetune-source, adapt), or for a shift analysis
        {"run": a finished adaptation run, "projection": "pca" or "tsne"} (the same analysis already
        queued or running is not queued twice: its id is returned); `model`: the folder a score run
        uses (default: the project's source model). The source model and backbone are pinned in the
        stored config, so a resumed run starts from the same weights."""
        project = self.store.get_project(project_id)
        counts = self.store.count_documents(project_id)
        stored: dict = {"backbone": project.settings.get("backbone", "default")}
        if checkpoint_every is not None:
            if int(checkpoint_every) < 1:
                raise ConfigError(f"checkpoint_every must be >= 1, got {checkpoint_every!r}.")
            stored["checkpoint_every"] = int(checkpoint_every)
        if kind in ("adapt", "finetune-source"):
            cls = AdaptConfig if kind == "adapt" else SourceConfig
            cfg = config if isinstance(config, cls) else cls.from_dict(dict(config or {}))
            stored["config"] = cfg.to_dict()
        elif kind == "score":
            stored["model"] = model or project.source_model
            if not stored["model"]:
                raise ConfigError("there is no model to score with: give a model folder, or fine-tune a source model.")
            _model_labels(stored["model"])
            if not counts["target"] + counts["eval"]:
                raise DataError("there are no target or eval documents to score. Import the target text first.")
        elif kind == "shift":
            from dallmi_core.app import shift_view

            stored["analysis"] = settings = shift_view.job_settings(self.store, project_id, dict(config or {}))
            queued = shift_view.shift_job(
                self.store, settings["run"], projection=settings["projection"], limit=settings["limit"]
            )
            if queued is not None and queued.status in PENDING:
                if self.autostart_worker:
                    ensure_worker(self.data_dir)
                return queued.id
        else:
            raise ConfigError(f"unknown run kind {kind!r}; use one of {', '.join(RUN_KINDS)}.")
        if kind == "finetune-source" and not any(
            doc.gold_labels is not None
            for page in self.store.iter_documents(project_id, domain="source")
            for doc in page
        ):
            raise DataError(
                "there are no labelled source documents to fine-tune on. Import a file with a labels "
                "column as domain 'source'."
            )
        if kind == "adapt":
            self._check_adaptable(project, cfg, counts)
            stored["source_model"] = project.source_model
        run_id = self.store.enqueue_run(project_id, kind, stored)
        if self.autostart_worker:
            ensure_worker(self.data_dir)
        return run_id

    def _check_adaptable(self, project: Project, cfg: AdaptConfig, counts: Mapping[str, int]) -> None:
        if not counts["target"]:
            raise DataError("there are no target documents to adapt to. Import the target text first.")
        if project.source_model:
            _model_labels(project.source_model)
        if cfg.method == "target-oracle":
            return
        target = set(self.store.document_ids(project.id, "target"))
        if not any(doc in target for docs in self.store.tags_by_label(project.id).values() for doc in docs):
            raise DataError("no target document is tagged yet. Tag a few positives per label, then adapt.")

    def adapt_settings(self) -> tuple[dict, dict[str, tuple[str, ...]]]:
        """AdaptConfig's defaults (as stored with a run) and the allowed values of its choice settings,
        for a form that must not import the config module."""
        from dallmi_core import config

        choices = {
            "method": config.METHODS,
            "variational": config.VARIATIONAL,
            "mixup_at": config.MIXUP_AT,
            "selection": config.SELECTIONS,
            "device": config.DEVICES,
            "precision": config.PRECISIONS,
        }
        return AdaptConfig().to_dict(), choices

    def resume_run(self, run_id: int) -> None:
        """Re-queue a cancelled or interrupted run that has a checkpoint; it continues from there."""
        run = self.store.get_run(run_id)
        if run.status not in ("cancelled", "interrupted"):
            raise RunStateError(f"run {run_id} is {run.status}; only a cancelled or interrupted run can be resumed.")
        if not _has_checkpoint(run):
            raise RunStateError(f"run {run_id} has no checkpoint to resume from; start a new run instead.")
        self.store.requeue_run(run_id)
        if self.autostart_worker:
            ensure_worker(self.data_dir)

    def run_status(self, run_id: int) -> RunStatus:
        """What a page polls. A pending run with no live worker (e.g. the machine restarted) starts one."""
        run = self.store.get_run(run_id)
        alive = worker_running(self.data_dir)
        if run.status in PENDING and not alive and self.autostart_worker:
            alive = ensure_worker(self.data_dir) is not None or worker_running(self.data_dir)
        age = time.time() - run.heartbeat_at if run.status == "running" and run.heartbeat_at else None
        newer = self.pending_finetune(run.project_id) if run.kind == "finetune-source" else None
        blocked = newer is not None and newer.id != run.id  # one fine-tuning at a time: not resumable now
        return RunStatus(
            run.id,
            run.kind,
            run.status,
            run.progress,
            run.metrics,
            run.error,
            run.traceback,
            run.attempts,
            age,
            alive,
            can_cancel=run.status in PENDING,
            can_resume=run.status in ("cancelled", "interrupted") and _has_checkpoint(run) and not blocked,
        )

    def pending_finetune(self, project_id: int) -> Run | None:
        """The project's source fine-tuning that is queued, running or interrupted (only one at a time)."""
        return next((r for r in self.store.list_runs(project_id, status=PENDING) if r.kind == "finetune-source"), None)

    def results(self, run_id: int) -> RunResults:
        """Predictions and the step series of a run (after a resume, the latest value per step)."""
        run = self.store.get_run(run_id)
        ids, scores = self.store.load_predictions(run_id)
        return RunResults(run, run.prediction_labels or (), ids, scores, self.run_series(run_id))

    def run_series(self, run_id: int) -> dict[str, list[tuple[int, float]]]:
        """The step series of a run (loss parts, validation metrics) without its predictions: what a
        progress display polls. After a resume, the latest value per step."""
        return _latest_per_step(self.store.run_metrics(run_id))

    def run_stages(self, run_id: int) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """The step series per training stage, stages in the order they ran (a fine-tuning's head
        warm-up, then the fine-tuning, each counting its own steps): what the loss chart draws."""
        rows: dict[str, list[tuple[int, str, float]]] = {}
        for stage, step, name, value in self.store.staged_metrics(run_id):
            rows.setdefault(stage or "training", []).append((step, name, value))
        return {stage: _latest_per_step(stage_rows) for stage, stage_rows in rows.items()}

    # ---- exports ----------------------------------------------------------------------------------


def _latest_per_step(rows) -> dict[str, list[tuple[int, float]]]:
    """(step, name, value) rows -> per name its (step, value) series in step order, the latest value
    of a step kept (a resumed run logs its steps after the checkpoint again)."""
    latest: dict[str, dict[int, float]] = {}
    for step, name, value in rows:
        latest.setdefault(name, {})[step] = value
    return {name: sorted(values.items()) for name, values in latest.items()}
