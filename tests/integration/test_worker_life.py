"""The worker's life with real processes: an app-started worker exits once the app is gone (never with
a run in hand), a later run starts a fresh one, and after a run its memory comes back to the idle
baseline.

The "app" is first a separate process that opens the services as the Streamlit server does (one
handle that beats into the store) and queues a run, then is SIGKILLed like a stopped server; then
this test process plays a second app. Idle timeout 3 s, app heartbeat every 0.2 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_worker import ADAPT, project_with_source_model, wait_for, wait_status

from dallmi_core.app import presence
from dallmi_core.app import worker as worker_module
from dallmi_core.app.process import LOG_FILE, rss_bytes, worker_pid, worker_running
from dallmi_core.app.services import open_services
from dallmi_core.app.worker import main
from dallmi_core.store import open_store

REPO = Path(__file__).resolve().parents[2]
IDLE_EXIT = 3.0

APP = textwrap.dedent("""
    import sys, time
    from dallmi_core.app.services import open_services
    svc = open_services(sys.argv[1], app_heartbeat=True)  # what ui.session.services() does, once per server
    config = {"max_length": 32, "batch_size": 8, "seed": 3, "positives_per_label": 2, "val_unlabeled": 8,
              "eval_every": 100000, "max_steps": 100000}
    print(svc.start_run(int(sys.argv[2]), "adapt", config, checkpoint_every=100000), flush=True)
    time.sleep(600)
