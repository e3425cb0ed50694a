"""The worker process: claims runs from the store's queue, executes them, reports through the store.

Always a fresh interpreter (`python -m dallmi_core.app.worker`), never a thread or fork of the app
server: Streamlit reruns pages on every click, and CUDA cannot re-initialise in a forked child.
One worker per data directory (an exclusive flock on `worker.lock`). This module is the process:
the queue loop, the heartbeats, signals, its life; what each run kind does is in `jobs/`, the lock,
memory and exec mechanics in `process.py`. torch is imported only when a run executes, so the lock
check is instant and the services import the lock helpers cheaply.

Its life. A worker the app starts is given `--exit-when-app-idle S`: between runs, with nothing
queued and no app heartbeat (presence.py) for S seconds, it releases the lock, looks at the queue
once more (a run queued meanwhile found the lock held and started no worker) and exits. Its memory:
after every run it drops what the run loaded (gc, CUDA cache, malloc_trim); once the queue is empty
it replaces itself with a fresh interpreter (execve, same pid, the lock handed over as an inherited
fd), since torch and transformers, once imported, keep ~350 MB resident that no collection returns.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO

from dallmi_core.app.jobs import EXECUTORS, RUN_KINDS
from dallmi_core.app.jobs.job import Job, Stopped
from dallmi_core.app.process import acquire_lock, exec_fresh, inherited_lock, release_memory, rss_bytes
from dallmi_core.errors import ConfigError, DallmiError
from dallmi_core.store import Run, Store, data_dir, open_store

log = logging.getLogger("dallmi_core.app.worker")


def heartbeat_timeout() -> float:
    """Seconds without a heartbeat after which a running run counts as orphaned."""
    return float(os.environ.get("DALLMI_HEARTBEAT_TIMEOUT") or 30.0)


def heartbeat_interval() -> float:
    return float(os.environ.get("DALLMI_HEARTBEAT_INTERVAL") or 2.0)


def report_interval() -> float:
    """Seconds between the worker's own reports (state, memory) that the Adapt page shows."""
    return float(os.environ.get("DALLMI_WORKER_REPORT_INTERVAL") or 5.0)


# ---- one run's heartbeat (what a run does is in jobs/) -------------------------------------------


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


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Worker:
    """Claim, execute, repeat; a run's outcome is always written, and the worker survives it.

    `app_idle_exit`: between runs, with nothing queued, stop once no app process has beat for that many
    seconds (counted from this worker's start at the earliest). `recycle`: stop once the queue is empty
    after a run, so `main` can start a fresh interpreter. `exit_reason` says why `serve` returned."""

    def __init__(
        self,
        store: Store,
        *,
        poll: float = 1.0,
        idle_exit: float | None = None,
        once: bool = False,
        app_idle_exit: float | None = None,
        recycle: bool = False,
        started_at: float | None = None,
        runs_done: int = 0,
    ):
        self.store, self.poll, self.idle_exit, self.once = store, poll, idle_exit, once
        self.app_idle_exit, self.recycle = app_idle_exit, recycle
        self.started_at = time.time() if started_at is None else started_at
        self.runs_done = runs_done
        self.run_id: int | None = None  # the run in hand
        self.exit_reason: str | None = None  # stopped | once | idle | app-idle | recycle
        self.stopping = threading.Event()

    def report(self, store: Store | None = None, state: str | None = None) -> None:
        """Write this worker's report (state, run in hand, resident memory) for the Adapt page."""
        try:
            (store or self.store).report_worker(
                os.getpid(),
                socket.gethostname(),
                started_at=self.started_at,
                state=state or ("running" if self.run_id is not None else "idle"),
                run_id=self.run_id,
                rss_bytes=rss_bytes(),
                app_idle_exit=self.app_idle_exit,
                runs_done=self.runs_done,
            )
        except DallmiError as exc:  # a busy store: the next report tries again
            log.warning("cannot write the worker report: %s", exc)

    def app_gone(self) -> bool:
        """True when no app process has beat for `app_idle_exit` seconds (and this worker is that old)."""
        if self.app_idle_exit is None:
            return False
        last = self.store.last_app_heartbeat()
        return time.time() - max(last or 0.0, self.started_at) >= self.app_idle_exit

    def serve(self) -> int:
        """Returns the number of runs executed."""
        # We hold the lock, so no other worker is alive: every 'running' run is an orphan to resume now.
        self.store.mark_stale_runs_interrupted(0)
        executed, idle_since, self.exit_reason = 0, time.monotonic(), None
        while not self.stopping.is_set():
            try:
                self.store.mark_stale_runs_interrupted(heartbeat_timeout())
                run = self.store.claim_next_run(os.getpid())
                gone = run is None and self.app_gone()  # never while a run is in hand or queued
            except DallmiError as exc:  # e.g. the store stayed locked: keep serving
                log.warning("cannot read the queue: %s", exc)
                run, gone = None, False
            if run is None:
                if self.idle_exit is not None and time.monotonic() - idle_since >= self.idle_exit:
                    log.info("no work for %.0f s: exiting", self.idle_exit)
                    self.exit_reason = "idle"
                    break
                if gone:
                    log.info("no app has used this data folder for %.0f s and nothing is queued", self.app_idle_exit)
                    self.exit_reason = "app-idle"
                    break
                if executed and self.recycle:
                    self.exit_reason = "recycle"
                    break
                self.stopping.wait(self.poll)
                continue
            self.execute(run)
            executed += 1
            release_memory()  # the run's models, optimiser state and corpora are unreachable now
            self.report()
            if self.once:
                self.exit_reason = "once"
                break
            idle_since = time.monotonic()
        else:
            self.exit_reason = "stopped"
        return executed

    def execute(self, run: Run) -> str | None:
        """Run one claimed run to its final status (None when the run was taken from us)."""
        log.info("run %d (%s) started, attempt %d", run.id, run.kind, run.attempts)
        self.run_id = run.id
        self.report()
        try:
            return self._execute(run)
        finally:
            self.run_id, self.runs_done = None, self.runs_done + 1

    def _execute(self, run: Run) -> str | None:
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
                error, trace = f"{type(exc).__name__}: {exc}", traceback.format_exc()
                status, outcome = "failed", {"error": error, "traceback": trace}
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


