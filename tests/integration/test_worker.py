"""The worker as a real OS process on a real store: runs, progress, cancel, kill -9 and resume, failures.

Every worker here is `python -m dallmi_core.app.worker` in a fresh interpreter (one torch thread, short
heartbeats), serving a project seeded with the tiny random BERT; the test process only talks to
the store, exactly as the app does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import LABELS, make_texts

from dallmi_core.app import candidates as ranking
from dallmi_core.app import exporter, importer
from dallmi_core.app.jobs.job import Job
from dallmi_core.app.process import worker_pid, worker_running
from dallmi_core.app.services import open_services
from dallmi_core.app.worker import Heartbeat, Worker
from dallmi_core.modeling.model import load_classifier, save_classifier
from dallmi_core.store import open_store
from dallmi_core.training.callbacks import CallbackList, TrainState

REPO = Path(__file__).resolve().parents[2]
HEARTBEAT_TIMEOUT = 2.0
TRAIN = {"max_length": 32, "batch_size": 8, "seed": 3}
ADAPT = {**TRAIN, "positives_per_label": 2, "val_unlabeled": 8, "eval_every": 1000}


def start_worker(data_dir: Path, *args: str) -> subprocess.Popen:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        DALLMI_HEARTBEAT_INTERVAL="0.3",
        DALLMI_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    )
    with open(data_dir / f"test-worker-{time.monotonic_ns()}.log", "wb") as log:  # the child keeps its own fd
        return subprocess.Popen(
            [sys.executable, "-m", "dallmi_core.app.worker", "--data-dir", str(data_dir), "--poll", "0.1", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def worker_logs(data_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(data_dir.glob("test-worker-*.log")))


def wait_for(predicate, what: str, data_dir: Path, timeout: float = 120.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; worker log:\n{worker_logs(data_dir)[-4000:]}")


def wait_status(services, run_id: int, *statuses: str, timeout: float = 120.0):
    return wait_for(
        lambda: (r := services.store.get_run(run_id)).status in statuses and r,
        f"run {run_id} to become {'/'.join(statuses)}",
        services.data_dir,
        timeout,
    )


def seed(services, project_id: int, tmp: Path, *, with_eval: bool = True) -> None:
    """Source (gold), target (the first 12 documents tagged) and eval (gold) documents."""
    frames = []
    parts = (("source", 48, 1, 48), ("target", 40, 2, 12), ("eval", 24, 3, 24))
    for domain, n, seed_, keep in parts[: 3 if with_eval else 2]:
        texts, y = make_texts(n, seed=seed_)
        labels = ["|".join(LABELS[j] for j in np.flatnonzero(row)) if i < keep else "" for i, row in enumerate(y)]
        frames.append(
            pd.DataFrame({"id": [f"{domain}-{i}" for i in range(n)], "text": texts, "labels": labels, "domain": domain})
        )
    pd.concat(frames).to_csv(tmp / "docs.csv", index=False)
    importer.import_file(services.store, project_id, tmp / "docs.csv")


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_backbone):
    """A project whose source model comes from a finetune-source run of one long-lived worker."""
    root = tmp_path_factory.mktemp("served")
    services = open_services(root, autostart_worker=False)
    project = services.create_project("support", LABELS, backbone=tiny_backbone)
    seed(services, project.id, root)
    proc = start_worker(root, "--idle-exit", "60")
    run_id = services.start_run(project.id, "finetune-source", {**TRAIN, "max_steps": 4})
    run = wait_status(services, run_id, "done", "failed")
    assert run.status == "done", run.error
    assert services.store.get_project(project.id).source_model == run.model_path
    yield services, project.id, proc
    stop_worker(proc)
    services.close()


def test_adapt_runs_to_done_with_progress_model_predictions_and_metrics(served):
    services, project_id, proc = served
    store = services.store
    run_id = services.start_run(project_id, "adapt", {**ADAPT, "max_steps": 4, "eval_every": 2}, checkpoint_every=2)
    run = wait_status(services, run_id, "done", "failed", "cancelled")
    assert run.status == "done", run.error
    assert {"loss", "variational", "mixup", "val_variational"} <= {name for _, name, _ in store.run_metrics(run_id)}
    assert [step for step, _, _ in store.run_metrics(run_id, "loss")] == [1, 2, 3, 4]
    assert load_classifier(run.model_path).label_names == LABELS
    ids, scores = store.load_predictions(run_id)
    expected = store.document_ids(project_id, "target") + store.document_ids(project_id, "eval")
    assert sorted(ids.tolist()) == sorted(expected) and scores.shape == (len(expected), len(LABELS))
    assert ((scores >= 0) & (scores <= 1)).all()
    metrics = run.metrics
    assert (
        metrics["estimate"] is False and metrics["steps"] == 4 and metrics["best_step"] is None
    )  # default selection "last" keeps the final step
    assert metrics["precision"] == "no"  # recorded with the run: the suite keeps CPUs in float32
    for when in ("before", "after"):
        assert set(metrics[when]["per_label_ap"]) == set(LABELS) and 0 < metrics[when]["map_macro"] <= 1
    status = services.run_status(run_id)
    assert status.status == "done" and status.worker_alive and not status.can_cancel
    assert [step for step, _ in services.results(run_id).series["loss"]] == [1, 2, 3, 4]
    likely = ranking.candidates(services.store, project_id, "billing", "likely", limit=5)
    assert len(likely) == 5 and all(c.run_id == run_id for c in likely)
    assert [c.score for c in likely] == sorted((c.score for c in likely), reverse=True)
    assert exporter.export_predictions(services.store, run_id, fmt="csv").is_file()
    # the run is calibrated: its map in the store and the model folder, its thresholds in every export
    from dallmi_core.app.decisions import decisions, run_calibration

    adapted = load_classifier(run.model_path)
    assert run_calibration(store, run_id) == adapted.calibration() is not None
    chosen = decisions(store, run_id)
    assert {d.source for d in chosen.values()} <= {"estimate", "default"}
    frame = pd.read_csv(exporter.export_predictions(services.store, run_id, fmt="csv"), dtype={"id": str})
    for label in LABELS:
        cut = np.float32(chosen[label].threshold)  # stored scores are float32, and so is the cut
        assert (frame[f"pred_{label}"] == (frame[f"score_{label}"].astype(np.float32) >= cut)).all()


def test_a_score_run_re_estimates_the_source_calibration_on_the_target(served):
    services, project_id, proc = served
    store = services.store
    run_id = services.start_run(project_id, "score", {"max_length": 32})
    run = wait_status(services, run_id, "done", "failed", "cancelled")
    assert run.status == "done", run.error
    from dallmi_core.app.decisions import run_calibration

    on_target = run_calibration(store, run_id)
    source = load_classifier(services.store.get_project(project_id).source_model)
    assert on_target is not None and set(on_target.labels) == set(LABELS)
    tags = store.tags_by_label(project_id)
    for label, item in on_target.labels.items():
        if len(tags.get(label, [])) >= 3:
            assert item.basis.startswith("estimate")
            assert item.intercept != source.calibration().labels[label].intercept  # moved to the target


def test_cancel_mid_run_ends_cancelled_before_its_budget(served):
    services, project_id, proc = served
    run_id = services.start_run(project_id, "adapt", {**ADAPT, "max_steps": 400}, checkpoint_every=1000)
    wait_for(lambda: (services.store.get_run(run_id).progress.get("step") or 0) >= 2, "two steps", services.data_dir)
    assert services.store.request_cancel(run_id) == "running"
    run = wait_status(services, run_id, "cancelled", "done", "failed")
    assert run.status == "cancelled" and run.progress["step"] < 400 and run.model_path is None
    status = services.run_status(run_id)
    assert status.can_resume and not status.can_cancel  # the cancel wrote a checkpoint
    assert proc.poll() is None  # the worker serves on


def test_failing_runs_are_recorded_and_the_worker_serves_the_next(served, tmp_path):
    services, project_id, proc = served
    store = services.store
    bad_config = store.enqueue_run(project_id, "adapt", {"config": {"method": "nope"}})
    no_model = store.enqueue_run(
        project_id,
        "adapt",
        {"config": {**ADAPT, "max_steps": 2, "kind": "adapt"}, "source_model": str(tmp_path / "gone")},
    )
    unknown = store.enqueue_run(project_id, "bogus", {})
    score = services.start_run(project_id, "score")
    run = wait_status(services, score, "done", "failed")
    assert run.status == "done", run.error
    assert set(run.metrics["evaluation"]["per_label_ap"]) == set(LABELS)
    assert len(store.load_predictions(score)[0]) == 64
    errors = {run_id: store.get_run(run_id) for run_id in (bad_config, no_model, unknown)}
    assert all(r.status == "failed" for r in errors.values())
    assert "method='nope' is not one of" in errors[bad_config].error
    assert "gone" in errors[no_model].error and "does not exist" in errors[no_model].error
    assert "unknown run kind 'bogus'" in errors[unknown].error
    assert proc.poll() is None


def project_with_source_model(tmp_path: Path, clf):
    """No eval documents: adapt runs report the PU-estimated AP instead of gold AP."""
    services = open_services(tmp_path, autostart_worker=False)
    save_classifier(clf, tmp_path / "source-model")
    project = services.create_project("resume", LABELS, source_model=str(tmp_path / "source-model"))
    seed(services, project.id, tmp_path, with_eval=False)
    return services, project.id


def wait_for_checkpoint(services, run_id: int) -> Path:
    def found():
        folder = services.store.get_run(run_id).checkpoint_dir
        return folder and (Path(folder) / "trainer_state.pt").exists() and Path(folder) / "trainer_state.pt"

    return wait_for(found, "a checkpoint", services.data_dir, every=0.01)


def test_killed_worker_run_is_interrupted_then_resumed_from_its_checkpoint(tmp_path, tiny_clf):
    import torch

    services, project_id = project_with_source_model(tmp_path, tiny_clf)
    store = services.store
    first = start_worker(tmp_path, "--idle-exit", "30")
    try:
        run_id = services.start_run(project_id, "adapt", {**ADAPT, "max_steps": 60}, checkpoint_every=2)
        checkpoint = wait_for_checkpoint(services, run_id)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait()
    saved_step = torch.load(checkpoint, weights_only=True)["step"]
    killed = store.run_metrics(run_id, "loss")  # may run past the checkpoint: those steps are done again
    before = Counter(step for step, _, _ in killed if step <= saved_step)
    assert store.get_run(run_id).status == "running" and 2 <= saved_step < 60
    assert wait_for(
        lambda: store.mark_stale_runs_interrupted(HEARTBEAT_TIMEOUT),
        "the heartbeat timeout",
        tmp_path,
        timeout=30,
        every=0.2,
    ) == [run_id]
    assert store.get_run(run_id).status == "interrupted"

    second = start_worker(tmp_path, "--idle-exit", "30")
    try:
        run = wait_status(services, run_id, "done", "failed")
    finally:
        stop_worker(second)
    assert run.status == "done" and run.attempts == 2, run.error
    after = store.run_metrics(run_id, "loss")
    resumed = Counter(step for step, _, _ in after) - before
    assert min(resumed) == saved_step + 1 > saved_step - 1  # continued from the checkpoint, not from 0
    assert Counter(step for step, _, _ in after) == Counter(range(1, 61))  # one row per step, none twice
    assert [row for row in after if row[0] <= saved_step] == [row for row in killed if row[0] <= saved_step]
    assert max(resumed) == 60 and run.metrics["steps"] == 60
    assert run.metrics["estimate"] is True  # no gold: held-out tags ranked among held-out unlabeled docs
    for when in ("before", "after"):
        assert set(run.metrics[when]["per_label_ap"]) == set(LABELS) and 0 < run.metrics[when]["map_macro"] <= 1
    services.close()


def test_only_one_worker_serves_a_data_dir(tmp_path):
    workers = [start_worker(tmp_path, "--idle-exit", "20") for _ in range(2)]
    try:
        wait_for(lambda: any(w.poll() is not None for w in workers), "a worker to give way", tmp_path, timeout=60)
        gone = [w for w in workers if w.poll() is not None]
        alive = [w for w in workers if w.poll() is None]
        assert len(gone) == 1 and len(alive) == 1 and gone[0].returncode == 0
        assert "another worker already serves" in worker_logs(tmp_path)
        assert worker_running(tmp_path) and worker_pid(tmp_path) == alive[0].pid
    finally:
        for w in workers:
            stop_worker(w)
    assert all(w.returncode == 0 for w in workers) and not worker_running(tmp_path)


def test_sigterm_stops_the_worker_and_leaves_its_run_resumable(tmp_path, tiny_clf):
    services, project_id = project_with_source_model(tmp_path, tiny_clf)
    proc = start_worker(tmp_path)
    try:
        run_id = services.start_run(project_id, "adapt", {**ADAPT, "max_steps": 400}, checkpoint_every=1000)
        wait_for(lambda: (services.store.get_run(run_id).progress.get("step") or 0) >= 2, "two steps", tmp_path)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        stop_worker(proc)
    run = services.store.get_run(run_id)
    assert run.status == "interrupted" and run.progress["step"] < 400  # queued again, first in line
    assert (Path(run.checkpoint_dir) / "trainer_state.pt").exists()
    services.close()


def test_a_new_worker_takes_over_orphaned_runs_at_once_and_records_failures(tmp_path):
    """Holding the lock proves the previous worker is dead: no need to wait for the heartbeat timeout."""
    store = open_store(tmp_path)
    project = store.create_project("p", LABELS)
    run_id = store.enqueue_run(project.id, "bogus", {})
    store.claim_next_run(worker_pid=999_999)  # its worker died a moment ago: the heartbeat is fresh
    worker = Worker(store, poll=0.05, idle_exit=0)
    assert worker.serve() == 1
    run = store.get_run(run_id)
    assert run.status == "failed" and run.attempts == 2 and "unknown run kind 'bogus'" in run.error
    store.close()


def test_heartbeat_beats_from_its_own_connection_and_notices_a_run_taken_away(tmp_path):
    import threading

    store = open_store(tmp_path)
    run_id = store.enqueue_run(store.create_project("p", LABELS).id, "score", {})
    started = store.claim_next_run(worker_pid=1).heartbeat_at
    lost = threading.Event()
    with Heartbeat(store.path, run_id, 0.05, lost):
        wait_for(lambda: store.get_run(run_id).heartbeat_at > started, "a heartbeat", tmp_path, timeout=10)
        store.finish_run(run_id, "failed", error="taken away")
        assert lost.wait(timeout=10)
    store.close()


def test_run_callbacks_log_loss_parts_only_and_drop_rows_past_the_resumed_checkpoint(tmp_path):
    """What the worker's callbacks write, without a model: a fake attempt killed at step 5 whose
    checkpoint was at step 3, then the resumed attempt (state.resumed_from = 3) running to step 6."""
    import threading

    store = open_store(tmp_path)
    run_id = store.enqueue_run(store.create_project("p", LABELS).id, "adapt", {})
    callbacks = CallbackList(Job(store, store.claim_next_run(worker_pid=1), threading.Event()).callbacks())
    killed = TrainState(stage="dallmi", max_steps=6)
    callbacks.on_train_begin(killed)
    for step in range(1, 6):
        killed.step, killed.parts = step, {"loss": 1.0, "variational": 0.5}
        callbacks.on_step_end(killed)
    assert len(store.run_metrics(run_id, "loss")) == 5
    resumed = TrainState(stage="dallmi", max_steps=6, step=3, resumed_from=3)
    callbacks.on_train_begin(resumed)
    assert [step for step, _, _ in store.run_metrics(run_id, "loss")] == [1, 2, 3]
    for step in range(4, 7):
        resumed.step, resumed.parts = step, {"loss": 0.5, "variational": 0.25}
        callbacks.on_step_end(resumed)
    assert store.run_metrics(run_id, "loss") == [
        (1, "loss", 1.0),
        (2, "loss", 1.0),
        (3, "loss", 1.0),
        (4, "loss", 0.5),
        (5, "loss", 0.5),
        (6, "loss", 0.5),
    ]
    assert {name for _, name, _ in store.run_metrics(run_id)} == {"loss", "variational"}  # not epoch, eta_s...
    progress = store.get_run(run_id).progress
    assert (progress["step"], progress["max_steps"], progress["loss"]) == (6, 6, 0.5)  # the display keeps all
    store.close()


def test_a_crashed_run_keeps_its_one_line_error_and_stores_the_full_traceback(tmp_path, monkeypatch):
    """A bug in a job (not a DallmiError) is recorded with the traceback that names where it happened."""
    from dallmi_core.app import jobs

    def score_with_a_bug(job):
        return {}["missing key"]

    monkeypatch.setitem(jobs.EXECUTORS, "score", score_with_a_bug)
    store = open_store(tmp_path)
    run_id = store.enqueue_run(store.create_project("p", LABELS).id, "score", {})
    assert Worker(store, poll=0.05, idle_exit=0).serve() == 1
    run = store.get_run(run_id)
    assert run.status == "failed" and run.error == "KeyError: 'missing key'"
    assert run.traceback.startswith("Traceback") and "in score_with_a_bug" in run.traceback
    store.close()