""")


def app_env(monkeypatch) -> None:
    """What ensure_worker hands the worker it starts (it copies os.environ)."""
    for name, value in {
        "DALLMI_WORKER_IDLE_EXIT": str(IDLE_EXIT),
        "DALLMI_APP_HEARTBEAT_INTERVAL": "0.2",
        "DALLMI_WORKER_ARGS": "--poll 0.1",
        "DALLMI_WORKER_REPORT_INTERVAL": "0.3",
        "DALLMI_HEARTBEAT_INTERVAL": "0.3",
        "DALLMI_HEARTBEAT_TIMEOUT": "2",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }.items():
        monkeypatch.setenv(name, value)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def log_text(data: Path) -> str:
    return (data / LOG_FILE).read_text(errors="replace") if (data / LOG_FILE).exists() else ""


@pytest.fixture()
def no_worker_left(tmp_path):
    """Should a check fail, the worker (in its own session: it outlives the test) is stopped."""
    yield
    pid = worker_pid(tmp_path)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)


def test_an_app_started_worker_outlives_its_run_not_the_app_and_gives_its_memory_back(
    tmp_path, tiny_clf, monkeypatch, no_worker_left
):
    app_env(monkeypatch)
    services, project_id = project_with_source_model(tmp_path, tiny_clf)  # no worker, no heartbeat
    store = services.store
    app = subprocess.Popen(
        [sys.executable, "-c", APP, str(tmp_path), str(project_id)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        run_id = int(app.stdout.readline())
        wait_for(lambda: store.get_run(run_id).status == "running", "the worker to take the run", tmp_path)
        first = worker_pid(tmp_path)
        assert first is not None and store.worker_report().app_idle_exit == IDLE_EXIT
    finally:
        app.send_signal(signal.SIGKILL)  # the server stops: its heartbeat thread dies with it
        app.wait()
    last_beat = store.last_app_heartbeat()

    # The run in hand (loading, then training) keeps the worker past the idle timeout ...
    wait_for(lambda: time.time() > last_beat + IDLE_EXIT + 1.0, "the idle timeout", tmp_path, every=0.1)
    wait_for(lambda: (store.get_run(run_id).progress.get("step") or 0) >= 1, "the first step", tmp_path)
    assert store.get_run(run_id).status == "running" and worker_running(tmp_path) and alive(first)
    # ... and once it has ended (cancelled here, to keep the test short) the worker leaves at once.
    services.store.request_cancel(run_id)
    ended = wait_status(services, run_id, "cancelled").finished_at
    wait_for(lambda: not worker_running(tmp_path), "the worker to exit", tmp_path, timeout=IDLE_EXIT + 10)
    exited = time.time()
    assert exited - ended < IDLE_EXIT, (exited - ended, log_text(tmp_path)[-2000:])
    wait_for(lambda: not alive(first), "the worker process to end", tmp_path, timeout=10)
    assert store.worker_report().state == "exited"
    assert "no app has used this data folder for 3 s" in log_text(tmp_path)

    # A new app: its worker starts fresh, idles at its baseline, runs a tiny job, and comes back down.
    app2 = open_services(tmp_path, autostart_worker=True, app_heartbeat=True)
    try:
        proc = presence.ensure_worker(app2.data_dir)
        assert proc is not None and proc.pid != first
        wait_for(lambda: presence.worker_status(app2.store).report.pid == proc.pid, "the new worker's report", tmp_path)
        time.sleep(0.5)
        baseline = rss_bytes(proc.pid)
        run2 = app2.start_run(project_id, "adapt", {**ADAPT, "max_steps": 2})
        peak = 0
        while store.get_run(run2).status not in ("done", "failed", "cancelled"):
            peak = max(peak, rss_bytes(proc.pid) or 0)
            time.sleep(0.05)
        assert store.get_run(run2).status == "done", store.get_run(run2).error
        wait_for(
            lambda: presence.worker_status(app2.store).report.runs_done == 1, "the worker's report of the run", tmp_path
        )
        # The image is replaced at execve; measure once the new interpreter has imported and logged.
        wait_for(
            lambda: "fresh interpreter: serving on (1 run(s) so far)" in log_text(tmp_path),
            "the fresh interpreter's log line",
            tmp_path,
        )
        time.sleep(0.5)
        after = rss_bytes(proc.pid)
        assert worker_pid(tmp_path) == proc.pid and proc.poll() is None  # the same process, lock held
        assert peak > 2 * baseline  # the job did load torch, a model, an optimiser
        assert after <= 1.5 * baseline, (baseline / 2**20, peak / 2**20, after / 2**20)
        # A live app keeps its (idle) worker past the timeout; once its heartbeat stops, the worker goes.
        time.sleep(IDLE_EXIT + 0.5)
        assert proc.poll() is None and presence.worker_status(app2.store).alive
    finally:
        app2.close()  # stops the heartbeat thread
    stopped = store.last_app_heartbeat()
    assert proc.wait(timeout=IDLE_EXIT + 15) == 0
    assert IDLE_EXIT - 0.3 <= time.time() - stopped <= IDLE_EXIT + 5
    assert not worker_running(tmp_path) and store.worker_report().state == "exited"
    services.close()


def test_a_run_queued_while_the_worker_leaves_is_served_not_stranded(tmp_path, monkeypatch):
    """The last look at the queue after the lock is let go: a run that came in just before (its app saw
    the lock held, so started no worker) makes the worker take the lock back and serve it."""
    store = open_store(tmp_path)
    project_id = store.create_project("p", ["a"]).id
    queued: list[int] = []
    real = worker_module._still_queued

    def a_run_arrives(s):
        if not queued:
            queued.append(store.enqueue_run(project_id, "bogus", {}))
        return real(s)

    monkeypatch.setattr(worker_module, "_still_queued", a_run_arrives)
    handlers = {sig: signal.getsignal(sig) for sig in worker_module.STOP_SIGNALS}
    try:
        args = ["--data-dir", str(tmp_path), "--poll", "0.05", "--exit-when-app-idle", "0.3", "--no-recycle"]
        args += ["--idle-exit", "10"]  # should the app-idle exit fail, the test fails rather than hangs
        assert main(args) == 0
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    run = store.get_run(queued[0])
    assert run.status == "failed" and "unknown run kind 'bogus'" in run.error  # served, not left queued
    assert not worker_running(tmp_path) and store.worker_report().state == "exited"
    store.close()
