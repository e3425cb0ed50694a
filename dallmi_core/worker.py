"""The worker process: claims runs from the store's queue, executes them, reports through the store.

Always a fresh interpreter (`python -m dallmi_core.worker`), never a thread or fork of the app
server: Streamlit reruns pages on every click, and CUDA cannot re-initialise in a forked child.
One worker per data directory (an exclusive flock on `worker.lock`). This module is the process:
the lock, the queue loop, the heartbeat, signals; what each run kind does is in `jobs.py`. torch is
imported only when a run executes, so the lock check is instant and the services import the lock
helpers cheaply.
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
from pathlib import Path
from typing import IO

from dallmi_core.errors import ConfigError, DallmiError
from dallmi_core.jobs import EXECUTORS, RUN_KINDS, Job, Stopped
from dallmi_core.store import Run, Store, data_dir, open_store

LOCK_FILE = "worker.lock"
LOG_FILE = "worker.log"

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


# ---- one run's heartbeat (what a run does is in jobs.py) -----------------------------------------


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
            except Stopped:  # a user's cancel wins over a worker shutdown, which leaves it resumable
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
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s worker[%(process)d] %(levelname)s %(message)s"
    )
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
