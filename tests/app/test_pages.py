"""AppTest tests of the Streamlit app: every page runs, and the main interactions reach the store.

The app runs on a seeded store in a tmp data dir (DALLMI_DATA_DIR) with no worker process
(DALLMI_NO_WORKER=1) and no demo project (DALLMI_NO_DEMO=1); runs are queued, or written through
the store API as a worker would leave them. Nothing trains, and no model is loaded.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import LABELS, make_texts
from streamlit.testing.v1 import AppTest

import dallmi_core.app.system as system_module
from dallmi_core.app import exporter, importer
from dallmi_core.app.exporter import predictions_frame
from dallmi_core.app.services import open_services
from dallmi_core.app.system import SystemInfo
from dallmi_core.errors import DataError, RunStateError

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "app.py"
PAGES = {
    "Projects": "pages/projects.py",
    "Data": "pages/data.py",
    "Annotate": "pages/annotate.py",
    "Adapt": "pages/adapt.py",
    "Export": "pages/export.py",
    "Per-label AP": "pages/per_label_ap.py",
    "MixUp samples": "pages/mixup_samples.py",
    "Domain shift": "pages/domain_shift.py",
}
TIMEOUT = 60  # seconds per script run: the first one imports plotly and pandas on a busy 2-core machine


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """A tmp data dir, no worker, no demo, and a fixed device probe (no torch subprocess)."""
    data = tmp_path / "data"
    monkeypatch.setenv("DALLMI_DATA_DIR", str(data))
    monkeypatch.setenv("DALLMI_NO_WORKER", "1")
    monkeypatch.setenv("DALLMI_NO_DEMO", "1")
    monkeypatch.syspath_prepend(str(REPO))  # `import ui` in tests that use it directly
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # uploads are written under the temp dir
    monkeypatch.setattr(system_module, "_system_info", [SystemInfo(2, (), False, "test")])
    svc = open_services(data, autostart_worker=False)
    yield SimpleNamespace(svc=svc, data=data, tmp=tmp_path)
    svc.close()


@pytest.fixture()
def seeded(env, tiny_backbone):
    """Project 'helpdesk' on the tiny backbone: 30 untagged target documents, 6 gold source ones."""
    texts, _ = make_texts(30, seed=5)
    src_texts, src_y = make_texts(6, seed=6)
    frame = pd.DataFrame(
        {
            "id": [f"t{i}" for i in range(30)] + [f"s{i}" for i in range(6)],
            "text": texts + src_texts,
            "labels": [""] * 30 + ["|".join(LABELS[j] for j in np.flatnonzero(row)) for row in src_y],
            "domain": ["target"] * 30 + ["source"] * 6,
        }
    )
    frame.to_csv(env.tmp / "docs.csv", index=False)
    project = env.svc.create_project("helpdesk", LABELS, backbone=tiny_backbone)
    importer.import_file(env.svc.store, project.id, env.tmp / "docs.csv")
    env.project = project
    env.target = env.svc.store.document_ids(project.id, "target")
    return env


def _app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    if page is not None:
        at.switch_page(PAGES[page]).run()
        assert not at.exception, at.exception
    return at


def _finished_run(store, project_id: int, kind: str, scores=None, doc_ids=None, *, model_path=None, metrics=None):
    """A run as the worker leaves it: claimed, predictions saved, finished as done."""
    run_id = store.enqueue_run(project_id, kind, {})
    assert store.claim_next_run(1).id == run_id
    if scores is not None:
        store.save_predictions(run_id, doc_ids, scores)
    store.finish_run(run_id, "done", model_path=model_path, metrics=metrics)
    return run_id


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "error", "success") for e in at.get(kind)]
    return "\n".join(str(p) for p in parts)


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_runs_on_a_seeded_project(seeded, page):
    at = _app(page)
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value == page
    picker = next(box for box in at.selectbox if box.label == "Project")  # the sidebar's project picker
    assert picker.value == seeded.project.id and picker.options == ["helpdesk"]


@pytest.mark.parametrize("page", ["Data", "Annotate", "Adapt", "Export"])
def test_pages_without_a_project_point_to_the_projects_page(env, page):
    at = _app(page)
    assert "Create or pick a project first" in at.info[0].value


INSIGHT_PAGES = ("Per-label AP", "MixUp samples", "Domain shift")


@pytest.fixture()
def adapted(seeded, tiny_backbone):
    """A finished adaptation run as the worker leaves it without gold labels: a model folder (the tiny
    BERT), predictions, PU-estimated AP before/after with its held-out split, and logged MixUp pairs."""
    import torch

    from dallmi_core.modeling.model import new_classifier, save_classifier

    svc, docs = seeded.svc, seeded.target
    svc.store.tag_many(seeded.project.id, docs[:4], "billing")
    svc.store.tag_many(seeded.project.id, docs[4:7], "login")
    torch.manual_seed(0)
    model = save_classifier(new_classifier(tiny_backbone, LABELS), svc.store.models_dir / "run-adapted")
    scores = np.random.default_rng(1).random((30, 3)).astype(np.float32)
    scores[[1, 5], [0, 1]] = 0.95  # the held-out positives rank first
    metrics = {
        "estimate": True,
        "steps": 6,
        "tags": {"billing": 4, "login": 3, "shipping": 0},
        "before": {"per_label_ap": {"billing": 0.25, "login": 0.2, "shipping": None}, "map_macro": 0.225},
        "after": {"per_label_ap": {"billing": 1.0, "login": 1.0, "shipping": None}, "map_macro": 1.0},
    }
    run_id = _finished_run(svc.store, seeded.project.id, "adapt", scores, docs, model_path=model, metrics=metrics)
    svc.store.save_analysis(
        run_id, "pu_split", {}, {"val_tags": {"billing": [docs[1]], "login": [docs[5]]}, "val_unlabeled": docs[20:]}
    )
    svc.store.log_mixup_samples(
        run_id,
        3,
        [
            {
                "label": "billing",
                "positive_doc": docs[0],
                "unlabeled_doc": docs[12],
                "mu": 0.2,
                "prediction": 0.6,
                "target": 0.9,
            },
            {
                "label": "billing",
                "positive_doc": docs[2],
                "unlabeled_doc": docs[13],
                "mu": 0.7,
                "prediction": 0.4,
                "target": 0.5,
            },
        ],
    )
    seeded.run_id = run_id
    return seeded


@pytest.mark.parametrize("page", INSIGHT_PAGES)
def test_insight_pages_without_a_finished_run_point_to_the_adapt_page(seeded, page):
    at = _app(page)
    assert "No finished adaptation run yet" in at.info[0].value


def test_per_label_ap_page_marks_the_estimate_and_saves_a_threshold_for_export(adapted):
    at = _app("Per-label AP")
    assert not at.exception and not at.error
    assert "Estimate, not measured AP" in at.warning[0].value and "2 held-out tagged positives" in at.warning[0].value
    macro = next(m for m in at.metric if m.label == "Macro mAP (estimate)")
    assert macro.value == "1.000" and "+0.775" in macro.proto.delta
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    bars = charts[0]["data"]
    assert [t["name"] for t in bars] == ["before (backbone, untrained head)", "after"]  # no source model
    assert bars[0]["x"] == ["billing (4 tags)", "login (3 tags)", "shipping (0 tags)"]
    assert "estimate from 1 held-out positives" in charts[1]["layout"]["title"]["text"]
    table = at.dataframe[0].value
    assert table.loc[0, "held-out positives (estimate rests on)"] == 1 and table.loc[0, "change"] == pytest.approx(0.75)

    at.slider(key=f"threshold-{adapted.run_id}-billing").set_value(0.9).run()
    assert {m.label: m.value for m in at.metric}["Recall"] == "1.000"  # the held-out positive scores 0.95
    at.button(key="save_threshold").click().run()
    assert not at.exception
    assert adapted.svc.store.thresholds(adapted.run_id) == {"billing": 0.9}
    assert "Saved threshold 0.900 for billing" in at.success[0].value
    frame = predictions_frame(adapted.svc.store, adapted.run_id)
    assert frame["pred_billing"].sum() == (frame["score_billing"] >= 0.9).sum()


def _gold_run(seeded, tiny_backbone, name: str) -> int:
    """A finished adapt run scored on 12 gold eval documents with a perfect ranking (0.9 vs 0.1)."""
    svc = seeded.svc
    eval_texts, eval_y = make_texts(12, seed=9)
    labels = ["|".join(LABELS[j] for j in np.flatnonzero(row)) for row in eval_y]
    pd.DataFrame({"id": [f"e{i}" for i in range(12)], "text": eval_texts, "labels": labels, "domain": "eval"}).to_csv(
        seeded.tmp / "eval.csv", index=False
    )
    importer.import_file(svc.store, seeded.project.id, seeded.tmp / "eval.csv")
    docs = svc.store.document_ids(seeded.project.id, "eval")
    metrics = {"estimate": False, "after": {"per_label_ap": dict.fromkeys(LABELS, 1.0), "map_macro": 1.0}}
    model = shutil.copytree(tiny_backbone, svc.store.models_dir / name)
    return _finished_run(svc.store, seeded.project.id, "adapt", eval_y * 0.8 + 0.1, docs, model_path=model,
                         metrics=metrics)  # fmt: skip


def test_per_label_ap_page_with_gold_labels_shows_true_ap(seeded, tiny_backbone):
    _gold_run(seeded, tiny_backbone, "run-gold")
    at = _app("Per-label AP")
    assert not at.exception and not at.error and not at.warning
    assert "Measured on the gold-labelled eval documents" in _texts(at)
    title = json.loads(at.get("plotly_chart")[1].proto.spec)["layout"]["title"]["text"]
    assert title == "billing: AP 1.000"
    assert {m.label: m.value for m in at.metric}["F1"] == "1.000"  # at the best-F1 threshold


def test_per_label_ap_page_shows_priors_thresholds_and_offers_the_gold_tuned_one(seeded, tiny_backbone):
    from dallmi_core.app.decisions import save_calibration
    from dallmi_core.modeling.calibration import Calibration, LabelCalibration

    svc = seeded.svc
    run_id = _gold_run(seeded, tiny_backbone, "run-cal")  # a perfect ranking: any threshold in (0.1, 0.9] is best
    items = {name: LabelCalibration(1.0, 0.0, 0.95, 0.2, 0.1, 0.3, 10, "estimate: EM, 10 tags") for name in LABELS}
    items["login"] = LabelCalibration(1.0, 0.0, 0.5, 0.25, None, None, 1, "default: 1 tag(s) < 3; source share kept")
    save_calibration(svc.store, run_id, Calibration(items))
    at = _app("Per-label AP")
    assert not at.exception and not at.error
    assert "Too few tags to estimate the share of login" in at.warning[0].value
    table = next(d.value for d in at.dataframe if "estimated prior" in d.value.columns).set_index("label")
    assert table.loc["billing", "threshold"] == 0.95 and table.loc["billing", "from"] == "estimate"
    assert table.loc["billing", "prior interval"] == "0.100-0.300" and table.loc["login", "from"] == "default"
    assert table.loc["billing", "gold-tuned"] == pytest.approx(0.9)
    assert at.slider(key=f"threshold-{run_id}-billing").value == pytest.approx(0.95)  # the one in use
    at.button(key="gold_threshold").click().run()
    assert not at.exception and svc.store.thresholds(run_id) == {"billing": pytest.approx(0.9)}
    at.button(key="clear_threshold").click().run()
    assert not at.exception and svc.store.thresholds(run_id) == {}


def test_mixup_page_shows_logged_and_fresh_pairs_with_the_decoded_mix(adapted):
    at = _app("MixUp samples")
    assert not at.exception and not at.error
    assert at.selectbox(key="mixup_label").value == "billing"
    assert "2 pairs logged at 1 training steps" in _texts(at)
    scatter = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    assert scatter[1]["x"] == [0.9, 0.5] and scatter[1]["y"] == [0.6, 0.4]
    texts = [t.value for t in at.text]
    assert any(t.startswith("[CLS]") for t in texts)  # the decoded mix
    docs = adapted.svc.store.get_documents(adapted.project.id, ids=[adapted.target[0], adapted.target[12]])
    assert docs[0].text in texts and docs[1].text in texts  # both documents, side by side, as plain text
    pairs = at.dataframe[0].value  # documents named by their external ids, not store row ids
    assert list(pairs.columns[:3]) == ["step", "tagged positive p", "unlabeled u"]
    assert pairs["tagged positive p"].iloc[0].startswith(f"{docs[0].ext_id}: ")

    at.radio(key="mixup_source").set_value("fresh draw").run()
    assert not at.exception and not at.error
    names = [t["name"] for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]]
    assert names == ["perfect", "backbone, untrained head", "adapted model"]  # the project has no source model
    assert len(at.dataframe[0].value) == 64


def _serve_one_run(store) -> None:
    """What the worker process does with the next queued run, here in the test process."""
    from dallmi_core.app.worker import Worker

    assert Worker(store, poll=0.01, once=True).serve() == 1


def test_domain_shift_page_queues_a_worker_job_shows_its_progress_then_the_cache(adapted, monkeypatch):
    from dallmi_core.app import run_models

    store = adapted.svc.store
    at = _app("Domain shift")
    assert "at most 2,000 of each" in at.info[0].value
    loaded = []
    with monkeypatch.context() as patch:  # the page process must load no model
        patch.setattr(run_models, "models", lambda *a: loaded.append(a))
        at.button(key="compute_shift").click().run()
    assert not at.exception and not at.error and not loaded  # the page process embeds nothing
    (job,) = [r for r in store.list_runs(adapted.project.id) if r.kind == "shift"]
    assert job.status == "queued" and job.config["analysis"] == {
        "run": adapted.run_id,
        "projection": "pca",
        "limit": 2000,
    }
    assert "The worker computes the analysis in the background" in _texts(at)
    # the live progress of the Adapt page's runs
    assert f"**Run {job.id}** · shift · :material/hourglass_top: queued" in _texts(at)
    assert not [b for b in at.button if b.key == "compute_shift"] and not at.metric
    assert adapted.svc.start_run(adapted.project.id, "shift", {"run": adapted.run_id}) == job.id  # not twice

    _serve_one_run(store)
    done = store.get_run(job.id)
    assert done.status == "done", done.error
    assert done.metrics == {
        "analysed_run": adapted.run_id,
        "projection": "pca",
        "embedded": {"source": 6, "target": 30},
    }
    at.run()
    assert not at.exception and not at.error
    labels = [m.label for m in at.metric]
    assert labels.count("A-distance") == 2 and labels.count("MMD p-value") == 2, _texts(at)
    assert "6 of 6 source and 30 of 30 target documents embedded." in _texts(at)
    charts = {c.proto.id: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    assert len(charts) == 4  # two projections, the terms, the label prevalence
    projection = next(iter(charts.values()))
    assert [t["name"] for t in projection["data"]] == ["source", "target"]
    at.selectbox(key="shift_colour").set_value("login").run()
    assert not at.exception
    assert store.load_analysis(adapted.run_id, "shift", {"projection": "pca", "limit": 2000})

    again = _app("Domain shift")  # a new session: straight from the cache, no button
    assert not again.exception and not [b for b in again.button if b.key == "compute_shift"]
    assert [m.label for m in again.metric].count("A-distance") == 2


def test_a_queued_shift_analysis_can_be_cancelled_and_computed_again(adapted):
    at = _app("Domain shift")
    at.button(key="compute_shift").click().run()
    (job,) = [r for r in adapted.svc.store.list_runs(adapted.project.id) if r.kind == "shift"]
    at.button(key=f"cancel-{job.id}").click().run()
    assert not at.exception and adapted.svc.store.get_run(job.id).status == "cancelled"
    at.run()
    assert f"The last computation (run {job.id}) was cancelled." in _texts(at)
    assert [b for b in at.button if b.key == "compute_shift"]  # offered again


def test_the_domain_shift_page_says_what_a_project_without_source_documents_lacks(adapted, tiny_backbone):
    """A pure-PU project (target text only) has nothing to compare: no button, what is missing instead."""
    svc = adapted.svc
    texts, _ = make_texts(12, seed=8)
    pd.DataFrame({"id": [f"t{i}" for i in range(12)], "text": texts}).to_csv(adapted.tmp / "only.csv", index=False)
    project = svc.create_project("target only", LABELS, backbone=tiny_backbone)
    importer.import_file(svc.store, project.id, adapted.tmp / "only.csv")
    ids = svc.store.document_ids(project.id, "target")
    model = svc.store.get_run(adapted.run_id).model_path
    scores = np.full((12, 3), 0.5, dtype=np.float32)
    run_id = _finished_run(svc.store, project.id, "adapt", scores, ids, model_path=model, metrics={"estimate": True})
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params["project"] = str(project.id)
    at.run()
    at.switch_page(PAGES["Domain shift"]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = [w.value for w in at.warning]
    assert any("this project has no source documents" in w and "Data page" in w for w in shown), shown
    assert not [b for b in at.button if b.key == "compute_shift"]
    with pytest.raises(DataError, match="no source documents"):
        svc.start_run(project.id, "shift", {"run": run_id})
    assert not [r for r in svc.store.list_runs(project.id) if r.kind == "shift"]


def test_domain_shift_page_names_the_backbone_and_says_when_the_a_distance_saturates(adapted):
    """From a cached analysis where both models separate the domains: the A-distance (2.00 twice) cannot
    rank them, the page says so and shows the MMD², which still differs."""
    models = {
        key: {"accuracy": 1.0, "a_distance": 2.0, "mmd2": mmd2, "mmd_p": 0.005, "bandwidth": 1.0, "permutations": 200}
        for key, mmd2 in (("before", 0.412), ("after", 0.257))
    }
    meta = {"source": 2, "target": 2, "sampled_source": 2, "sampled_target": 2, "projection": "pca"}
    meta |= {"source_model": False, "labels": LABELS, "models": models, "prior": [{"label": "billing", "x": 0.5}]}
    meta["terms"] = [{"term": "lol", "z": 3.0, "log_odds": 1.0, "target_count": 9, "source_count": 0}]
    arrays = {"domain": np.array([0, 0, 1, 1], dtype=np.int8), "labels": np.zeros((4, 3), dtype=bool)}
    arrays |= {"coords_before": np.zeros((4, 2), np.float32), "coords_after": np.ones((4, 2), np.float32)}
    store = adapted.svc.store
    store.save_analysis(adapted.run_id, "shift", {"projection": "pca", "limit": 2000}, meta, arrays)
    at = _app("Domain shift")
    assert not at.exception and not at.error
    assert "**Backbone, untrained head**" in _texts(at) and "**Adapted model**" in _texts(at)
    shown = [(m.label, m.value) for m in at.metric]
    assert shown.count(("A-distance", "2.00")) == 2 and ("MMD²", "0.412") in shown and ("MMD²", "0.257") in shown
    assert "cannot rank them" in at.info[0].value
    models["after"]["a_distance"] = 1.2  # the adapted model brought the domains closer: no note
    store.save_analysis(adapted.run_id, "shift", {"projection": "pca", "limit": 2000}, meta, arrays)
    again = _app("Domain shift")
    assert not again.exception and not [i for i in again.info if "cannot rank" in i.value]


def test_create_rename_and_delete_a_project(env, tiny_backbone):
    at = _app("Projects")
    at.text_input(key="new_name").input("tickets")
    at.text_area(key="new_labels").input("billing, login,\nshipping")
    at.text_input(key="new_backbone").input(tiny_backbone)
    at.button(key="create_project").click().run()
    assert not at.exception
    project = env.svc.store.find_project("tickets")
    assert project.labels == ("billing", "login", "shipping")
    assert project.settings["backbone"] == tiny_backbone
    assert "Created project 'tickets'" in at.success[0].value

    # a user error is a message, not an exception: the name is taken
    at.text_input(key="new_name").input("tickets")
    at.button(key="create_project").click().run()
    assert not at.exception and "already exists" in at.error[0].value

    at.text_input(key=f"rename-{project.id}").input("tickets 2024").run()  # the button enables on the rerun
    at.button(key="rename_project").click().run()
    assert env.svc.store.get_project(project.id).name == "tickets 2024"

    at.button(key="delete_project").click().run()
    assert "cannot be undone" in at.warning[0].value
    at.button(key="delete_confirm").click().run()
    assert not at.exception
    assert env.svc.store.list_projects() == []


def test_accept_skip_and_undo_in_the_quick_pass(seeded):
    svc, docs = seeded.svc, seeded.target
    scores = np.zeros((30, 3), dtype=np.float32)
    scores[:, 0] = np.linspace(0.0, 0.99, 30)  # billing: the later a document, the likelier
    _finished_run(svc.store, seeded.project.id, "score", scores, docs)
    at = _app("Annotate")
    assert at.selectbox(key="label_picker").value == "billing"
    assert "0/8 tagged" in at.selectbox(key="label_picker").format_func("billing")
    assert at.button(key="accept").proto.shortcut.lower() == "a"
    assert "t29" in _texts(at) and "model confidence: 0.990" in at.get("progress")[-1].proto.text

    at.button(key="accept").click().run()
    assert not at.exception
    assert {c.label: c.positives for c in svc.coverage(seeded.project.id)}["billing"] == 1
    assert svc.store.tags_for([docs[29]]) == {docs[29]: ["billing"]}
    assert "t28" in _texts(at)  # the next candidate

    at.button(key="skip").click().run()
    assert "t27" in _texts(at) and svc.store.tags_for([docs[28]]) == {}

    at.button(key="undo").click().run()
    assert not at.exception and svc.store.tags_for([docs[29]]) == {}
    assert at.info[0].value == "Undid 1 tag change(s) (billing)."


def test_quick_pass_without_predictions_explains_what_to_do(seeded):
    at = _app("Annotate")
    assert not at.exception and not at.error
    assert "no predictions yet" in at.info[-1].value


def test_quick_pass_queues_a_score_run_when_a_model_exists_but_no_predictions(seeded, tmp_path):
    """Candidates refresh without a manual run: the page queues one score run and says so."""
    folder = tmp_path / "source-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"id2label": dict(enumerate(LABELS))}))
    (folder / "model.safetensors").write_bytes(b"")
    store = seeded.svc.store
    store.update_project(seeded.project.id, source_model=str(folder))
    at = _app("Annotate")
    assert not at.exception and not at.error
    queued = [r for r in store.list_runs(seeded.project.id) if r.kind == "score"]
    assert len(queued) == 1 and queued[0].config["model"] == str(folder)
    assert f"Run {queued[0].id} re-scores the documents (no run has scored the documents yet)" in _texts(at)
    at.run()  # a rerun while it is queued queues no second one
    assert [r.id for r in store.list_runs(seeded.project.id) if r.kind == "score"] == [queued[0].id]


def test_bulk_tagging_from_a_search(seeded):
    svc = seeded.svc
    at = _app("Annotate")
    at.selectbox(key="label_picker").select("shipping").run()
    at.text_input(key="query").input("parcel").run()
    hits = svc.store.search(seeded.project.id, "parcel", domain="target", limit=200)
    assert hits
    editor = at.data_editor[0]
    assert list(editor.value["id"]) == [d.ext_id for d in hits]
    at.session_state[editor.key] = {"edited_rows": {0: {"tag": True}}, "added_rows": [], "deleted_rows": []}
    at.run()
    at.button(key="save_ticks").click().run()
    assert not at.exception
    assert svc.store.tags_for([hits[0].id]) == {hits[0].id: ["shipping"]}
    at.button(key="tag_all").click().run()
    assert {c.label: c.positives for c in svc.coverage(seeded.project.id)}["shipping"] == len(hits)


def test_data_page_rejects_a_csv_without_a_text_column_with_a_message(seeded):
    at = _app("Data")
    at.file_uploader(key="upload-target").upload("notes.csv", b"id,label\n1,a\n2,b\n", "text/csv").run()
    assert not at.exception
    assert any("notes.csv: has no 'text' column" in e.value for e in at.error)
    assert not [b for b in at.button if b.key == "import"]  # nothing to import until a text column is chosen


def test_data_page_queues_source_finetuning_with_the_default_epochs(seeded):
    from dallmi_core.config import SourceConfig

    at = _app("Data")
    assert at.number_input(key="source_epochs").value == SourceConfig.default_epochs
    at.button(key="finetune").click().run()
    assert not at.exception
    [run] = seeded.svc.store.list_runs(seeded.project.id)
    assert run.kind == "finetune-source" and run.config["config"]["epochs"] == SourceConfig.default_epochs


def test_data_page_previews_and_imports_a_file(seeded):
    at = _app("Data")
    rows = "body,tags\nmy parcel is late again,shipping\nreset my password please,\n"
    at.file_uploader(key="upload-target").upload("new.csv", rows.encode(), "text/csv").run()
    assert not at.exception and not at.error
    assert "encoding: utf-8" in _texts(at)
    assert at.dataframe[0].value.shape == (2, 2)
    at.button(key="import").click().run()
    assert not at.exception, at.exception
    assert "Read 2 rows: 2 new documents (2 target). Tags added: 1." in at.success[0].value
    assert seeded.svc.store.count_documents(seeded.project.id)["target"] == 32
    assert at.metric[0].value == "32"  # the counts shown are the ones after the import


def test_starting_a_run_from_the_adapt_page_queues_it(seeded):
    svc = seeded.svc
    svc.store.tag_many(seeded.project.id, seeded.target[:3], "billing")
    at = _app("Adapt")
    assert "no GPU: CPU only, 2 cores" in _texts(at)
    at.number_input(key="Defaults-max_steps").set_value(5)
    at.button(key="start_adapt").click().run()
    assert not at.exception, at.exception
    runs = svc.store.list_runs(seeded.project.id)
    assert [(r.kind, r.status) for r in runs] == [("adapt", "queued")]
    config = runs[0].config
    assert config["config"]["max_steps"] == 5 and config["config"]["epochs"] is None
    assert config["backbone"] == svc.store.get_project(seeded.project.id).settings["backbone"]
    assert f"Run {runs[0].id} is queued" in at.success[0].value
    assert any("No worker process" in w.value for w in at.warning)  # DALLMI_NO_WORKER: said, not hidden


def test_adapt_form_errors_are_messages(seeded):
    seeded.svc.store.tag(seeded.project.id, seeded.target[0], "billing")
    at = _app("Adapt")
    at.number_input(key="Defaults-max_steps").set_value(5)
    at.number_input(key="Defaults-epochs").set_value(2.0)
    at.button(key="start_adapt").click().run()
    assert not at.exception
    assert "either epochs or max_steps" in at.error[0].value
    assert seeded.svc.store.list_runs(seeded.project.id) == []


def test_progress_renders_for_a_run_with_stored_progress(seeded):
    store = seeded.svc.store
    run_id = store.enqueue_run(seeded.project.id, "adapt", {})
    store.claim_next_run(1)
    for step in (1, 2, 3):
        progress = {
            "stage": "dallmi",
            "step": step,
            "max_steps": 10,
            "epoch": step / 8,
            "eta_s": 70.0,
            "loss": 1.0 / step,
            "variational": 0.8 / step,
            "mixup": 0.2 / step,
        }
        store.update_progress(run_id, progress, metrics={"loss": 1.0 / step, "variational": 0.8 / step})
    store.log_metrics(run_id, 0, {"val_variational": 2.0, "val_pu_ap": 0.4})
    at = _app("Adapt")
    bar = at.get("progress")[-1]
    assert bar.proto.value == 30 and "step 3 of 10" in bar.proto.text
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Epoch"] == "0.38" and metrics["ETA"] == "1 min 10 s" and metrics["Loss"] == "0.3333"
    chart = at.get("plotly_chart")
    assert len(chart) == 1
    names = {trace["name"] for trace in __import__("json").loads(chart[0].proto.spec)["data"]}
    assert names == {"loss", "variational", "val_variational", "val_pu_ap"}
    assert at.button(key=f"cancel-{run_id}")
    at.button(key=f"cancel-{run_id}").click().run()
    assert not at.exception
    assert store.get_run(run_id).cancel_requested


def test_the_source_head_warm_up_is_named_in_words(seeded):
    store = seeded.svc.store
    run_id = store.enqueue_run(seeded.project.id, "finetune-source", {})
    store.claim_next_run(1)
    store.update_progress(run_id, {"stage": "probe-head", "step": 5, "max_steps": 20, "probe_loss": 0.4})
    at = _app("Adapt")
    bar = at.get("progress")[-1]
    assert bar.proto.text == "training the new head on frozen features: step 5 of 20"


def test_export_offers_downloads_for_a_done_run(seeded, tiny_backbone):
    svc = seeded.svc
    svc.store.tag(seeded.project.id, seeded.target[0], "login")
    model = svc.store.models_dir / "run-x"
    shutil.copytree(tiny_backbone, model)
    scores = np.random.default_rng(0).random((30, 3)).astype(np.float32)
    metrics = {
        "steps": 5,
        "before": {"map_macro": 0.4, "per_label_ap": dict.fromkeys(LABELS, 0.4)},
        "after": {"map_macro": 0.5, "per_label_ap": dict.fromkeys(LABELS, 0.5)},
        "estimate": True,
    }
    run_id = _finished_run(
        svc.store, seeded.project.id, "adapt", scores, seeded.target, model_path=model, metrics=metrics
    )
    at = _app("Export")
    labels = [b.label for b in at.get("download_button")]
    assert labels == [
        "Annotations (CSV)",
        "Annotations (JSONL)",
        "Documents (CSV)",
        "Model folder (zip)",
        "Predictions (CSV)",
        "Predictions (Parquet)",
        "Report (Markdown)",
        "Report (JSON)",
    ]
    assert at.selectbox(key="export_run").value == run_id

    from ui import widgets  # the buttons' callables: the files they serve when clicked

    model = widgets.exported(exporter.export_model, svc.store, run_id, file_name="m.zip")
    archive = zipfile.ZipFile(io.BytesIO(model()))
    assert "m/config.json" in archive.namelist()
    csv = pd.read_csv(io.BytesIO(widgets.exported(exporter.export_predictions, svc.store, run_id, file_name="p.csv")()))
    assert list(csv.columns[:2]) == ["id", "score_billing"] and len(csv) == 30
    report = widgets.exported(exporter.export_run_report, svc.store, run_id, file_name="r.md")().decode()
    assert report.startswith(f"# Run {run_id}: adapt (done)")
    assert not list(svc.store.exports_dir.iterdir())  # built in temp folders, nothing left behind

    at.switch_page(PAGES["Adapt"]).run()  # the history shows the run's macro AP before and after
    history = at.dataframe[-1].value
    assert history.loc[0, "macro AP after"] == "0.500"


def test_the_demo_project_is_prepared_once_and_offers_its_presets(env, monkeypatch):
    """The demo module's documented API, stood in for so the test queues nothing heavy."""
    from ui import session

    calls = []

    def ensure_demo_project(services):
        calls.append(services.data_dir)
        found = services.store.find_project("demo")
        return found.id if found else services.create_project("demo", ["a", "b"]).id

    fake = SimpleNamespace(
        DEMO_PROJECT="demo",
        ensure_demo_project=ensure_demo_project,
        QUICK_CPU_DEMO={"max_steps": 7, "batch_size": 4},
        PAPER_SETTINGS={"batch_size": 64, "device": "cuda"},
        run_demo=lambda services, project_id: services.store.enqueue_run(project_id, "adapt", {}),
    )
    monkeypatch.setattr(session, "demo", fake)
    monkeypatch.delenv("DALLMI_NO_DEMO")
    env.svc.create_project("another", ["x"])  # listed first by name: the demo is still the one opened
    at = _app("Adapt")
    at.run()
    assert len(calls) == 1
    picker = next(box for box in at.selectbox if box.label == "Project")
    assert picker.value == env.svc.store.find_project("demo").id
    assert at.selectbox(key="preset").options == ["Defaults", "Quick CPU demo", "Paper settings"]
    at.selectbox(key="preset").select("Quick CPU demo").run()
    assert at.number_input(key="Quick CPU demo-max_steps").value == 7
    at.selectbox(key="preset").select("Paper settings").run()
    assert at.selectbox(key="Paper settings-device").value == "auto"  # no GPU here: cuda is not offered
    at.button(key="run_demo").click().run()
    assert not at.exception and [r.status for r in env.svc.store.list_runs(picker.value)] == ["queued"]


