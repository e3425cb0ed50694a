"""The insight views on real adaptation runs (tiny BERT, run in this process as the worker runs them):
MixUp samples logged while training, curves that agree with the run's own metrics and scikit-learn,
saved thresholds reaching the exports, and analyses cached per run."""

from __future__ import annotations

import io
import json
import threading
import zipfile

import numpy as np
import pandas as pd
import pytest
from conftest import LABELS, make_texts
from sklearn.metrics import average_precision_score, precision_recall_curve

import dallmi_core.app.insights as insights
from dallmi_core.app import importer, plots, run_models, shift_view
from dallmi_core.app.exporter import export_model, predictions_frame
from dallmi_core.app.jobs.adapt import run_adapt
from dallmi_core.app.jobs.job import Job
from dallmi_core.app.services import open_services
from dallmi_core.errors import DataError
from dallmi_core.modeling.model import new_classifier, save_classifier

ADAPT = {"max_length": 32, "batch_size": 8, "seed": 3, "positives_per_label": 2, "val_unlabeled": 8, "max_steps": 6}


def _project(services, tmp, backbone, name: str, *, with_eval: bool) -> int:
    import torch

    torch.manual_seed(0)
    save_classifier(new_classifier(backbone, LABELS), tmp / f"{name}-source")
    project = services.create_project(name, LABELS, source_model=str(tmp / f"{name}-source"))
    frames = []
    parts = (("source", 40, 1, 40), ("target", 40, 2, 16), ("eval", 30, 3, 30))
    for domain, n, seed, keep in parts[: 3 if with_eval else 2]:
        texts, y = make_texts(n, seed=seed)
        labels = ["|".join(LABELS[j] for j in np.flatnonzero(row)) if i < keep else "" for i, row in enumerate(y)]
        frames.append(
            pd.DataFrame({"id": [f"{domain}-{i}" for i in range(n)], "text": texts, "labels": labels, "domain": domain})
        )
    pd.concat(frames).to_csv(tmp / f"{name}.csv", index=False)
    importer.import_file(services.store, project.id, tmp / f"{name}.csv")
    return project.id


def _adapt(services, project_id: int) -> int:
    """Queue, claim and execute an adapt run in this process, then finish it as the worker does."""
    store = services.store
    run_id = services.start_run(project_id, "adapt", ADAPT)
    job = Job(store, store.claim_next_run(worker_pid=1), threading.Event())
    model_path, metrics = run_adapt(job)
    store.finish_run(run_id, "done", model_path=model_path, metrics=metrics)
    return run_id


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_backbone):
    tmp = tmp_path_factory.mktemp("insights")
    services = open_services(tmp / "data", autostart_worker=False)
    gold = _project(services, tmp, tiny_backbone, "gold", with_eval=True)
    pu = _project(services, tmp, tiny_backbone, "pu", with_eval=False)
    yield services, _adapt(services, gold), _adapt(services, pu)
    services.close()


def test_training_logs_a_bounded_sample_of_its_mixup_pairs(runs):
    services, run_id, _ = runs
    store = services.store
    rows = store.mixup_samples(run_id)
    run = store.get_run(run_id)
    assert {r["label"] for r in rows} == set(LABELS)
    assert len(rows) <= len(LABELS) * (run.metrics["steps"] + 1)
    tags = store.tags_by_label(run.project_id, domain="target")
    target = set(store.document_ids(run.project_id, "target"))
    for r in rows:
        assert r["positive_doc"] in tags[r["label"]] and r["unlabeled_doc"] in target
        assert 0 <= r["mu"] <= 1 and 0 <= r["prediction"] <= 1
        assert 1 - r["mu"] - 1e-6 <= r["target"] <= 1 + 1e-6  # t = mu * phi(u) + (1 - mu), phi(u) in [0, 1]
    frame = insights.logged_mixup(services.store, run_id, "billing")
    assert list(frame.columns) == ["step", "positive_doc", "unlabeled_doc", "mu", "prediction", "target"]


