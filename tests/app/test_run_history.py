"""The Adapt page's run history: a figure a run does not have reads as a dash, never None, and "took"
is the time the run worked, without the time it sat paused or queued before its resume."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dallmi_core.store import Store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def run_views(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from ui import run_views

    return run_views


def test_a_fine_tuning_has_dashes_for_ap_and_a_paused_run_took_its_active_time(tmp_path, monkeypatch, run_views):
    now = [1_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    with Store(tmp_path / "dallmi.db") as store:
        project = store.create_project("P", ["a"])
        source = store.enqueue_run(project.id, "finetune-source", {})
        store.claim_next_run(1)
        now[0] = 1_090.0
        store.finish_run(source, "done", metrics={"steps": 12, "documents": 40, "precision": "fp32"})
        adapt = store.enqueue_run(project.id, "adapt", {})
        store.claim_next_run(1)
        now[0] = 1_120.0  # 30 s of work, then paused (cancelled) and resumed an hour later
        store.request_cancel(adapt)
        store.finish_run(adapt, "cancelled")
        store.requeue_run(adapt)
        now[0] = 4_720.0
        store.claim_next_run(1)
        now[0] = 4_765.0
        metrics = {"steps": 60, "before": {"map_macro": 0.25}, "after": {"map_macro": 0.5}}
        store.finish_run(adapt, "done", metrics=metrics)
        queued = store.enqueue_run(project.id, "adapt", {})
        rows = run_views.history_rows(store.list_runs(project.id), now=now[0])
    assert rows["run"] == [queued, adapt, source]
    assert rows["macro AP before"] == ["–", "0.250", "–"] and rows["macro AP after"] == ["–", "0.500", "–"]
    assert rows["steps"] == ["–", "60", "12"]
    assert rows["took"] == ["–", "1 min 15 s", "1 min 30 s"]  # 30 s + 45 s; not the 1 h 01 min between
    assert not [cell for column in rows.values() for cell in column if cell is None or cell == "None"]