def test_a_failed_run_shows_its_error_and_the_traceback_folded(seeded):
    store = seeded.svc.store
    run_id = store.enqueue_run(seeded.project.id, "adapt", {})
    store.claim_next_run(1)
    trace = 'Traceback (most recent call last):\n  File "jobs/adapt.py", line 9, in run_adapt\nValueError: boom\n'
    store.finish_run(run_id, "failed", error="ValueError: boom", traceback=trace)
    at = _app("Adapt")
    assert not at.exception, at.exception
    assert any("ValueError: boom" in e.value for e in at.error)
    folded = [x for x in at.expander if x.label == "Traceback (for a bug report)"]
    assert folded and trace.strip() in folded[0].code[0].value


def test_a_finished_run_shows_its_macro_ap_before_and_after(seeded):
    store = seeded.svc.store
    run_id = store.enqueue_run(seeded.project.id, "adapt", {})
    store.claim_next_run(1)
    store.update_progress(run_id, {"stage": "score", "scored": 30, "total": 30})
    metrics = {"steps": 20, "estimate": False, "before": {"map_macro": 0.41}, "after": {"map_macro": 0.525}}
    store.finish_run(run_id, "done", metrics=metrics | {"precision": "bf16"})
    at = _app("Adapt")
    assert at.get("progress")[-1].proto.text == "done"  # not the last stage's "score: 30 of 30 documents"
    shown = {m.label: (m.value, m.proto.delta) for m in at.metric}
    assert shown["Steps"][0] == "20" and shown["Macro AP before"][0] == "0.410"
    assert shown["Macro AP after"] == ("0.525", "+0.115") and shown["Measured on"][0] == "gold labels"
    assert "Epoch" not in shown and "ETA" not in shown
    assert next(m for m in at.metric if m.label == "Steps").proto.help == "Trained in bf16 autocast."


