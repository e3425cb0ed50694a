"""Presence in the store (app heartbeats, the worker's report), the idle-exit setting, the app-linked
worker's exit rule in-process, and what the Adapt page is told about the worker."""

from __future__ import annotations

import os
import time

import pytest

from dallmi_core.app import presence
from dallmi_core.app.presence import AppHeartbeat, app_heartbeat_interval, app_idle_exit
from dallmi_core.app.process import acquire_lock, release_memory, rss_bytes
from dallmi_core.app.services import open_services
from dallmi_core.app.worker import Worker, build_parser
from dallmi_core.errors import ConfigError
from dallmi_core.store import MIGRATIONS, Store, open_store
from dallmi_core.store.presence import APP_ROWS_KEPT_S


def test_app_heartbeats_keep_the_newest_beat_per_process_and_prune_long_gone_ones(tmp_path):
    with open_store(tmp_path) as store:
        assert store.last_app_heartbeat() is None
        store.app_heartbeat("a", 11, "h", now=100.0)
        store.app_heartbeat("b", 12, "h", now=200.0)
        store.app_heartbeat("a", 11, "h", now=300.0)
        assert store.last_app_heartbeat() == 300.0
        rows = {row["token"]: row for row in store.app_heartbeats()}
        assert (rows["a"]["started_at"], rows["a"]["last_seen"], rows["a"]["pid"]) == (100.0, 300.0, 11)
        store.app_heartbeat("c", 13, "h", now=250.0 + APP_ROWS_KEPT_S)
        assert [row["token"] for row in store.app_heartbeats()] == ["c", "a"]  # b pruned, a not yet


def test_the_worker_report_is_one_row_replaced_by_each_worker(tmp_path):
    with open_store(tmp_path) as store:
        assert store.worker_report() is None
        store.report_worker(7, "h", started_at=1.0, state="running", run_id=3, rss_bytes=2**20, app_idle_exit=600.0)
        report = store.worker_report()
        assert (report.pid, report.state, report.run_id, report.rss_bytes, report.app_idle_exit) == (
            7,
            "running",
            3,
            2**20,
            600.0,
        )
        assert time.time() - report.last_seen < 5
        store.report_worker(8, "h", started_at=2.0, state="idle", runs_done=4)
        report = store.worker_report()
        assert (report.pid, report.run_id, report.app_idle_exit, report.runs_done) == (8, None, None, 4)


def test_a_v4_store_gains_the_presence_tables(tmp_path):
    with Store(tmp_path / "old.db", migrate_to=4) as old:
        assert "app_heartbeats" not in old.table_counts()
    with Store(tmp_path / "old.db") as new:
        assert new.schema_version == len(MIGRATIONS)
        assert new.table_counts()["app_heartbeats"] == 0 and new.worker_report() is None


def test_has_queued_runs_sees_queued_and_interrupted_runs_only(tmp_path):
    with open_store(tmp_path) as store:
        project_id = store.create_project("p", ["a"]).id
        assert not store.has_queued_runs()
        run_id = store.enqueue_run(project_id, "score", {})
        assert store.has_queued_runs()
        store.claim_next_run(1)
        assert not store.has_queued_runs()
        store.finish_run(run_id, "interrupted")
        assert store.has_queued_runs()


def test_the_idle_exit_setting(monkeypatch):
    monkeypatch.delenv("DALLMI_WORKER_IDLE_EXIT", raising=False)
    monkeypatch.delenv("DALLMI_APP_HEARTBEAT_INTERVAL", raising=False)
    assert app_idle_exit() == 600.0 and app_heartbeat_interval() == 30.0
    monkeypatch.setenv("DALLMI_WORKER_IDLE_EXIT", "0")
    assert app_idle_exit() is None and app_heartbeat_interval() == 30.0
    monkeypatch.setenv("DALLMI_WORKER_IDLE_EXIT", "20")
    assert app_idle_exit() == 20.0 and app_heartbeat_interval() == 5.0  # a live app never looks gone
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("DALLMI_WORKER_IDLE_EXIT", bad)
        with pytest.raises(ConfigError, match="DALLMI_WORKER_IDLE_EXIT"):
            app_idle_exit()


class _FakePopen:
    calls: list[list[str]] = []

    def __init__(self, args, **kwargs):
        self.calls.append(list(args))
        self.pid = 0

    def poll(self):
        return 0


