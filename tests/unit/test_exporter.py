"""Exports: annotations re-import into an equal project, predictions carry per-label thresholds,
reports render, model folders zip, and a failed export leaves no file behind."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pandas as pd
import pytest

from dallmi_core.app import exporter
from dallmi_core.app.exporter import (
    export_annotations,
    export_documents,
    export_model,
    export_predictions,
    export_run_report,
    zip_folder,
)
from dallmi_core.app.importer import import_file
from dallmi_core.data.corpus import Corpus, write_corpus
from dallmi_core.errors import DataError, RunStateError
from dallmi_core.evaluation.metrics import ap_report
from dallmi_core.store import Store

LABELS = ["billing", "login", "shipping"]
SOURCE = Corpus(
    ids=("t1", "t2", "t3", "007", "e1", "e2", "s1"),
    texts=(
        'Commas, "quotes" and a\nline break',
        "Ünïcødé — 日本語 | pipe\ttab",
        "plain target",
        "NA",
        "refund please",
        "12.50",
        "password reset",
    ),
    labels=(("billing",), (), ("shipping", "billing"), (), ("billing", "login"), (), ("login",)),
    domains=("target", "target", "target", "target", "eval", "eval", "source"),
)


@pytest.fixture()
def store(tmp_path):
    (tmp_path / "data").mkdir()
    with Store(tmp_path / "data" / "dallmi.db") as handle:
        yield handle


@pytest.fixture()
def project(store, tmp_path):
    project = store.create_project("Support desk", LABELS)
    write_corpus(SOURCE, tmp_path / "in.csv")
    import_file(store, project.id, tmp_path / "in.csv")
    ids = store.find_ext_ids(project.id, ["t2", "007"])
    store.tag(project.id, ids["t2"], "login", annotator="ann")
    store.tag(project.id, ids["007"], "shipping", annotator="ann")
    store.untag(project.id, ids["007"], "shipping", annotator="ann")
    return project


def state(store, project_id):
    docs = {d.ext_id: (d.text, d.domain, d.gold_labels) for page in store.iter_documents(project_id) for d in page}
    ext = store.ext_ids(store.document_ids(project_id))
    return docs, {label: sorted(ext[i] for i in ids) for label, ids in store.tags_by_label(project_id).items()}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_annotations_round_trip(store, project, tmp_path, fmt):
    path = export_annotations(store, project.id, tmp_path / f"out.{fmt}")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    copy = store.create_project("Copy", LABELS)
    report = import_file(store, copy.id, path)
    assert (report.imported, report.repeated) == (7, 0)
    assert state(store, copy.id) == state(store, project.id)
    assert state(store, project.id)[1] == {"billing": ["t1", "t3"], "login": ["t2"], "shipping": ["t3"]}


def test_annotations_only_labelled_and_default_path(store, project):
    path = export_annotations(store, project.id, only_labelled=True)
    assert path.parent == store.exports_dir and path.name.startswith("Support-desk-annotations-")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["id", "text", "labels", "domain"]
    assert sorted(frame["id"]) == ["e1", "s1", "t1", "t2", "t3"]
    assert dict(zip(frame["id"], frame["labels"], strict=True))["e1"] == "billing|login"
    with pytest.raises(DataError, match="cannot export as 'xlsx'"):
        export_annotations(store, project.id, fmt="xlsx")


@pytest.fixture()
def scored_run(store, project):
    run_id = store.enqueue_run(project.id, "adapt", {"lr": 5e-5, "method": "dallmi"})
    doc_ids = store.document_ids(project.id)
    scores = np.linspace(0, 1, len(doc_ids) * 3, dtype=np.float32).reshape(-1, 3)
    store.save_predictions(run_id, doc_ids, scores)
    return run_id, doc_ids, scores


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_predictions_export_with_per_label_thresholds(store, project, scored_run, tmp_path, fmt):
    run_id, doc_ids, scores = scored_run
    path = export_predictions(store, run_id, tmp_path / f"pred.{fmt}", thresholds={"login": 0.9, "shipping": 0.05})
    frame = pd.read_csv(path, dtype={"id": str}) if fmt == "csv" else pd.read_parquet(path)
    assert list(frame.columns) == ["id"] + [f"score_{x}" for x in LABELS] + [f"pred_{x}" for x in LABELS]
    assert frame["id"].tolist() == [store.ext_ids(doc_ids)[i] for i in doc_ids]
    np.testing.assert_allclose(frame[[f"score_{x}" for x in LABELS]].to_numpy(), scores, rtol=1e-6)
    expected = scores >= np.array([0.5, 0.9, 0.05], dtype=np.float32)
    assert (frame[[f"pred_{x}" for x in LABELS]].to_numpy() == expected).all()


def test_predictions_errors_leave_no_file(store, project, scored_run, tmp_path):
    run_id = scored_run[0]
    with pytest.raises(DataError, match="unknown labels 'sports'"):
        export_predictions(store, run_id, tmp_path / "p.csv", thresholds={"sports": 0.3})
    with pytest.raises(DataError, match="between 0 and 1"):
        export_predictions(store, run_id, tmp_path / "p.csv", thresholds={"login": 3})
    empty = store.enqueue_run(project.id, "adapt", {})
    with pytest.raises(RunStateError, match="no predictions"):
        export_predictions(store, empty, tmp_path / "p.csv")
    assert not any(tmp_path.glob("p.csv*")) and not any(tmp_path.glob(".p.csv*"))


def test_failed_write_keeps_the_old_file_and_no_temp(store, project, tmp_path, monkeypatch):
    path = tmp_path / "keep.csv"
    path.write_text("old", encoding="utf-8")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(DataError, match="No space left"):
        export_annotations(store, project.id, path)
    assert path.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".keep")] == []


def test_run_report_json_and_markdown(store, project, scored_run, tmp_path):
    run_id = scored_run[0]
    store.claim_next_run(worker_pid=1)
    store.update_progress(run_id, {"step": 5, "max_steps": 10, "variational": 0.42}, metrics={"variational": 0.42})
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])  # shipping: no gold positive
    s = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.2], [0.6, 0.7, 0.3], [0.1, 0.1, 0.4]])
    after = ap_report(y, s, LABELS).to_dict()
    store.finish_run(run_id, "done", model_path=str(tmp_path), metrics={"after": after, "steps": 10})
    report = json.loads(export_run_report(store, run_id, tmp_path / "r.json").read_text(encoding="utf-8"))
    assert report["config"] == {"lr": 5e-5, "method": "dallmi"} and report["run"]["status"] == "done"
    assert report["metrics"]["after"]["per_label_ap"]["billing"] == pytest.approx(1.0)
    assert report["last_logged"] == {"variational": 0.42}
    text = export_run_report(store, run_id, fmt="md").read_text(encoding="utf-8")
    assert text.startswith(f"# Run {run_id}: adapt (done)")
    assert "## Per-label AP: after" in text and "| billing | 1.0000 |" in text and "| shipping | n/a |" in text
    assert "| lr | 5e-05 |" in text and "- steps: 10" in text and "- variational (last logged): 0.4200" in text


def test_model_zip(store, project, tmp_path):
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}", encoding="utf-8")
    (model / "sub" / "weights.bin").write_bytes(b"\x00" * 1000)
    run_id = store.enqueue_run(project.id, "adapt", {})
    with pytest.raises(RunStateError, match="no model folder"):
        export_model(store, run_id)
    store.claim_next_run(worker_pid=1)
    store.finish_run(run_id, "done", model_path=str(model))
    path = export_model(store, run_id, tmp_path / "adapted.zip")
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["adapted/config.json", "adapted/sub/weights.bin"]
        assert archive.read("adapted/sub/weights.bin") == b"\x00" * 1000
    assert export_model(store, run_id).parent == store.exports_dir
    with pytest.raises(DataError, match="not a folder"):
        zip_folder(tmp_path / "missing", tmp_path / "x.zip")


def test_default_names_are_safe(store, project):
    assert exporter._default_path(store, "../we/ird  name", "annotations", "csv").parent == store.exports_dir


def test_metadata_and_attached_gold_round_trip_through_every_export(store, tmp_path):
    project = store.create_project("Meta", LABELS)
    target = tmp_path / "tickets.csv"
    target.write_text(
        "id,text,channel,date\nt1,parcel late,app,2024-01-02\nt2,cannot sign in,web,\n"
        "t3,parcel late,email,2024-02-03\n",
        encoding="utf-8",
    )
    import_file(store, project.id, target)
    gold = tmp_path / "gold.csv"
    gold.write_text("id,text,labels,rater\ng1,cannot sign in,login,ann\n", encoding="utf-8")
    assert import_file(store, project.id, gold, domain="eval").attached == 1
    assert store.meta_columns(project.id) == ["channel", "date", "rater"]

    path = export_annotations(store, project.id, tmp_path / "ann.csv")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["id", "text", "labels", "domain", "channel", "date", "rater"]
    assert frame.to_dict("records")[1] == {
        "id": "t2",
        "text": "cannot sign in",
        "labels": "",
        "domain": "target",
        "channel": "web",
        "date": "",
        "rater": "ann",  # merged from the eval row that gave t2 its gold labels
    }
    copy = store.create_project("Copy", LABELS)
    report = import_file(store, copy.id, path)
    assert (report.imported, report.attached, report.repeated) == (3, 1, 0)
    docs = {d.ext_id: (d.text, d.domain, d.gold_labels, d.meta) for d in store.get_documents(copy.id)}
    assert docs == {d.ext_id: (d.text, d.domain, d.gold_labels, d.meta) for d in store.get_documents(project.id)}
    assert store.meta_columns(copy.id) == store.meta_columns(project.id)

    documents = pd.read_csv(
        export_documents(store, project.id, tmp_path / "docs.csv"), dtype=str, keep_default_na=False
    )
    assert list(documents.columns) == ["id", "text", "domain", "gold_labels", "tags", "channel", "date", "rater"]
    assert documents["gold_labels"].tolist() == ["", "login", ""]

    run_id = store.enqueue_run(project.id, "score", {})
    ids = store.document_ids(project.id)
    store.save_predictions(run_id, ids, np.full((len(ids), 3), 0.7, dtype=np.float32))
    predictions = pd.read_csv(
        export_predictions(store, run_id, tmp_path / "pred.csv"), dtype=str, keep_default_na=False
    )
    assert list(predictions.columns[:4]) == ["id", "channel", "date", "rater"]
    assert predictions["channel"].tolist() == ["app", "web", "email"]
