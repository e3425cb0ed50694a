"""The use-cases behind the pages: annotation, coverage, candidates, run validation, the worker spawner.

No model is loaded here: predictions are written straight into the store, as a finished run would.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import LABELS, make_texts

from dallmi_core.app import importer
from dallmi_core.app.candidates import candidates, latest_predictions_run
from dallmi_core.app.process import LOG_FILE, worker_running
from dallmi_core.app.services import RECOMMENDED_TAGS, ensure_worker, open_services
from dallmi_core.config import AdaptConfig
from dallmi_core.errors import ConfigError, DataError, RunStateError, StoreError


@pytest.fixture()
def svc(tmp_path):
    services = open_services(tmp_path, autostart_worker=False)
    yield services
    services.close()


@pytest.fixture()
def project(svc, tmp_path):
    """30 untagged target documents (their planted labels kept in `project.gold`) and 6 gold source ones."""
    texts, y = make_texts(30, seed=5)
    src_texts, src_y = make_texts(6, seed=6)
    frame = pd.DataFrame(
        {
            "id": [f"t{i}" for i in range(30)] + [f"s{i}" for i in range(6)],
            "text": texts + src_texts,
            "labels": [""] * 30 + ["|".join(LABELS[j] for j in np.flatnonzero(row)) for row in src_y],
            "domain": ["target"] * 30 + ["source"] * 6,
        }
    )
    frame.to_csv(tmp_path / "docs.csv", index=False)
    created = svc.create_project("helpdesk", LABELS)
    report = importer.import_file(svc.store, created.id, tmp_path / "docs.csv")
    assert report.imported == 36 and report.tags_added == 0
    return SimpleNamespace(id=created.id, gold=y, target=svc.store.document_ids(created.id, "target"))


def _finished_run(store, project_id: int, doc_ids, scores, kind: str = "score", status: str = "done") -> int:
    """A run as the worker leaves it: claimed, predictions saved, finished."""
    run_id = store.enqueue_run(project_id, kind, {})
    assert store.claim_next_run(1).id == run_id
    store.save_predictions(run_id, doc_ids, scores)
    store.finish_run(run_id, status)
    return run_id


def test_tag_untag_undo_and_coverage(svc, project):
    docs = project.target
    assert svc.store.tag(project.id, docs[0], "billing") and not svc.store.tag(project.id, docs[0], "billing")
    assert svc.store.tag_many(project.id, docs[1:4], "login") == 3
    assert svc.store.untag(project.id, docs[0], "billing")
    assert {c.label: c.positives for c in svc.coverage(project.id)} == {"billing": 0, "login": 3, "shipping": 0}
    assert svc.store.undo_last(project.id) == [(docs[0], "billing")]  # the untag is reverted
    assert sorted(svc.store.undo_last(project.id)) == [(d, "login") for d in docs[1:4]]  # one bulk action, one undo
    coverage = svc.coverage(project.id, minimum=1)
    assert [(c.label, c.positives, c.enough) for c in coverage] == [
        ("billing", 1, True),
        ("login", 0, False),
        ("shipping", 0, False),
    ]
    assert svc.coverage(project.id)[0].minimum == RECOMMENDED_TAGS
    assert svc.store.tags_for([docs[0]]) == {docs[0]: ["billing"]}
    with pytest.raises(DataError, match="unknown label"):
        svc.store.tag(project.id, docs[0], "nope")


def test_coverage_counts_only_tags_on_target_documents(svc, project):
    """Adaptation trains on target tags alone: a tagged source document is no training positive."""
    source = svc.store.document_ids(project.id, "source")
    svc.store.tag_many(project.id, source[:3], "billing")
    svc.store.tag(project.id, project.target[0], "billing")
    assert {c.label: c.positives for c in svc.coverage(project.id)} == {"billing": 1, "login": 0, "shipping": 0}


def test_candidates_from_the_latest_predictions_exclude_tagged_documents(svc, project):
    docs, store = project.target, svc.store
    with pytest.raises(RunStateError, match="no predictions yet"):
        candidates(svc.store, project.id, "billing", "likely")
    scores = np.zeros((30, 3), dtype=np.float32)
    scores[:, 0] = np.linspace(0.0, 0.99, 30)  # billing: the later a document, the likelier
    run_id = _finished_run(store, project.id, docs, scores)
    _finished_run(store, project.id, docs, 1 - scores, status="failed")  # a newer failed run is ignored
    svc.store.tag(project.id, docs[29], "billing")
    svc.store.tag(project.id, docs[28], "login")  # tagged with another label: still a billing candidate
    likely = candidates(svc.store, project.id, "billing", "likely", limit=3)
    assert [c.document.id for c in likely] == [docs[28], docs[27], docs[26]]
    assert all(c.run_id == run_id for c in likely) and likely[0].score == pytest.approx(scores[28, 0])
    uncertain = candidates(svc.store, project.id, "billing", "uncertain", limit=2)
    assert [c.document.id for c in uncertain] == [docs[15], docs[14]]  # 0.512 and 0.478: closest to 0.5
    assert latest_predictions_run(svc.store, project.id).id == run_id
    with pytest.raises(ConfigError, match="strategy"):
        candidates(svc.store, project.id, "billing", "random")


def test_similar_candidates_rank_documents_like_the_tagged_ones(svc, project):
    docs, gold = project.target, project.gold
    with pytest.raises(DataError, match="tag one"):
        candidates(svc.store, project.id, "shipping", "similar")
    shipping = [d for d, row in zip(docs, gold, strict=True) if row[2]]
    svc.store.tag_many(project.id, shipping[:3], "shipping")
    similar = candidates(svc.store, project.id, "shipping", "similar", limit=5)  # works before any run
    assert len(similar) == 5 and not {c.document.id for c in similar} & set(shipping[:3])
    hits = sum(gold[docs.index(c.document.id), 2] for c in similar)
    assert hits >= 4, [c.document.text for c in similar]
    assert [c.score for c in similar] == sorted((c.score for c in similar), reverse=True)


def test_start_run_validates_before_queueing(svc, project, tmp_path):
    pid = project.id
    with pytest.raises(ConfigError, match="unknown run kind"):
        svc.start_run(pid, "train-everything")
    with pytest.raises(ConfigError, match="lr must be > 0"):
        svc.start_run(pid, "adapt", {"lr": -1})
    with pytest.raises(ConfigError, match="Unknown adapt settings: learning_rate"):
        svc.start_run(pid, "adapt", {"learning_rate": 1e-5})
    with pytest.raises(DataError, match="no target document is tagged"):
        svc.start_run(pid, "adapt", {"max_steps": 3})
    with pytest.raises(ConfigError, match="no model to score with"):
        svc.start_run(pid, "score")
    with pytest.raises(ConfigError, match="not a model folder"):
        svc.start_run(pid, "score", model=str(tmp_path))
    assert svc.store.list_runs(pid) == []  # nothing was queued

    svc.store.tag(pid, project.target[0], "billing")
    run_id = svc.start_run(pid, "adapt", AdaptConfig(max_steps=3), checkpoint_every=2)
    source_id = svc.start_run(pid, "finetune-source", {"max_steps": 2})
    run = svc.store.get_run(run_id)
    assert run.status == "queued" and run.config["config"] == AdaptConfig(max_steps=3).to_dict()
    assert run.config["checkpoint_every"] == 2 and run.config["source_model"] is None  # pinned: backbone only
    assert svc.store.get_run(source_id).config["config"]["kind"] == "finetune-source"
    assert [r.id for r in svc.store.list_runs(pid)] == [source_id, run_id]
    assert not worker_running(svc.data_dir)  # autostart_worker=False


def test_finetune_source_needs_labelled_source_documents(svc):
    empty = svc.create_project("empty", LABELS)
    with pytest.raises(DataError, match="no labelled source documents"):
        svc.start_run(empty.id, "finetune-source")
    with pytest.raises(DataError, match="no target documents"):
        svc.start_run(empty.id, "adapt")


def test_projects_with_a_source_model_folder(svc, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "id2label": {"0": "a", "1": "b"}}))
    (folder / "model.safetensors").write_bytes(b"")
    project = svc.create_project("from model", [], source_model=str(folder))
    assert project.labels == ("a", "b") and project.source_model == str(folder.resolve())
    with pytest.raises(ConfigError, match="no output for c"):
        svc.create_project("bad labels", ["a", "c"], source_model=str(folder))
    with pytest.raises(ConfigError, match="not both"):
        svc.create_project("both", ["a"], source_model=str(folder), backbone="bert-base-uncased")
    renamed = svc.store.rename_project(project.id, "renamed")
    assert [p.name for p in svc.store.list_projects()] == ["renamed"]
    run_id = _finished_run(svc.store, renamed.id, [], np.zeros((0, 2)))
    (svc.store.models_dir / f"run-{run_id}").mkdir()
    svc.delete_project(renamed.id)
    assert svc.store.list_projects() == [] and not (svc.store.models_dir / f"run-{run_id}").exists()


def test_deleting_a_project_names_the_folders_it_could_not_remove(svc):
    project = svc.create_project("stuck", ["a"])
    run_id = _finished_run(svc.store, project.id, [], np.zeros((0, 1)))
    svc.store.models_dir.mkdir(parents=True, exist_ok=True)
    blocker = svc.store.models_dir / f"run-{run_id}"
    blocker.write_text("not a folder: rmtree cannot remove it")
    with pytest.raises(StoreError, match=f"could not be removed: .*run-{run_id}"):
        svc.delete_project(project.id)
    assert svc.store.list_projects() == []  # the rows are gone all the same


def test_cancel_resume_status_and_results(svc, project, tmp_path):
    store, pid = svc.store, project.id
    queued = store.enqueue_run(pid, "score", {})
    assert svc.store.request_cancel(queued) == "cancelled"
    with pytest.raises(RunStateError, match="no checkpoint"):
        svc.resume_run(queued)
    run_id = store.enqueue_run(pid, "adapt", {})
    store.claim_next_run(1)
    checkpoint = tmp_path / "runs" / str(run_id) / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.pt").write_bytes(b"x")
    store.set_checkpoint(run_id, str(checkpoint))
    for step, loss in ((1, 0.9), (2, 0.8), (1, 0.7)):  # step 1 again: a resumed attempt
        store.update_progress(run_id, {"step": step, "max_steps": 4, "loss": loss}, metrics={"loss": loss})
    status = svc.run_status(run_id)
    assert status.status == "running" and status.can_cancel and 0 <= status.heartbeat_age_s < 60
    assert svc.results(run_id).series["loss"] == [(1, 0.7), (2, 0.8)]
    with pytest.raises(RunStateError, match="is running"):
        svc.resume_run(run_id)
    assert svc.store.request_cancel(run_id) == "running"
    store.finish_run(run_id, "cancelled")
    assert svc.run_status(run_id).can_resume
    svc.resume_run(run_id)
    run = store.get_run(run_id)
    assert run.status == "interrupted" and not run.cancel_requested and run.finished_at is None
    assert store.claim_next_run(1).id == run_id  # resumed before anything queued


def test_ensure_worker_starts_at_most_one(tmp_path, monkeypatch):
    monkeypatch.setenv("DALLMI_WORKER_ARGS", "--idle-exit 60 --poll 0.1")
    procs = [p for p in (ensure_worker(tmp_path), ensure_worker(tmp_path)) if p is not None]  # a race: maybe 2
    assert procs
    try:
        deadline = time.monotonic() + 60
        settled = lambda: worker_running(tmp_path) and sum(p.poll() is None for p in procs) == 1  # noqa: E731
        while not settled() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ensure_worker(tmp_path) is None  # the lock is held: nothing more is started
        survivors = [p for p in procs if p.poll() is None]
        assert len(survivors) == 1 and all(p.returncode == 0 for p in procs if p not in survivors)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=60)
    assert [p.returncode for p in procs] == [0] * len(procs) and not worker_running(tmp_path)
    log = (tmp_path / LOG_FILE).read_text()
    assert log.count("INFO serving") == 1 and log.count("another worker already serves") == len(procs) - 1


def test_services_keep_torch_out_of_the_app_process():
    """Pages import the services; training libraries load only in the worker process."""
    import subprocess
    import sys

    code = "import sys, dallmi_core.app.services\nassert not {'torch', 'transformers'} & set(sys.modules), 'heavy'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_stale_predictions_queue_one_score_run_with_the_newest_model(svc, tmp_path):
    """The ranked candidates refresh by themselves: no predictions, new documents, a newer model or
    REFRESH_AFTER_TAGS new tags queue one score run (never two, never a retry of a failed one)."""
    from dallmi_core.app.candidates import REFRESH_AFTER_TAGS

    def model_folder(name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"id2label": dict(enumerate(LABELS))}))
        (folder / "model.safetensors").write_bytes(b"")
        return folder

    def finish(run_id: int, status: str = "done", model: Path | None = None) -> None:
        assert store.claim_next_run(1).id == run_id
        if status == "done":
            store.save_predictions(run_id, docs, np.full((len(docs), len(LABELS)), 0.5, dtype=np.float32))
        store.finish_run(run_id, status, model_path=str(model or source))

    source = model_folder("source")
    store = svc.store
    project = svc.create_project("fresh", [], source_model=str(source))
    texts, _ = make_texts(30, seed=7)
    pd.DataFrame({"id": [f"d{i}" for i in range(30)], "text": texts}).to_csv(tmp_path / "t.csv", index=False)
    importer.import_file(store, project.id, tmp_path / "t.csv", domain="target")
    docs = store.document_ids(project.id, "target")

    first = svc.refresh_predictions(project.id)
    assert first.queued_now and "no run has scored" in first.reason
    assert store.get_run(first.run_id).config["model"] == str(source.resolve())
    again = svc.refresh_predictions(project.id)
    assert (again.run_id, again.queued_now) == (first.run_id, False)  # one refresh at a time
    finish(first.run_id)
    assert svc.refresh_predictions(project.id) is None  # current

    store.tag_many(project.id, docs[: REFRESH_AFTER_TAGS - 1], "billing")
    assert svc.refresh_predictions(project.id) is None  # a few tags: not worth a pass over the corpus
    store.tag(project.id, docs[REFRESH_AFTER_TAGS], "billing")
    by_tags = svc.refresh_predictions(project.id)
    assert by_tags.queued_now and f"{REFRESH_AFTER_TAGS} tags were made" in by_tags.reason
    finish(by_tags.run_id, "failed")
    assert svc.refresh_predictions(project.id) is None  # no retry loop after a failure

    adapted = model_folder("adapted")
    finish(store.enqueue_run(project.id, "adapt", {}), model=adapted)  # an adaptation scores everything
    assert svc.refresh_predictions(project.id) is None
    pd.DataFrame({"id": ["new"], "text": ["a parcel that never came"]}).to_csv(tmp_path / "n.csv", index=False)
    importer.import_file(store, project.id, tmp_path / "n.csv", domain="target")
    by_import = svc.refresh_predictions(project.id)
    assert "1 documents were imported" in by_import.reason
    assert store.get_run(by_import.run_id).config["model"] == str(adapted)  # the newest model