def test_ensure_worker_links_the_worker_it_starts_to_the_app(tmp_path, monkeypatch):
    monkeypatch.setattr(presence.subprocess, "Popen", _FakePopen)
    monkeypatch.setenv("DALLMI_WORKER_ARGS", "--poll 0.5")
    monkeypatch.delenv("DALLMI_WORKER_IDLE_EXIT", raising=False)
    presence.ensure_worker(tmp_path)
    monkeypatch.setenv("DALLMI_WORKER_IDLE_EXIT", "0")
    presence.ensure_worker(tmp_path)
    default, never = _FakePopen.calls[-2:]
    root = str(tmp_path.resolve())
    assert default[1:] == [
        "-m",
        "dallmi_core.app.worker",
        "--data-dir",
        root,
        "--exit-when-app-idle",
        "600",
        "--poll",
        "0.5",
    ]
    assert never[1:] == ["-m", "dallmi_core.app.worker", "--data-dir", root, "--poll", "0.5"]  # 0: never exits


def test_a_hand_started_worker_never_exits_for_the_app(tmp_path):
    assert build_parser().parse_args([]).exit_when_app_idle is None
    with open_store(tmp_path) as store:
        store.app_heartbeat("gone", 1, "h", now=time.time() - 3600)
        assert not Worker(store, started_at=time.time() - 3600).app_gone()


def test_an_app_linked_worker_serves_every_queued_run_before_it_leaves(tmp_path):
    with open_store(tmp_path) as store:
        project_id = store.create_project("p", ["a"]).id
        store.app_heartbeat("gone", 1, "h", now=time.time() - 60)
        runs = [store.enqueue_run(project_id, "bogus", {}) for _ in range(2)]
        worker = Worker(store, poll=0.02, idle_exit=5.0, app_idle_exit=0.5, started_at=time.time() - 60)
        assert worker.app_gone()
        assert worker.serve() == 2 and worker.exit_reason == "app-idle"
        assert all(store.get_run(run_id).status == "failed" for run_id in runs)
        assert store.worker_report().runs_done == 2


def test_a_beating_app_keeps_its_worker_and_the_timeout_counts_from_the_last_beat(tmp_path):
    with open_store(tmp_path) as store:
        heartbeat = AppHeartbeat(store.path, interval=0.05).start()
        try:
            assert store.last_app_heartbeat() is not None  # the first beat is written before start returns
            worker = Worker(store, poll=0.02, idle_exit=1.0, app_idle_exit=0.3, started_at=time.time() - 60)
            assert worker.serve() == 0 and worker.exit_reason == "idle"  # the plain idle exit, not the app's
        finally:
            heartbeat.stop()
        stopped = store.last_app_heartbeat()
        time.sleep(0.2)
        assert store.last_app_heartbeat() == stopped  # no beat after stop
        worker = Worker(store, poll=0.02, idle_exit=5.0, app_idle_exit=0.3, started_at=time.time() - 60)
        began = time.time()
        assert worker.serve() == 0 and worker.exit_reason == "app-idle"
        assert stopped + 0.3 <= time.time() and time.time() - began < 5


def test_worker_status_says_whether_a_worker_holds_the_lock_and_its_last_report(tmp_path):
    with open_services(tmp_path, autostart_worker=False) as svc:
        status = presence.worker_status(svc.store)
        assert not status.alive and status.pid is None and status.report is None and status.rss_mb is None
        lock = acquire_lock(tmp_path)
        try:
            svc.store.report_worker(os.getpid(), "h", started_at=time.time(), state="idle", rss_bytes=3 * 2**20)
            status = presence.worker_status(svc.store)
            assert status.alive and status.pid == os.getpid() and status.rss_mb == 3.0
            assert 0 <= status.report_age_s < 5
        finally:
            lock.close()
        status = presence.worker_status(svc.store)
        assert not status.alive and status.report.pid == os.getpid()


def test_open_services_beats_for_the_app_until_closed(tmp_path):
    with open_services(tmp_path, autostart_worker=False) as svc:
        assert svc.store.last_app_heartbeat() is None  # only the app's handle beats
    svc = open_services(tmp_path, autostart_worker=False, app_heartbeat=True)
    beats = svc.store.app_heartbeats()
    assert [(row["pid"], row["token"]) for row in beats] == [(os.getpid(), svc.app_heartbeat.token)]
    svc.close()
    assert not svc.app_heartbeat._thread.is_alive()


def test_memory_helpers():
    release_memory()  # gc, CUDA cache when initialised, malloc_trim where glibc has it
    assert rss_bytes() > 10 * 2**20 and rss_bytes(os.getpid()) > 0 and rss_bytes(2**31) is None
