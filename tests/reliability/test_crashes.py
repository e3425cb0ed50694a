"""Crashes: a worker SIGKILLed five times in one training run; an app-like process SIGKILLed while it
writes tags; a full or read-only store.

The worker tests reuse the helpers of tests/integration/test_worker.py (real `python -m
dallmi_core.app.worker` processes, one torch thread, a 2 s heartbeat timeout beating every 0.3 s).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import LABELS, make_texts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from test_worker import (  # noqa: E402
    ADAPT,
    HEARTBEAT_TIMEOUT,
    project_with_source_model,
    start_worker,
    stop_worker,
    wait_for,
    wait_status,
)

from dallmi_core.app import importer  # noqa: E402
from dallmi_core.app.services import open_services  # noqa: E402
from dallmi_core.errors import DallmiError, StoreError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
KILLS = 5
STEPS = 30


def _checkpoint_step(run) -> int:
    import torch

    path = Path(run.checkpoint_dir or "/nonexistent") / "trainer_state.pt"
    return torch.load(path, map_location="cpu", weights_only=True)["step"] if path.exists() else 0


@pytest.mark.slow
def test_a_run_killed_five_times_at_random_points_resumes_and_finishes(tmp_path, tiny_clf):
    from dallmi_core.modeling.model import load_classifier
    from dallmi_core.modeling.scoring import score_texts

    rng = random.Random(20261201)
    services, project_id = project_with_source_model(tmp_path, tiny_clf)
    store = services.store
    run_id = services.start_run(project_id, "adapt", {**ADAPT, "max_steps": STEPS}, checkpoint_every=3)
    plan = ["time"] + ["step"] * (KILLS - 1)  # one kill in start-up, the others mid-training
    rng.shuffle(plan)
    kills = []
    for attempt, trigger in enumerate(plan, start=1):
        proc = start_worker(tmp_path, "--idle-exit", "60")
        try:
            wait_for(
                lambda a=attempt: (r := store.get_run(run_id)).status == "running" and r.attempts == a,
                f"attempt {attempt} to start",
                tmp_path,
            )
            resumed_at = _checkpoint_step(store.get_run(run_id))
            seen: list[int] = []  # every step this attempt reports, polled fast
            if trigger == "time":  # somewhere in start-up: model load, tokenising, the first steps
                deadline = time.monotonic() + rng.uniform(0.0, 1.5)
                while time.monotonic() < deadline:
                    seen.append(store.get_run(run_id).progress.get("step") or 0)
                    time.sleep(0.005)
            else:  # a random number of steps past the resume point (a checkpoint every 3 steps)
                target = resumed_at + rng.randint(4, 6)
                while (step := store.get_run(run_id).progress.get("step") or 0) < target:
                    seen.append(step)
                    assert proc.poll() is None, "the worker died on its own"
                    time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
        finally:
            proc.wait()
        run = store.get_run(run_id)
        assert run.status == "running" and (run.progress.get("step") or 0) < STEPS
        started = [s for s in seen if s]
        assert not started or min(started) > resumed_at, f"attempt {attempt} did not resume from step {resumed_at}"
        # the heartbeat stops: a poll (as every worker's) marks the run interrupted once the timeout has passed
        marked = wait_for(
            lambda: store.mark_stale_runs_interrupted(HEARTBEAT_TIMEOUT),
            "the heartbeat timeout",
            tmp_path,
            timeout=30,
            every=0.05,
        )
        waited = time.monotonic() - killed_at
        assert marked == [run_id] and store.get_run(run_id).status == "interrupted"
        assert waited <= HEARTBEAT_TIMEOUT + 1.0, waited
        kills.append((trigger, resumed_at, run.progress.get("step") or 0, _checkpoint_step(run), round(waited, 2)))

    last = start_worker(tmp_path, "--idle-exit", "60")
    try:
        run = wait_status(services, run_id, "done", "failed")
    finally:
        stop_worker(last)
    print(f"\nkills (trigger, resumed from, step at kill, checkpoint, s until interrupted): {kills}")
    assert run.status == "done" and run.attempts == KILLS + 1, run.error
    # a kill mid-training loses only the steps since the last checkpoint (every 3 steps): progress is kept
    assert all(saved >= resumed + 3 for trigger, resumed, _, saved, _ in kills if trigger == "step")
    losses = Counter(step for step, _, _ in store.run_metrics(run_id, "loss"))
    assert losses == Counter(range(1, STEPS + 1))  # every step once: none lost, none counted twice
    assert run.metrics["steps"] == STEPS
    clf = load_classifier(run.model_path)
    texts, _ = make_texts(8, seed=11)
    scores = np.asarray(score_texts(clf, texts))
    assert clf.label_names == LABELS and scores.shape == (8, len(LABELS)) and np.isfinite(scores).all()
    ids, stored = store.load_predictions(run_id)
    assert len(ids) == len(store.document_ids(project_id, "target")) and stored.shape[1] == len(LABELS)
    assert store.integrity_check() == "ok"
    services.close()


# ---- an app process killed while it writes tags ------------------------------------------------------

TAGGER = textwrap.dedent(
    """
    import sys, threading
    from dallmi_core.app.services import open_services

    services = open_services(sys.argv[1], autostart_worker=False)  # one handle, as ui.session.services() keeps
    project_id = int(sys.argv[2])
    docs = services.store.document_ids(project_id)
    lock = threading.Lock()

    def session(label, order):  # a browser session: Streamlit runs each on its own thread
        for doc in order:
            services.store.tag(project_id, doc, label)
            with lock:  # acknowledged = the call returned, as a page would then show it
                print(f"ack {doc} {label}", flush=True)

    threads = [threading.Thread(target=session, args=("billing", docs)),
               threading.Thread(target=session, args=("login", docs[::-1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("finished", flush=True)
    """
)


def test_tags_acknowledged_before_a_sigkill_of_the_app_process_are_all_kept(tmp_path):
    """Simulates the Streamlit server with a process that tags through the services layer from two
    threads (two browser sessions) and prints a line once each tag call has returned; it is SIGKILLed
    mid-stream three times. Every acknowledged tag must be in the store afterwards."""
    services = open_services(tmp_path, autostart_worker=False)
    project = services.create_project("kill", ["billing", "login"])
    (tmp_path / "docs.csv").write_text("id,text\n" + "".join(f"{i},ticket {i}\n" for i in range(3000)))
    importer.import_file(services.store, project.id, tmp_path / "docs.csv")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    acknowledged: set[tuple[int, str]] = set()
    for kill_after in (50, 400, 1500):
        proc = subprocess.Popen(
            [sys.executable, "-c", TAGGER, str(tmp_path), str(project.id)], stdout=subprocess.PIPE, text=True, env=env
        )
        seen = 0
        for line in proc.stdout:
            if line.startswith("ack"):
                seen += 1
                _, doc, label = line.split()
                acknowledged.add((int(doc), label))
            if seen >= kill_after:
                proc.send_signal(signal.SIGKILL)
                break
        rest = proc.stdout.read()  # acknowledgements already written before the kill count too
        proc.wait()
        assert proc.returncode == -signal.SIGKILL and "finished" not in rest
        for line in rest.splitlines():
            if line.startswith("ack"):
                _, doc, label = line.split()
                acknowledged.add((int(doc), label))
    with open_services(tmp_path, autostart_worker=False) as after:  # a fresh process's view
        stored = {(doc, label) for label, docs in after.store.tags_by_label(project.id).items() for doc in docs}
        assert acknowledged <= stored and len(acknowledged) >= 1500
        assert after.store.integrity_check() == "ok"
    services.close()


# ---- a full or read-only store ---------------------------------------------------------------------------


@pytest.fixture()
def filled(tmp_path):
    services = open_services(tmp_path / "data", autostart_worker=False)
    project = services.create_project("p", LABELS)
    (tmp_path / "small.csv").write_text("id,text\n1,first\n2,second\n")
    importer.import_file(services.store, project.id, tmp_path / "small.csv")
    services.store.tag(project.id, services.store.document_ids(project.id)[0], "billing")
    yield services, project.id
    services.close()


def test_a_full_disk_is_a_clear_error_and_leaves_the_store_as_it_was(filled, tmp_path):
    """Simulates a full disk with SQLite's max_page_count: the database cannot grow past its current
    size, so SQLite fails with SQLITE_FULL exactly as on a full file system."""
    services, project_id = filled
    store = services.store
    big = tmp_path / "big.csv"
    big.write_text("id,text\n" + "".join(f"b{i},{'a long document ' * 20}{i}\n" for i in range(3000)))
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    before = store.table_counts(), store.content_digest()
    store.conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreError, match="full") as info:
        importer.import_file(services.store, project_id, big)
    assert "free" in str(info.value).lower() and str(store.path) in str(info.value)
    assert (store.table_counts(), store.content_digest()) == before and store.integrity_check() == "ok"
    store.conn.execute("PRAGMA max_page_count = 1073741823")  # space again: the same import works
    assert importer.import_file(services.store, project_id, big).imported == 3000 and store.integrity_check() == "ok"


def test_a_read_only_store_is_a_clear_error_and_leaves_it_as_it_was(filled):
    """Simulates a read-only data folder with SQLite's query_only switch: every write fails with
    SQLITE_READONLY, as it does on a read-only mount (file permissions do not stop root, who runs CI)."""
    services, project_id = filled
    store = services.store
    doc = store.document_ids(project_id)[1]
    before = store.table_counts(), store.content_digest()
    store.conn.execute("PRAGMA query_only = ON")
    for write in (
        lambda: services.store.tag(project_id, doc, "login"),
        lambda: services.create_project("other", ["x"]),
        lambda: services.store.undo_last(project_id),
        lambda: services.start_run(project_id, "finetune-source"),
    ):
        with pytest.raises(DallmiError) as info:
            write()
        if isinstance(info.value, StoreError):
            assert "cannot write the store" in str(info.value) and "writable" in str(info.value)
    assert services.store.list_projects()[0].name == "p"  # reads still work
    store.conn.execute("PRAGMA query_only = OFF")
    assert (store.table_counts(), store.content_digest()) == before and store.integrity_check() == "ok"
    assert services.store.tag(project_id, doc, "login")


def test_a_data_folder_that_is_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create the data folder"):
        open_services(blocker, autostart_worker=False)
    with pytest.raises(StoreError, match="cannot create the data folder"):
        open_services(blocker / "sub", autostart_worker=False)
