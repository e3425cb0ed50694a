"""A run's active time (what the run history's "took" shows) and the stage of each series row: paused
or queued time between attempts is not counted, and stores from before either migration are filled in."""

from __future__ import annotations

import sqlite3
import time

import pytest

from dallmi_core.app.services import open_services
from dallmi_core.store import Store


class Clock:
    """time.time() under the test's control: the store stamps every transition with it."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch):
    fake = Clock(1_000.0)
    monkeypatch.setattr(time, "time", fake)
    return fake


def test_took_is_the_time_the_run_worked_not_the_pause_before_its_resume(store, clock):
    project = store.create_project("P", ["a"])
    run_id = store.enqueue_run(project.id, "adapt", {})
    assert store.get_run(run_id).active_seconds() is None  # queued: not started
    clock.now = 1_000.0
    store.claim_next_run(1)
    clock.now = 1_010.0
    assert store.get_run(run_id).active_seconds() == pytest.approx(10.0)  # running: up to now
    store.request_cancel(run_id)
    store.finish_run(run_id, "cancelled")  # paused by the user after 10 s of work
    clock.now = 5_000.0
    assert store.get_run(run_id).active_seconds() == pytest.approx(10.0)  # the pause does not count
    store.requeue_run(run_id)
    clock.now = 9_000.0  # queued again, waits an hour behind other runs
    store.claim_next_run(1)
    clock.now = 9_030.0
    done = store.finish_run(run_id, "done")
    assert done.finished_at - done.started_at == pytest.approx(8_030.0)  # the wall-clock span
    assert done.active_seconds() == pytest.approx(40.0)  # 10 s + 30 s of work


def test_a_run_whose_worker_died_counts_up_to_its_last_heartbeat(store, clock):
    project = store.create_project("P", ["a"])
    run_id = store.enqueue_run(project.id, "adapt", {})
    store.claim_next_run(1)
    clock.now = 1_020.0
    store.heartbeat(run_id)
    clock.now = 3_000.0  # silence: the worker is gone
    assert store.mark_stale_runs_interrupted(60) == [run_id]
    stale = store.get_run(run_id)
    assert stale.status == "interrupted" and stale.active_seconds() == pytest.approx(20.0)
    store.claim_next_run(2)
    clock.now = 3_005.0
    store.finish_run(run_id, "interrupted")  # stopped by SIGTERM: waits to be resumed
    assert store.get_run(run_id).active_seconds(now=9_999.0) == pytest.approx(25.0)


def _legacy_run(conn, project_id, kind, status, attempts, started=None, heartbeat=None, finished=None) -> int:
    return conn.execute(
        "INSERT INTO runs (project_id, kind, config, status, attempts, created_at, started_at, heartbeat_at, "
        "finished_at) VALUES (?, ?, '{}', ?, ?, 0, ?, ?, ?)",
        (project_id, kind, status, attempts, started, heartbeat, finished),
    ).lastrowid


def test_a_store_from_before_migration_8_knows_the_active_time_of_single_attempt_runs(tmp_path):
    path = tmp_path / "old.db"
    with Store(path, migrate_to=7) as old:
        project = old.create_project("P", ["a"])
    conn = sqlite3.connect(path)
    with conn:
        done = _legacy_run(conn, project.id, "adapt", "done", 1, 100.0, 160.0, 160.0)
        cancelled_later = _legacy_run(conn, project.id, "adapt", "cancelled", 1, 100.0, 130.0, 900.0)
        running = _legacy_run(conn, project.id, "adapt", "running", 1, 100.0, 150.0)
        resumed = _legacy_run(conn, project.id, "adapt", "done", 2, 100.0, 700.0, 700.0)
        queued = _legacy_run(conn, project.id, "adapt", "queued", 0)
        conn.execute("INSERT INTO run_metrics VALUES (?, 1, 'probe_loss', 0.9)", (done,))
        conn.execute("INSERT INTO run_metrics VALUES (?, 1, 'loss', 0.5)", (done,))
    conn.close()
    with Store(path) as new:
        active = {rid: new.get_run(rid).active_seconds(now=200.0) for rid in (done, cancelled_later, running)}
        assert active == {done: 60.0, cancelled_later: 30.0, running: 100.0}  # up to the last report
        assert new.get_run(resumed).active_seconds() is None  # what its first attempt took is unknown
        assert new.get_run(queued).active_seconds() is None
        assert new.staged_metrics(done) == [("probe-head", 1, "probe_loss", 0.9), ("adapt", 1, "loss", 0.5)]


def test_each_stage_keeps_its_own_steps_and_a_resume_drops_only_its_own(tmp_path):
    svc = open_services(tmp_path / "data", autostart_worker=False)
    store = svc.store
    project = store.create_project("P", ["a"])
    run_id = store.enqueue_run(project.id, "finetune-source", {})
    store.claim_next_run(1)
    for step in range(1, 11):  # the head warm-up, then the fine-tuning: both count from step 1
        store.update_progress(run_id, {"stage": "probe-head", "step": step}, metrics={"probe_loss": 1.0 / step})
    for step in range(1, 6):
        store.update_progress(run_id, {"stage": "finetune-source", "step": step}, metrics={"loss": 0.1 * step})
    store.log_metrics(run_id, 4, {"val_loss": 0.3}, stage="finetune-source")
    store.log_metrics(run_id, 5, {"val_loss": 0.2})  # no stage given: the run's kind
    assert store.drop_metrics_after(run_id, 3, stage="finetune-source") == 4  # resumed from step 3
    stages = svc.run_stages(run_id)
    assert list(stages) == ["probe-head", "finetune-source"]
    assert [step for step, _ in stages["probe-head"]["probe_loss"]] == list(range(1, 11))  # the warm-up is kept
    assert stages["finetune-source"] == {"loss": [(1, 0.1), (2, 0.2), (3, pytest.approx(0.3))]}
    svc.close()


def test_a_resumed_fine_tuning_keeps_the_rows_of_its_head_warm_up(tmp_path):
    """The worker's callbacks, without a model: the warm-up (its own steps 1..8) ran, the fine-tuning was
    killed at step 5 with its checkpoint at step 3; resuming skips the warm-up and drops steps 4-5 only."""
    import threading

    from dallmi_core.app.jobs.job import Job
    from dallmi_core.training.callbacks import CallbackList, TrainState

    with Store(tmp_path / "dallmi.db") as store:
        run_id = store.enqueue_run(store.create_project("p", ["a"]).id, "finetune-source", {})
        callbacks = CallbackList(Job(store, store.claim_next_run(worker_pid=1), threading.Event()).callbacks())
        for state, steps, name in (
            (TrainState(stage="probe-head", max_steps=8), range(1, 9), "probe_loss"),
            (TrainState(stage="finetune-source", max_steps=6), range(1, 6), "loss"),
        ):
            callbacks.on_train_begin(state)
            for step in steps:
                state.step, state.parts = step, {name: 1.0 / step}
                callbacks.on_step_end(state)
            callbacks.on_evaluate(state, {"step": state.step, "val_loss": 0.5})
        callbacks.on_train_begin(TrainState(stage="finetune-source", max_steps=6, step=3, resumed_from=3))
        staged = store.staged_metrics(run_id)
    assert [step for stage, step, name, _ in staged if name == "probe_loss"] == list(range(1, 9))
    assert [step for stage, step, name, _ in staged if stage == "finetune-source"] == [1, 2, 3]
    assert ("probe-head", 8, "val_loss", 0.5) in staged  # an evaluation is logged in its stage