class Reporter:
    """The worker's report every `interval` s from its own thread and connection, so the Adapt page
    sees a live worker (and its memory) during a long run too."""

    def __init__(self, worker: Worker, db_path: Path, interval: float):
        self.worker, self.db_path, self.interval = worker, db_path, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="worker-report", daemon=True)

    def _beat(self) -> None:
        store = None
        while not self._stop.wait(self.interval):
            try:
                store = store or Store(self.db_path)
            except DallmiError as exc:
                log.warning("cannot open the store for the worker report: %s", exc)
                continue
            self.worker.report(store)
        if store is not None:
            store.close()

    def __enter__(self) -> Reporter:
        self.worker.report()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dallmi worker", description="Serve the run queue of a data directory.")
    parser.add_argument("--data-dir", help="data directory (default: $DALLMI_DATA_DIR or ./dallmi_data)")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between queue polls (default 1)")
    parser.add_argument("--idle-exit", type=float, default=None, help="exit after this many idle seconds")
    parser.add_argument("--once", action="store_true", help="exit after one run")
    parser.add_argument(
        "--exit-when-app-idle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit once no app process has beat into the store for this long, between runs with nothing "
        "queued (what the app gives the worker it starts; 0 or absent: never)",
    )
    parser.add_argument(
        "--no-recycle",
        action="store_true",
        help="keep this interpreter when the queue empties (default: a fresh one, to give the run's memory back)",
    )
    for hidden in ("--lock-fd", "--runs-done"):  # handed over by the previous interpreter of this worker
        parser.add_argument(hidden, type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--started-at", type=float, default=None, help=argparse.SUPPRESS)
    return parser


def _still_queued(store: Store) -> bool:
    """After the lock is released: is a run waiting? (One queued meanwhile found the lock held and
    started no worker.) When the store cannot say, assume so: the caller tries to take the lock back."""
    try:
        return store.has_queued_runs()
    except DallmiError:
        return True


def _exec_fresh(args: argparse.Namespace, root: Path, lock: IO, worker: Worker) -> None:
    """Replace this interpreter with a fresh one serving on (same pid, the lock passed as an inherited
    fd): what torch, transformers and the allocator kept of the runs goes back to the OS. A stop signal
    arriving meanwhile stays pending (blocked across the execve) until the new one handles it."""
    argv = [sys.executable, "-m", "dallmi_core.app.worker", "--data-dir", str(root), "--poll", repr(args.poll)]
    argv += ["--idle-exit", repr(args.idle_exit)] if args.idle_exit is not None else []
    argv += ["--exit-when-app-idle", repr(worker.app_idle_exit)] if worker.app_idle_exit else []
    fd = lock.fileno()
    argv += ["--lock-fd", str(fd), "--started-at", repr(worker.started_at), "--runs-done", str(worker.runs_done)]
    rss = rss_bytes()
    log.info(
        "queue empty after %d run(s): starting a fresh interpreter%s",
        worker.runs_done,
        f" (this one holds {rss / 2**20:.0f} MB)" if rss else "",
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    exec_fresh(argv, keep_fd=fd)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s worker[%(process)d] %(levelname)s %(message)s"
    )
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars of model loading in worker.log
    root = (Path(args.data_dir) if args.data_dir else data_dir()).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = inherited_lock(args.lock_fd) if args.lock_fd is not None else acquire_lock(root)
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
    worker = Worker(
        store,
        poll=args.poll,
        idle_exit=args.idle_exit,
        once=args.once,
        app_idle_exit=args.exit_when_app_idle or None,
        recycle=not (args.no_recycle or args.once),
        started_at=args.started_at,
        runs_done=args.runs_done or 0,
    )
    for sig in STOP_SIGNALS:  # finish the step, checkpoint, leave the run resumable
        signal.signal(sig, lambda *_: worker.stopping.set())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by a previous interpreter's execve
    if args.lock_fd is None:
        log.info("serving %s", root)
    else:
        log.info("fresh interpreter: serving on (%d run(s) so far)", worker.runs_done)
    try:
        while True:
            with Reporter(worker, store.path, report_interval()):  # stopped before the lock is let go
                worker.serve()
            if worker.exit_reason == "app-idle":
                worker.report(state="exited")
                lock.close()  # released first, then one more look at the queue
                lock = None
                if _still_queued(store) and (lock := acquire_lock(root, wait_s=0)) is not None:
                    log.info("a run was queued as this worker was leaving: serving on")
                    continue
                log.info("exiting")
                break
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            if worker.exit_reason != "recycle" or worker.stopping.is_set():
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                worker.report(state="exited")
                break
            store.close()
            try:
                _exec_fresh(args, root, lock, worker)  # does not return unless the execve failed
            except OSError as exc:
                log.warning("cannot start a fresh interpreter (%s): serving on in this one", exc)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            store = worker.store = open_store(root)
            worker.recycle = False
    finally:
        store.close()
        if lock is not None:
            lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