def test_gold_curves_agree_with_the_run_metrics_and_sklearn(runs):
    services, run_id, _ = runs
    run = services.store.get_run(run_id)
    for label in LABELS:
        curve = insights.label_curve(services.store, run_id, label)
        assert not curve.estimate and curve.positives == run.metrics["after"]["positives"][label]
        assert curve.ap == pytest.approx(run.metrics["after"]["per_label_ap"][label], abs=1e-6)
        assert curve.ap == pytest.approx(average_precision_score(curve.y, curve.scores))
        precision, recall, thresholds = curve.pr()
        p, r, t = precision_recall_curve(curve.y, curve.scores)
        assert np.allclose(precision, p) and np.allclose(recall, r) and np.allclose(thresholds, t)
        best = curve.best_threshold()
        assert curve.at(best)["f1"] >= max(curve.at(x)["f1"] for x in (0.1, 0.3, 0.5, 0.7, 0.9)) - 1e-12


def test_the_pu_estimate_rests_on_the_held_out_tags(runs):
    services, _, run_id = runs
    run = services.store.get_run(run_id)
    overview = insights.ap_overview(services.store, run_id)
    assert overview.estimate
    for label in LABELS:
        curve = insights.label_curve(services.store, run_id, label)
        assert curve.estimate and curve.positives == overview.positives[label] >= 1
        assert curve.ap == pytest.approx(run.metrics["after"]["per_label_ap"][label], abs=1e-6)


def test_overview_lists_before_after_and_other_runs_with_tag_counts(runs):
    services, run_id, _ = runs
    overview = insights.ap_overview(services.store, run_id)
    assert list(dict.fromkeys(overview.table["series"])) == ["before (source model)", "after"]
    assert overview.summary.set_index("series").loc["after", "macro"] == pytest.approx(
        services.store.get_run(run_id).metrics["after"]["map_macro"]
    )
    tags = services.store.tags_by_label(services.store.get_run(run_id).project_id, domain="target")
    assert overview.tags == {label: len(tags[label]) for label in LABELS}
    fig = plots.ap_bars(overview.table, overview.tags)
    assert len(fig.data) == 2 and fig.data[0].x[0] == f"billing ({overview.tags['billing']} tags)"


def test_saved_thresholds_reach_the_exports(runs, tmp_path):
    services, run_id, _ = runs
    store = services.store
    assert insights.save_thresholds(services.store, run_id, {"login": 0.9}) == {"login": 0.9}
    frame = predictions_frame(store, run_id)
    assert (frame["pred_login"] == (frame["score_login"] >= 0.9)).all()
    assert (frame["pred_billing"] == (frame["score_billing"] >= 0.5)).all()
    archive = zipfile.ZipFile(io.BytesIO(export_model(store, run_id, tmp_path / "m.zip").read_bytes()))
    assert json.loads(archive.read("m/config.json"))["dallmi_thresholds"]["login"] == 0.9
    with pytest.raises(DataError, match="between 0 and 1"):
        insights.save_thresholds(services.store, run_id, {"login": 1.5})
    with pytest.raises(DataError, match="no label 'sports'"):
        insights.save_thresholds(services.store, run_id, {"sports": 0.5})
    store.set_thresholds(run_id, {"login": 0.5})


def test_fresh_mixup_pairs_are_scored_by_both_models_and_cached(runs, monkeypatch):
    services, run_id, _ = runs
    frame = insights.fresh_mixup(services.store, run_id, "shipping", n=12, seed=1)
    assert len(frame) == 12
    for name in ("before", "after"):
        assert np.allclose(frame[f"target_{name}"], frame["mu"] * frame[f"phi_u_{name}"] + 1 - frame["mu"])
    monkeypatch.setattr(run_models, "models", lambda *a: pytest.fail("the cached draw loaded a model"))
    pd.testing.assert_frame_equal(insights.fresh_mixup(services.store, run_id, "shipping", n=12, seed=1), frame)


def test_decoded_pairs_follow_mu_and_are_cached(runs, monkeypatch):
    services, run_id, _ = runs
    frame = insights.fresh_mixup(services.store, run_id, "login", n=4, seed=2)
    p, u = int(frame.loc[0, "positive_doc"]), int(frame.loc[0, "unlabeled_doc"])
    at0 = insights.decoded_pair(services.store, run_id, p, u, 0.0)
    assert at0["mixed"].tolist() == at0["positive"].tolist()
    at1 = insights.decoded_pair(services.store, run_id, p, u, 1.0)
    assert at1["mixed"].tolist() == at1["unlabeled"].tolist()
    monkeypatch.setattr(run_models, "models", lambda *a: pytest.fail("the cached decode loaded a model"))
    pd.testing.assert_frame_equal(insights.decoded_pair(services.store, run_id, p, u, 1.0), at1)


