"""Every export, the report, the model zip and the candidates use one rule for the 0/1 columns: the
user's saved threshold, else the run's calibration default, else 0.5, each said as such."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from test_exporter import LABELS, project, scored_run, store  # noqa: F401 - shared fixtures

from dallmi_core.app import decisions, exporter
from dallmi_core.modeling.calibration import Calibration, LabelCalibration


def _calibration() -> Calibration:
    return Calibration(
        {
            "billing": LabelCalibration(1.0, 0.0, 0.3, 0.4, 0.3, 0.5, 10, "estimate: EM on the source model, 10 tags"),
            "login": LabelCalibration(1.0, 0.0, 0.8, 0.1, None, None, 2, "default: 2 tag(s) < 3; source share kept"),
        }
    )  # shipping: none, so the fixed 0.5


def test_exports_use_the_calibration_default_unless_the_user_saved_one(store, project, scored_run, tmp_path):  # noqa: F811 - test_exporter's fixtures
    run_id, doc_ids, scores = scored_run
    decisions.save_calibration(store, run_id, _calibration())
    chosen = decisions.decisions(store, run_id)
    assert [(d.threshold, d.source) for d in chosen.values()] == [(0.3, "estimate"), (0.8, "default"), (0.5, "default")]
    assert "no calibration" in chosen["shipping"].basis and chosen["billing"].prior == 0.4
    frame = exporter.predictions_frame(store, run_id)
    np.testing.assert_array_equal(frame[[f"pred_{x}" for x in LABELS]].to_numpy(), scores >= np.array([0.3, 0.8, 0.5]))

    store.set_thresholds(run_id, {"billing": 0.95})  # the user's own wins, the suggestion stays visible
    saved = decisions.decisions(store, run_id)["billing"]
    assert (saved.threshold, saved.source, saved.suggested) == (0.95, "saved", 0.3)
    assert (exporter.predictions_frame(store, run_id)["pred_billing"] == (scores[:, 0] >= 0.95)).all()
    store.clear_threshold(run_id, "billing")
    assert decisions.decisions(store, run_id)["billing"].source == "estimate"


def test_report_and_model_zip_carry_the_thresholds_and_their_source(store, project, scored_run, tmp_path):  # noqa: F811 - test_exporter's fixtures
    run_id = scored_run[0]
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"dallmi_thresholds": {"billing": 0.5}}), encoding="utf-8")
    store.claim_next_run(worker_pid=1)
    store.finish_run(run_id, "done", model_path=str(model))
    decisions.save_calibration(store, run_id, _calibration())
    store.set_thresholds(run_id, {"shipping": 0.7})
    report = exporter.run_report(store, run_id)
    assert report["thresholds"]["billing"] == {
        "threshold": 0.3, "source": "estimate", "basis": "estimate: EM on the source model, 10 tags", "prior": 0.4,
    }  # fmt: skip
    assert report["thresholds"]["shipping"]["source"] == "saved"
    text = exporter.report_markdown(report)
    assert "## Decision thresholds" in text and "| login | 0.8000 | default |" in text
    with zipfile.ZipFile(exporter.export_model(store, run_id, tmp_path / "m.zip")) as archive:
        config = json.loads(archive.read("m/config.json"))
    assert config["dallmi_thresholds"] == {"billing": 0.3, "login": 0.8, "shipping": 0.7}
    assert config["dallmi_calibration"]["billing"]["slope"] == 1.0


def test_decision_table_reports_prior_share_and_gold_tuned(store, project, scored_run):  # noqa: F811 - test_exporter's fixtures
    run_id, doc_ids, scores = scored_run
    decisions.save_calibration(store, run_id, _calibration())
    table = decisions.decision_table(store, run_id).set_index("label")
    target = [doc_ids.index(d) for d in store.document_ids(project.id, "target")]
    assert table.loc["billing", "predicted share"] == pytest.approx(np.mean(scores[target, 0] >= 0.3))
    assert table.loc["billing", "estimated prior"] == 0.4 and table.loc["billing", "prior interval"] == "0.300-0.500"
    assert table.loc["login", "tags"] == 1 and table.loc["login", "from"] == "default"
    assert {"gold share", "gold-tuned"} <= set(table.columns)  # the project has gold eval documents
    assert pd.isna(table.loc["shipping", "gold-tuned"])  # no gold positive: nothing to tune on
    assert table.loc["billing", "gold share"] == pytest.approx(0.5)