def test_the_projects_page_tells_a_first_time_viewer_what_the_demo_does_next(env, tiny_backbone):
    """The demo opens on the Projects page: it says what the data is and where the source model stands."""
    from dallmi_core.app.demo import DEMO_PROJECT

    project = env.svc.create_project(DEMO_PROJECT, LABELS, backbone=tiny_backbone)
    at = _app("Projects")
    banner = at.info[0].value
    assert banner.startswith("**The demo project.**") and "not running: start it on the Data page" in banner
    run_id = env.svc.store.enqueue_run(project.id, "finetune-source", {})
    env.svc.store.claim_next_run(1)
    env.svc.store.update_progress(run_id, {"stage": "finetune-source", "step": 3, "max_steps": 75})
    at.run()
    assert f"running now (run {run_id}, step 3 of 75;" in at.info[0].value
    env.svc.store.update_project(project.id, source_model=tiny_backbone)
    at.run()
    assert "e-mails: done, the model is ready." in at.info[0].value
    env.svc.create_project("mine", LABELS, backbone=tiny_backbone)
    at.run()
    next(box for box in at.selectbox if box.label == "Project").select(env.svc.store.find_project("mine").id).run()
    assert not [i for i in at.info if "The demo project" in i.value]


def test_the_device_probe_runs_torch_in_a_child_process(monkeypatch):
    """What the Adapt page shows about this machine, asked without importing torch here."""
    monkeypatch.setattr(system_module, "_system_info", [])
    info = system_module.system_info()
    assert info.note is None and info.torch_version and info.cpu_cores >= 1
    assert info.devices[:2] == ("auto", "cpu") and ("cuda" in info.devices) == bool(info.gpus)
    assert system_module.system_info() is info  # probed once per process
    assert info.cpu_bf16 is False  # the suite keeps CPUs in float32 (conftest), the child process too


