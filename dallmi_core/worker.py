"""The worker process: claims runs from the store's queue, executes them, reports through the store.

Always a fresh interpreter (`python -m dallmi_core.worker`), never a thread or fork of the app
server: Streamlit reruns pages on every click, and CUDA cannot re-initialise in a forked child.
One worker per data directory (an exclusive flock on `worker.lock`). torch is imported only when a
run executes, so the lock check is instant and the services import the lock helpers cheaply.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from dallmi_core.callbacks import Callback, CancelCallback, CheckpointEvery, ProgressCallback
from dallmi_core.config import AdaptConfig, SourceConfig
from dallmi_core.errors import ConfigError, DallmiError, DataError
from dallmi_core.store import Project, Run, Store, data_dir, open_store

LOCK_FILE = "worker.lock"
LOG_FILE = "worker.log"
RUN_KINDS = ("finetune-source", "adapt", "score")
DEFAULT_CHECKPOINT_EVERY = 50
SCORE_PAGE = 512  # documents per scoring page: bounded memory on any corpus size

log = logging.getLogger("dallmi_core.worker")


def heartbeat_timeout() -> float:
    """Seconds without a heartbeat after which a running run counts as orphaned."""
    return float(os.environ.get("DALLMI_HEARTBEAT_TIMEOUT") or 30.0)


def heartbeat_interval() -> float:
    return float(os.environ.get("DALLMI_HEARTBEAT_INTERVAL") or 2.0)


# ---- the single-worker lock -------------------------------------------------------------------

def acquire_lock(root: str | os.PathLike, *, wait_s: float = 1.0) -> IO | None:
    """Take the exclusive lock and write our pid into it; None when another process holds it.

    Retries for `wait_s`: an app probing the lock (`worker_running`) holds it for microseconds, and
    a worker starting at that moment must not give up and leave the queue unserved.
    """
    handle = open(Path(root) / LOCK_FILE, "a+")  # noqa: SIM115 - held for the process lifetime
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                return None
            time.sleep(0.05)
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def worker_running(root: str | os.PathLike) -> bool:
    """True when some process holds the lock of `root` (probed non-blocking, released at once)."""
    path = Path(root) / LOCK_FILE
    if not path.exists():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def worker_pid(root: str | os.PathLike) -> int | None:
    """The pid written by the live worker of `root`, None when there is none."""
    if not worker_running(root):
        return None
    text = (Path(root) / LOCK_FILE).read_text().strip()
    return int(text) if text.isdigit() else None


# ---- one run ------------------------------------------------------------------------------------

class _Stopped(Exception):
    """The run was cancelled, the worker is shutting down, or the run is no longer ours."""


class Heartbeat:
    """Beats from its own thread and its own store connection, so a long tokenisation, model load
    or scoring pass (no progress written) never looks like a dead worker."""

    def __init__(self, db_path: Path, run_id: int, interval: float, lost: threading.Event):
        self.db_path, self.run_id, self.interval, self.lost = db_path, run_id, interval, lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)

    def _beat(self) -> None:
        store = None
        while not self._stop.wait(self.interval):
            try:
                store = store or Store(self.db_path)
                if not store.heartbeat(self.run_id):
                    self.lost.set()  # no longer running: deleted, or declared dead by someone
                    break
            except DallmiError as exc:  # a busy store: try again at the next beat
                log.warning("heartbeat of run %d failed: %s", self.run_id, exc)
        if store is not None:
            store.close()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


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
            raise _Stopped

    def report(self, progress: dict) -> None:
        if not self.store.update_progress(self.run.id, progress):
            self.lost.set()

    def callbacks(self) -> list[Callback]:
        every = int(self.run.config.get("checkpoint_every") or DEFAULT_CHECKPOINT_EVERY)
        return [ProgressCallback(self.report), _EvalToStore(self.store, self.run.id),
                CancelCallback(self.should_stop), CheckpointEvery(every)]


class _EvalToStore(Callback):
    """Validation metrics (PU loss, PU-estimated AP) into the run's time series."""

    def __init__(self, store: Store, run_id: int):
        self.store, self.run_id = store, run_id

    def on_evaluate(self, state, metrics):
        self.store.log_metrics(self.run_id, state.step, {k: v for k, v in metrics.items() if k != "step"})


