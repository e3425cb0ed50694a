"""Labels added and renamed after a project exists: a rename carries tags, reviewed-not marks, gold
labels, stored prediction columns, thresholds, MixUp samples, metrics and a job's analyses, and the
app's model folders, so the next run still finds an output for every label; a user's own model
folder is never written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dallmi_core.app import decisions, exporter, labels
from dallmi_core.data.corpus import Corpus
from dallmi_core.errors import ConfigError, DataError, RunStateError
from dallmi_core.modeling.calibration import Calibration, LabelCalibration
from dallmi_core.store import open_store

LABELS = ["billing", "login", "shipping"]


@pytest.fixture()
def store(tmp_path):
    with open_store(tmp_path / "data") as handle:
        yield handle


@pytest.fixture()
def filled(store):
    """Tags, a mark, gold, a done run with predictions, a threshold, MixUp rows, metrics and analyses."""
    project = store.create_project("Support", LABELS)
    ids = store.add_documents(
        project.id, Corpus(("t0", "t1", "t2"), ("an invoice", "a parcel", "my password"), ((),) * 3, ("target",) * 3)
    )
    store.add_documents(project.id, Corpus(("e0",), ("eval invoice",), (("billing", "login"),), ("eval",)))
    store.tag(project.id, ids[0], "billing")
    store.mark_not(project.id, ids[1], "billing")
    store.tag(project.id, ids[2], "login")
    run_id = store.enqueue_run(project.id, "adapt", {})
    store.claim_next_run(1)
    docs = store.document_ids(project.id)
    store.save_predictions(run_id, docs, np.tile(np.float32([0.9, 0.1, 0.5]), (len(docs), 1)))
    metrics = {"after": {"per_label_ap": {"billing": 0.7, "login": 0.2}, "unevaluable": ["billing"]}}
    store.finish_run(run_id, "done", metrics=metrics)
    store.set_thresholds(run_id, {"billing": 0.8})
    store.log_mixup_samples(run_id, 1, [{"label": "billing", "positive_doc": ids[0], "unlabeled_doc": ids[1]}])
    item = LabelCalibration(1.0, 0.0, 0.3, 0.4, 0.3, 0.5, 10, "estimate: EM, 10 tags")
    decisions.save_calibration(store, run_id, Calibration({"billing": item, "login": item}))
    store.save_analysis(run_id, "pu_split", {}, {"val_tags": {"billing": [ids[0]]}, "val_unlabeled": [ids[1]]})
    store.save_analysis(run_id, "mixup", {"label": "billing", "n": 32, "seed": 0}, {"rows": 1})  # a cache
    store.save_analysis(run_id, "mixup", {"label": "login", "n": 32, "seed": 0}, {"rows": 1})
    return project, ids, run_id


def test_a_rename_carries_everything_stored_under_the_name(store, filled):
    project, ids, run_id = filled
    renamed = labels.rename_label(store, project.id, "billing", " payments ")
    assert renamed.labels == ("payments", "login", "shipping")  # the order, and so every column, kept
    assert store.tags_for(ids) == {ids[0]: ["payments"], ids[2]: ["login"]}
    assert store.reviews_for(ids) == {ids[1]: ["payments"]}
    assert store.gold_documents(project.id)[0].gold_labels == ("payments", "login")
    run = store.get_run(run_id)
    assert run.prediction_labels == ("payments", "login", "shipping")
    assert run.metrics["after"] == {"per_label_ap": {"payments": 0.7, "login": 0.2}, "unevaluable": ["payments"]}
    assert store.thresholds(run_id) == {"payments": 0.8}
    assert store.mixup_samples(run_id, label="payments")[0]["positive_doc"] == ids[0]
    assert set(decisions.run_calibration(store, run_id).labels) == {"payments", "login"}
    assert decisions.thresholds(store, run_id)["payments"] == 0.8
    assert store.load_analysis(run_id, "pu_split", {})[0]["val_tags"] == {"payments": [ids[0]]}
    assert store.load_analysis(run_id, "mixup", {"label": "billing", "n": 32, "seed": 0}) is None  # cache dropped
    assert store.load_analysis(run_id, "mixup", {"label": "login", "n": 32, "seed": 0}) is not None  # others kept
    frame = exporter.predictions_frame(store, run_id)
    assert {"score_payments", "pred_payments"} <= set(frame.columns) and "score_billing" not in frame.columns
    store.undo_last(project.id)  # the undo log follows: the last action (login's tag) is undone
    assert store.tags_for(ids) == {ids[0]: ["payments"]}
    assert store.integrity_check() == "ok"


def test_a_rename_is_refused_with_a_reason_and_changes_nothing(store, filled):
    project, _, _ = filled
    before = store.content_digest()
    for new, message in (("login", "duplicate label"), ("", "cannot be empty"), ("a|b", "separator")):
        with pytest.raises(DataError, match=message):
            labels.rename_label(store, project.id, "billing", new)
    with pytest.raises(DataError, match="has no label 'sports'"):
        labels.rename_label(store, project.id, "sports", "games")
    store.enqueue_run(project.id, "score", {})
    queued = store.content_digest()
    with pytest.raises(RunStateError, match="wait for it to finish"):
        labels.rename_label(store, project.id, "billing", "payments")
    assert store.content_digest() == queued != before
    assert labels.rename_label(store, project.id, "billing", "billing").labels == tuple(LABELS)  # a no-op


def test_added_labels_are_checked_like_a_new_projects(store, filled):
    project, _, _ = filled
    assert labels.add_labels(store, project.id, ["refund", " warranty "]).labels[-2:] == ("refund", "warranty")
    with pytest.raises(DataError, match="duplicate"):
        labels.add_labels(store, project.id, ["login"])
    with pytest.raises(DataError, match="no label to add"):
        labels.add_labels(store, project.id, [" ", ""])


def test_the_apps_model_folders_follow_and_the_next_run_still_loads(store, filled, tiny_clf):
    from dallmi_core.modeling.model import load_classifier, save_classifier

    project, _, run_id = filled
    source = save_classifier(tiny_clf, store.models_dir / "run-0")  # a source model fine-tuned in the app
    config = json.loads((source / "config.json").read_text())
    config["dallmi_thresholds"] = {"billing": 0.3, "login": 0.6}
    (source / "config.json").write_text(json.dumps(config))
    store.update_project(project.id, source_model=str(source))
    labels.rename_label(store, project.id, "billing", "payments")
    clf = load_classifier(source)
    assert clf.label_names == ["payments", "login", "shipping"]  # what the next score or adapt run checks
    config = json.loads((source / "config.json").read_text())
    assert config["label2id"] == {"payments": 0, "login": 1, "shipping": 2}
    assert config["dallmi_thresholds"] == {"payments": 0.3, "login": 0.6}
    assert not [p for p in source.iterdir() if p.name.startswith(".")]  # no temp file left


def test_a_users_own_source_model_is_never_written(store, filled, tiny_clf, tmp_path):
    from dallmi_core.modeling.model import save_classifier

    project, _, _ = filled
    outside = save_classifier(tiny_clf, tmp_path / "my-model")
    store.update_project(project.id, source_model=str(outside))
    before, digest = (outside / "config.json").read_bytes(), store.content_digest()
    with pytest.raises(ConfigError, match="outside the data folder"):
        labels.rename_label(store, project.id, "billing", "payments")
    assert (outside / "config.json").read_bytes() == before and store.content_digest() == digest
    labels.add_labels(store, project.id, ["refund"])
    assert labels.rename_label(store, project.id, "refund", "refunds").labels[-1] == "refunds"  # not in the model
