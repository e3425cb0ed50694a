"""The app's side of the worker's life: starting it, telling it the app is alive, asking how it is.

A worker that the app starts (`ensure_worker`) is given `--exit-when-app-idle SECONDS`
($DALLMI_WORKER_IDLE_EXIT, default 600, 0 = never): it exits by itself once no app process has beat
for that long, after the run in hand and with nothing queued. Every app process beats into the store
(`AppHeartbeat`: a daemon thread with its own connection), so the worker reads the app's liveness
from the store, never from process names. `worker_status` is what the Adapt page shows: whether a
worker holds this data folder's lock, and its last report (state, run in hand, resident memory).
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import dallmi_core
from dallmi_core.app.process import LOG_FILE, worker_pid, worker_running
from dallmi_core.errors import ConfigError, DallmiError
from dallmi_core.store import Store, WorkerReport

IDLE_EXIT_ENV = "DALLMI_WORKER_IDLE_EXIT"
DEFAULT_IDLE_EXIT = 600.0  # seconds a worker started by the app outlives the last app heartbeat
HEARTBEAT_ENV = "DALLMI_APP_HEARTBEAT_INTERVAL"
DEFAULT_HEARTBEAT = 30.0  # seconds between an app process's heartbeats (at most a quarter of the idle exit)

log = logging.getLogger("dallmi_core.app.presence")
_spawned: list[subprocess.Popen] = []  # reaped on the next call, so finished workers leave no zombies


def app_idle_exit() -> float | None:
    """$DALLMI_WORKER_IDLE_EXIT in seconds (default 600); None for 0: the worker never exits by itself."""
    text = os.environ.get(IDLE_EXIT_ENV, "").strip()
    try:
        seconds = float(text) if text else DEFAULT_IDLE_EXIT
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        raise ConfigError(f"{IDLE_EXIT_ENV}={text!r} is not a number of seconds >= 0 (0 = never exit).")
    return seconds or None


def app_heartbeat_interval() -> float:
    """Seconds between app heartbeats: $DALLMI_APP_HEARTBEAT_INTERVAL (default 30), at most a quarter
    of the idle exit, so a live app never looks gone to its worker."""
    try:
        interval = float(os.environ.get(HEARTBEAT_ENV) or DEFAULT_HEARTBEAT)
    except ValueError:
        interval = DEFAULT_HEARTBEAT
    try:
        idle = app_idle_exit()
    except ConfigError:
        idle = None
    return max(0.05, min(interval, idle / 4 if idle else interval))


def ensure_worker(data_dir: str | os.PathLike) -> subprocess.Popen | None:
    """Start a worker for `data_dir` unless a process holds its lock; returns the new process.

    A fresh interpreter in a new session (never a fork of the server), its output appended to
    <data_dir>/worker.log, exiting once the app is gone for $DALLMI_WORKER_IDLE_EXIT seconds. Two
    callers racing may both start one: the lock makes the later exit. $DALLMI_WORKER_ARGS adds
    arguments (e.g. `--idle-exit 20`).
    """
    _spawned[:] = [proc for proc in _spawned if proc.poll() is None]
    root = Path(data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if worker_running(root):
        return None
    idle = app_idle_exit()
    args = [
        sys.executable,
        "-m",
        "dallmi_core.app.worker",
        "--data-dir",
        str(root),
        *(["--exit-when-app-idle", f"{idle:g}"] if idle else []),
        *shlex.split(os.environ.get("DALLMI_WORKER_ARGS", "")),
    ]
    env = dict(os.environ)  # the worker must import this very package, installed or not
    package_root = str(Path(dallmi_core.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with open(root / LOG_FILE, "ab") as log_file:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    _spawned.append(proc)
    return proc


class AppHeartbeat:
    """One app process's heartbeat: a row in the store, refreshed every `interval` s from a daemon
    thread with its own connection (so a busy page never delays it, and it dies with the process)."""

    def __init__(self, db_path: str | os.PathLike, interval: float | None = None):
        self.db_path, self.interval = Path(db_path), interval or app_heartbeat_interval()
        self.token, self.pid, self.host = uuid.uuid4().hex, os.getpid(), socket.gethostname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dallmi-app-heartbeat", daemon=True)

    def beat(self, store: Store) -> None:
        store.app_heartbeat(self.token, self.pid, self.host)

    def start(self) -> AppHeartbeat:
        """Beat once now (before a worker may be started), then every `interval` seconds."""
        with Store(self.db_path) as store:
            self.beat(store)
        self._thread.start()
        return self

    def _run(self) -> None:
        store = None
        while not self._stop.wait(self.interval):
            try:
                store = store or Store(self.db_path)
                self.beat(store)
            except DallmiError as exc:  # a busy store: the next beat tries again
                log.warning("app heartbeat failed: %s", exc)
        if store is not None:
            store.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


@dataclass(frozen=True)
class WorkerStatus:
    """Whether a worker serves this data folder now, and what it last reported."""

    alive: bool  # a process holds the data folder's worker lock
    pid: int | None  # the live worker's pid
    report: WorkerReport | None  # its last report (or the last worker's, when none is alive)
    report_age_s: float | None  # seconds since that report
    app_idle_exit: float | None  # what a worker started by this app is given (None: it never exits)

    @property
    def rss_mb(self) -> float | None:
        rss = self.report.rss_bytes if self.report is not None else None
        return None if rss is None else rss / 2**20


def worker_status(store: Store) -> WorkerStatus:
    alive = worker_running(store.data_dir)
    pid = worker_pid(store.data_dir) if alive else None
    report = store.worker_report()
    try:
        idle = app_idle_exit()
    except ConfigError:
        idle = None
    age = None if report is None else max(0.0, time.time() - report.last_seen)
    return WorkerStatus(alive, pid, report, age, idle)