def test_the_adapt_page_says_when_this_cpu_trains_in_bf16(seeded, monkeypatch):
    monkeypatch.setattr(system_module, "_system_info", [SystemInfo(2, (), False, "test", cpu_bf16=True)])
    at = _app("Adapt")
    at.run()
    shown = [c.value for c in at.caption if c.value.startswith("This machine")]
    assert shown == [
        "This machine: no GPU: CPU only, 2 cores; native bf16, so precision auto trains under bf16 autocast."
    ]


def test_the_project_is_kept_in_the_url(seeded):
    other = seeded.svc.create_project("second", ["a"])
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params["project"] = str(other.id)  # a reload, a new tab or a shared link of the second project
    at.run()
    assert not at.exception, at.exception
    assert at.sidebar.selectbox[0].value == other.id and at.query_params["project"] == str(other.id)
    at.switch_page(PAGES["Data"]).run()  # every page works on the URL's project
    assert not at.exception and at.title[0].value == "Data"
    assert at.query_params["project"] == str(other.id)


def test_open_a_project_shows_the_project_just_created(seeded):
    at = _app("Projects")
    at.text_input(key="new_name").input("fresh")
    at.text_area(key="new_labels").input("x, y")
    at.button(key="create_project").click().run()
    assert not at.exception, at.exception
    fresh = next(p for p in seeded.svc.store.list_projects() if p.name == "fresh")
    assert at.query_params["project"] == str(fresh.id)
    assert next(s for s in at.selectbox if s.label == "Open a project").value == fresh.id


def test_a_second_source_fine_tuning_is_refused_while_one_runs(seeded):
    svc = seeded.svc
    first = svc.start_run(seeded.project.id, "finetune-source", {"epochs": 1.0})
    with pytest.raises(RunStateError, match=f"run {first} \\(finetune-source\\) is already queued"):
        svc.start_run(seeded.project.id, "finetune-source", {"epochs": 1.0})
    at = _app("Data")
    assert "A fine-tuning is queued" in " ".join(i.value for i in at.info)
    assert not [b for b in at.button if b.key == "finetune"]
    svc.store.request_cancel(first)
    assert svc.start_run(seeded.project.id, "finetune-source", {"epochs": 1.0}) > first