def _device(name: str = "auto") -> str:
    """auto: cuda > mps > cpu; an unavailable device asked for by name is a ConfigError."""
    import torch

    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name != "auto":
        if not available.get(name):
            raise ConfigError(f"device={name!r} was asked for but is not available here; use auto or cpu.")
        return name
    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


def _label_matrix(rows: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    return np.array([[label in row for label in labels] for row in rows], dtype=np.float32).reshape(-1, len(labels))


def _documents(job: Job, domain: str, *, gold_only: bool = False) -> tuple[list[int], list[str], list]:
    """Training needs every text in memory anyway (tokenised once); scoring streams instead."""
    docs = [d for page in job.store.iter_documents(job.run.project_id, domain=domain) for d in page
            if not gold_only or d.gold_labels is not None]
    return [d.id for d in docs], [d.text for d in docs], [d.gold_labels for d in docs]


@dataclass
class _Scored:
    eval_gold: list = field(default_factory=list)
    eval_scores: list = field(default_factory=list)
    kept: dict[int, np.ndarray] = field(default_factory=dict)  # target position -> scores
    documents: int = 0


def _score_pages(job: Job, clf, max_length: int, *, save: bool, domains=("target", "eval"),
                 keep: frozenset[int] = frozenset()) -> _Scored:
    """Score the project's documents page by page (bounded memory); with `save`, every page's
    predictions are stored as they come. Keeps eval gold/scores and the target positions in `keep`."""
    from dallmi_core.scoring import score_texts

    out, store, run = _Scored(), job.store, job.run
    counts = store.count_documents(run.project_id)
    total = sum(counts[d] for d in domains)
    for domain in domains:
        position = 0
        for page in store.iter_documents(run.project_id, domain=domain, batch_size=SCORE_PAGE):
            job.check()
            scores = score_texts(clf, [doc.text for doc in page], max_length=max_length)
            if save:
                store.save_predictions(run.id, [doc.id for doc in page], scores, labels=clf.label_names,
                                       replace=out.documents == 0)
            for i, doc in enumerate(page):
                if domain == "eval" and doc.gold_labels is not None:
                    out.eval_gold.append(doc.gold_labels)
                    out.eval_scores.append(scores[i])
                elif domain == "target" and position + i in keep:
                    out.kept[position + i] = scores[i]
            position += len(page)
            out.documents += len(page)
            if save:
                job.report({"stage": "score", "scored": out.documents, "total": total})
    return out


def _ap(scored: _Scored, labels: Sequence[str]) -> dict | None:
    from dallmi_core.metrics import ap_report

    if not scored.eval_gold:
        return None
    return ap_report(_label_matrix(scored.eval_gold, labels), np.stack(scored.eval_scores), labels).to_dict()


def _pu_report(split, scores: dict[int, np.ndarray], labels: Sequence[str]) -> dict:
    """PU-estimated AP per label: held-out tagged positives ranked among held-out unlabeled docs."""
    from dallmi_core.metrics import pu_estimated_ap

    per_label = {}
    for j, label in enumerate(labels):
        held = split.val_tags[j]
        per_label[label] = (pu_estimated_ap([scores[p][j] for p in held], [scores[u][j] for u in split.val_unlabeled])
                            if held and split.val_unlabeled else None)
    values = [v for v in per_label.values() if v is not None]
    return {"per_label_ap": per_label, "map_macro": float(np.mean(values)) if values else None, "map_micro": None,
            "estimate": True}


def _fresh_classifier(job: Job, project: Project, seed: int):
    """A new multi-label head (seeded) on the backbone pinned in the run, else the project's."""
    import torch

    from dallmi_core.model import new_classifier

    torch.manual_seed(seed)
    return new_classifier(job.run.config.get("backbone") or project.settings.get("backbone") or "default",
                          project.labels)


def _source_classifier(job: Job, project: Project, seed: int):
    """The source model folder pinned in the run (else the project's), or a fresh head (pure PU)."""
    from dallmi_core.model import load_classifier

    source = job.run.config.get("source_model", project.source_model)
    if not source:
        return _fresh_classifier(job, project, seed)
    clf = load_classifier(source)
    missing = [label for label in project.labels if label not in clf.label_names]
    if missing:
        raise ConfigError(f"the source model {source} has no output for {', '.join(missing)}. Fine-tune a "
                          "new source model for this project's labels.")
    return clf


def _after_training(job: Job, result) -> None:
    if result.state.stop_reason == "cancelled":
        raise _Stopped


def run_finetune_source(job: Job) -> tuple[str, dict]:
    """BCE fine-tuning of the project's backbone on its labelled source documents."""
    from dallmi_core.model import save_classifier
    from dallmi_core.train import finetune_source

    cfg = SourceConfig.from_dict(job.run.config.get("config", {}))
    project = job.project
    _, texts, gold = _documents(job, "source", gold_only=True)
    if not texts:
        raise DataError(f"project {project.name!r} has no labelled source documents. Import a file with a labels "
                        "column as domain 'source', or give the project a source model folder.")
    clf = _fresh_classifier(job, project, cfg.seed)
    result = finetune_source(clf, texts, _label_matrix(gold, project.labels), cfg, callbacks=job.callbacks(),
                             checkpoint_dir=job.checkpoint_dir())
    _after_training(job, result)
    out = save_classifier(result.clf, job.model_dir)
    job.store.update_project(project.id, source_model=str(out))
    return str(out), {"steps": result.state.step, "documents": len(texts)}


def run_adapt(job: Job) -> tuple[str, dict]:
    """Adapt the source model to the target documents from the tagged positives, then score all."""
    from dallmi_core.model import save_classifier
    from dallmi_core.scoring import score_texts
    from dallmi_core.train import adapt, pu_split

    cfg = AdaptConfig.from_dict(job.run.config.get("config", {}))
    project, store = job.project, job.store
    clf = _source_classifier(job, project, cfg.seed)
    labels = clf.label_names
    ids, texts, gold = _documents(job, "target")
    if not ids:
        raise DataError(f"project {project.name!r} has no target documents. Import the target text first.")
    position = {doc: i for i, doc in enumerate(ids)}
    by_label = store.tags_by_label(project.id)
    tags = [[position[d] for d in by_label.get(label, []) if d in position] for label in labels]
    oracle = None
    if cfg.method == "target-oracle":
        if any(g is None for g in gold):
            raise DataError("target-oracle needs gold labels on every target document; this project has none.")
        oracle = _label_matrix(gold, labels)
    elif not any(tags):
        raise DataError(f"no target document of project {project.name!r} is tagged. Tag a few positives per label.")
    clf.model.to(_device(cfg.device))
    before = _ap(_score_pages(job, clf, cfg.max_length, save=False, domains=("eval",)), labels)
    split = pu_split(tags, len(ids), cfg)
    val = sorted({*split.val_unlabeled, *(p for held in split.val_tags for p in held)})
    before_val = dict(zip(val, score_texts(clf, [texts[p] for p in val], max_length=cfg.max_length), strict=True))
    del gold
    result = adapt(clf, texts, tags, cfg, callbacks=job.callbacks(), checkpoint_dir=job.checkpoint_dir(), gold=oracle)
    del texts
    _after_training(job, result)
    out = save_classifier(result.clf, job.model_dir)
    scored = _score_pages(job, result.clf, cfg.max_length, save=True, keep=frozenset(val))
    split = result.split or split
    counts = dict(zip(labels, map(len, tags), strict=True))
    metrics = {"method": cfg.method, "steps": result.state.step, "best_step": result.state.best_step,
               "stop_reason": result.state.stop_reason, "tags": counts,
               "skipped_labels": [label for label, n in counts.items() if not n]}
    after = _ap(scored, labels)
    if after is not None:
        metrics |= {"estimate": False, "before": before, "after": after}
    else:
        metrics |= {"estimate": True, "before": _pu_report(split, before_val, labels),
                    "after": _pu_report(split, scored.kept, labels)}
    return str(out), metrics


def run_score(job: Job) -> tuple[str, dict]:
    """Score target and eval documents with a model folder (e.g. "what to tag next" before adapting)."""
    from dallmi_core.model import load_classifier

    project = job.project
    model = job.run.config.get("model") or project.source_model
    if not model:
        raise ConfigError(f"project {project.name!r} has no source model to score with. Give a model folder, "
                          "or fine-tune a source model first.")
    clf = load_classifier(model)
    clf.model.to(_device(job.run.config.get("device", "auto")))
    scored = _score_pages(job, clf, int(job.run.config.get("max_length", 128)), save=True)
    evaluation = _ap(scored, clf.label_names)
    return str(model), {"documents": scored.documents, **({"evaluation": evaluation} if evaluation else {})}


EXECUTORS: dict[str, Callable[[Job], tuple[str, dict]]] = {
    "finetune-source": run_finetune_source, "adapt": run_adapt, "score": run_score}


# ---- the loop -----------------------------------------------------------------------------------

class Worker:
    """Claim, execute, repeat; a run's outcome is always written, and the worker survives it."""

    def __init__(self, store: Store, *, poll: float = 1.0, idle_exit: float | None = None, once: bool = False):
        self.store, self.poll, self.idle_exit, self.once = store, poll, idle_exit, once
        self.stopping = threading.Event()

    def serve(self) -> int:
        """Returns the number of runs executed."""
        # We hold the lock, so no other worker is alive: every 'running' run is an orphan to resume now.
        self.store.mark_stale_runs_interrupted(0)
        executed, idle_since = 0, time.monotonic()
        while not self.stopping.is_set():
            try:
                self.store.mark_stale_runs_interrupted(heartbeat_timeout())
                run = self.store.claim_next_run(os.getpid())
            except DallmiError as exc:  # e.g. the store stayed locked: keep serving
                log.warning("cannot read the queue: %s", exc)
                run = None
            if run is None:
                if self.idle_exit is not None and time.monotonic() - idle_since >= self.idle_exit:
                    log.info("no work for %.0f s: exiting", self.idle_exit)
                    break
                self.stopping.wait(self.poll)
                continue
            self.execute(run)
            executed += 1
            if self.once:
                break
            idle_since = time.monotonic()
        return executed

    def execute(self, run: Run) -> str | None:
        """Run one claimed run to its final status (None when the run was taken from us)."""
        log.info("run %d (%s) started, attempt %d", run.id, run.kind, run.attempts)
        job = Job(self.store, run, self.stopping)
        outcome: dict = {}
        with Heartbeat(self.store.path, run.id, heartbeat_interval(), job.lost):
            try:
                executor = EXECUTORS.get(run.kind)
                if executor is None:
                    raise ConfigError(f"unknown run kind {run.kind!r}; this worker runs {', '.join(RUN_KINDS)}.")
                model_path, metrics = executor(job)
                status, outcome = "done", {"model_path": model_path, "metrics": metrics}
            except _Stopped:  # a user's cancel wins over a worker shutdown, which leaves it resumable
                status = "cancelled" if self.store.is_cancel_requested(run.id) else "interrupted"
            except DallmiError as exc:
                status, outcome = "failed", {"error": str(exc)}
            except Exception as exc:  # a bug or a crash in a library: record it and serve the next run
                log.exception("run %d crashed", run.id)
                status, outcome = "failed", {"error": f"{type(exc).__name__}: {exc}"}
        if job.lost.is_set():
            log.warning("run %d is no longer ours (deleted or declared dead); its result is dropped", run.id)
            return None
        try:
            self.store.finish_run(run.id, status, **outcome)
        except DallmiError as exc:
            log.warning("run %d: cannot record %s: %s", run.id, status, exc)
            return None
        log.info("run %d %s%s", run.id, status, f": {outcome['error']}" if "error" in outcome else "")
        return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dallmi worker", description="Serve the run queue of a data directory.")
    parser.add_argument("--data-dir", help="data directory (default: $DALLMI_DATA_DIR or ./dallmi_data)")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between queue polls (default 1)")
    parser.add_argument("--idle-exit", type=float, default=None, help="exit after this many idle seconds")
    parser.add_argument("--once", action="store_true", help="exit after one run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s worker[%(process)d] %(levelname)s %(message)s")
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars of model loading in worker.log
    root = Path(args.data_dir) if args.data_dir else data_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = acquire_lock(root)
    except OSError as exc:
        print(f"dallmi worker: cannot use the data folder {root} ({exc}).", file=sys.stderr)
        return 2
    if lock is None:
        print(f"dallmi worker: another worker already serves {root}; exiting.", file=sys.stderr)
        return 0
    try:
        store = open_store(root)
    except DallmiError as exc:
        print(f"dallmi worker: {exc}", file=sys.stderr)
        lock.close()
        return 2
    worker = Worker(store, poll=args.poll, idle_exit=args.idle_exit, once=args.once)
    for sig in (signal.SIGTERM, signal.SIGINT):  # finish the step, checkpoint, leave the run resumable
        signal.signal(sig, lambda *_: worker.stopping.set())
    log.info("serving %s", root.resolve())
    try:
        worker.serve()
    finally:
        store.close()
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