def test_shift_analysis_is_computed_once_and_cached(runs, monkeypatch):
    services, run_id, _ = runs
    assert shift_view.cached_shift(services.store, run_id) is None
    result = shift_view.shift_analysis(services.store, run_id)
    meta, arrays = result.meta, result.arrays
    assert (meta["source"], meta["target"], meta["sampled_source"], meta["sampled_target"]) == (40, 40, 40, 40)
    assert arrays["coords_before"].shape == arrays["coords_after"].shape == (80, 2)
    assert arrays["domain"].tolist() == [0] * 40 + [1] * 40 and arrays["labels"].shape == (80, 3)
    for name in ("before", "after"):
        model = meta["models"][name]
        assert 0 <= model["a_distance"] <= 2 and 0 < model["mmd_p"] <= 1
    assert list(result.prior["label"]) == LABELS and "target tagged" in result.prior
    assert result.groups()[:1] == ["source"] and set(result.groups("login")) <= {"login", "not login"}
    monkeypatch.setattr(run_models, "models", lambda *a: pytest.fail("the cached analysis loaded a model"))
    tsne = shift_view.shift_analysis(services.store, run_id, projection="tsne")  # embeddings cached: no model either
    assert tsne.meta["models"] == meta["models"] and tsne.arrays["coords_after"].shape == (80, 2)
    again = shift_view.shift_analysis(services.store, run_id)
    assert again.meta == json.loads(json.dumps(meta)) and np.array_equal(
        again.arrays["coords_after"], arrays["coords_after"]
    )


def test_the_shift_job_reports_its_progress_page_by_page_and_stops_on_a_cancel(runs, monkeypatch):
    """The worker's shift job (what the Domain shift page queues): the stage and documents embedded of the
    total, page by page; a cancel mid-embedding ends it cancelled with nothing cached; queued again, it
    runs to done and leaves the analysis where the page reads it."""
    from dallmi_core.app.worker import Worker

    services, _, run_id = runs
    store = services.store
    project_id = store.get_run(run_id).project_id
    monkeypatch.setattr(shift_view, "SHIFT_PAGE", 16)  # 80 documents: 5 pages per model
    seen, cancel_at, report = [], [("embedding with the adapted model (2 of 2)", 32)], store.update_progress

    def spy(job_id, progress, **kwargs):
        seen.append(dict(progress))
        if cancel_at and (progress["stage"], progress.get("scored")) == cancel_at[0]:
            store.request_cancel(job_id)  # the user's Cancel button, while the worker embeds
        return report(job_id, progress, **kwargs)

    monkeypatch.setattr(store, "update_progress", spy)
    first = services.start_run(project_id, "shift", {"run": run_id})
    assert Worker(store, poll=0.01, once=True).serve() == 1
    assert store.get_run(first).status == "cancelled"
    assert seen[-1] == {"stage": "embedding with the adapted model (2 of 2)", "scored": 32, "total": 80}
    assert shift_view.cached_shift(store, run_id) is None  # nothing half-done is kept
    assert store.load_analysis(run_id, "shift_embeddings", {"limit": 2000, "source": 40, "target": 40}) is None

    cancel_at.clear()
    seen.clear()
    second = services.start_run(project_id, "shift", {"run": run_id})
    assert second != first and Worker(store, poll=0.01, once=True).serve() == 1
    assert store.get_run(second).status == "done", store.get_run(second).error
    stages = list(dict.fromkeys(p["stage"] for p in seen))
    assert stages == [
        "loading the two models",
        "embedding with the source model (1 of 2)",
        "embedding with the adapted model (2 of 2)",
        "measuring the shift under the source model (PCA projection)",
        "measuring the shift under the adapted model (PCA projection)",
        "the terms and the label priors",
    ]
    counts = [p["scored"] for p in seen if p["stage"] == "embedding with the source model (1 of 2)"]
    assert counts == [0, 16, 32, 48, 64, 80] and {p.get("total") for p in seen if "scored" in p} == {80}
    assert shift_view.cached_shift(store, run_id) is not None
