"""The embedded demo: its generator (deterministic, the committed CSVs are its output, a sound data set)
and the demo project (created once from the CSVs, a source fine-tuning queued, the adaptation gated)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from dallmi_core.app.demo import (
    DEMO_DIR,
    DEMO_LABELS,
    DEMO_PROJECT,
    PAPER_SETTINGS,
    QUICK_CPU_DEMO,
    SOURCE_DEMO,
    demo_files,
    ensure_demo_project,
    run_demo,
)
from dallmi_core.app.services import open_services
from dallmi_core.config import AdaptConfig, SourceConfig
from dallmi_core.data.corpus import read_corpus
from dallmi_core.errors import DataError, RunStateError

SCRIPT = DEMO_DIR / "make_demo.py"


@pytest.fixture(scope="module")
def make_demo():
    spec = importlib.util.spec_from_file_location("make_demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_demo"] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["make_demo"]


@pytest.fixture(scope="module")
def corpora():
    return {
        domain: read_corpus(path, label_names=DEMO_LABELS)
        for domain, path in zip(("source", "target", "eval"), demo_files(), strict=True)
    }


@pytest.fixture()
def svc(tmp_path):
    services = open_services(tmp_path / "store", autostart_worker=False)
    yield services
    services.close()


def test_the_generator_is_deterministic_and_wrote_the_committed_files(make_demo, tmp_path):
    make_demo.main(["--out", str(tmp_path / "a"), "--no-check"])
    make_demo.main(["--out", str(tmp_path / "b"), "--no-check"])
    for path in demo_files():
        first, second = (tmp_path / "a" / path.name).read_bytes(), (tmp_path / "b" / path.name).read_bytes()
        assert first == second, path.name
        assert path.read_bytes() == first, f"{path.name} differs from a fresh run: run `python data/make_demo.py`"
        assert len(first) < 300_000
    assert tuple(make_demo.LABELS) == DEMO_LABELS


def test_the_script_prints_a_visible_domain_shift(tmp_path):
    """A fresh interpreter (another hash seed: no set order may leak into the output) and the check."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONHASHSEED": "7"},
    )
    assert result.returncode == 0, result.stderr
    for path in demo_files():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes()
    macro = {
        line[2:22].strip(): float(line.split()[-1])
        for line in result.stdout.splitlines()
        if line.startswith("  ") and line[2:22].strip() in ("label-prior chance", "source only", "target ceiling")
    }
    assert macro["label-prior chance"] + 0.2 < macro["source only"] < macro["target ceiling"] - 0.2, result.stdout


def test_the_files_read_cleanly_with_every_label_in_each(corpora):
    assert {domain: len(c) for domain, c in corpora.items()} == {"source": 600, "target": 900, "eval": 400}
    for domain, corpus in corpora.items():
        assert set(corpus.domains) == {domain}
        assert set(corpus.label_names()) == set(DEMO_LABELS), domain
    texts = [text for corpus in corpora.values() for text in corpus.texts]
    assert len({" ".join(t.casefold().split()) for t in texts}) == len(texts)  # no duplicate the import would skip


def test_starter_tags_unlabeled_share_and_co_occurrence(corpora):
    target = corpora["target"]
    assert Counter(label for row in target.labels for label in row) == dict.fromkeys(DEMO_LABELS, 4)
    assert sum(bool(row) for row in target.labels) == 24  # four distinct documents per label
    for domain in ("source", "eval"):
        rows = corpora[domain].labels
        assert 0.05 <= sum(not row for row in rows) / len(rows) <= 0.15, domain
        pairs = Counter(frozenset(row) for row in rows if len(row) == 2)
        assert pairs[frozenset(("billing", "returns"))] >= 5, domain
        assert pairs[frozenset(("login", "bug"))] >= 5, domain
        assert sum(len(row) > 1 for row in rows) / len(rows) > 0.15, domain


def test_label_priors_and_style_shift_between_the_domains(corpora):
    def share(corpus, label):
        return sum(label in row for row in corpus.labels) / len(corpus)

    source, evaluation = corpora["source"], corpora["eval"]
    assert share(source, "shipping") > share(evaluation, "shipping")
    assert share(source, "login") < share(evaluation, "login")
    assert share(source, "feature_request") < share(evaluation, "feature_request")

    def mean_chars(corpus):
        return sum(map(len, corpus.texts)) / len(corpus)

    assert mean_chars(source) > 3 * mean_chars(corpora["target"])


MACHINES = r"Brewster Classic 2|Brewster Classic 3|Brewster Classic Plus|Classic 2 machine"
DEVICES = r"\b(?:iphone(?: 13| 15)?|android(?: 14)?|pixel(?: 8)?|samsung|galaxy s22|ipad|my phone|ios 17|oneplus)\b"
NOT_HERE_YET = r"where'?s my|where is my|not yet received|has not arrived|has still not left|still nothing|hasnt moved"
CONTRADICTIONS = (  # phrases that cannot both hold in one message
    (r"not returning it|not sending it back|no intention of sending|do not wish to return", NOT_HERE_YET),
    (r"arrived promptly|came fast|delivery was quick|got it on time", NOT_HERE_YET + r"|cracked|smashed|skipped"),
    (r"machine itself (?:works perfectly|is great)|app works fine otherwise", r"faulty|leaks|too loud|logging me out"),
    (r"subscriber to the capsule plan|capsule delivery has not arrived", r"cancelled my capsule plan"),
)


def test_no_generated_message_contradicts_itself(corpora):
    """A price that "went up" ends higher; one writer has one machine, one customer number, one phone;
    no message says it keeps, or praises the delivery of, what has not come (or came broken)."""
    import re

    texts = [text for corpus in corpora.values() for text in corpus.texts]
    rises = [re.search(r"went up from \$(\d+\.\d\d) to \$(\d+\.\d\d)", t) for t in texts]
    rises = [(float(m[1]), float(m[2])) for m in rises if m]
    assert rises and all(new > old for old, new in rises), [r for r in rises if r[1] <= r[0]]
    for pattern in (MACHINES, r"C-\d{6}"):
        assert not [t for t in corpora["source"].texts if len(set(re.findall(pattern, t))) > 1], pattern
    assert not [t for t in corpora["source"].texts if t.count("My customer number is") > 1]
    chats = [*corpora["target"].texts, *corpora["eval"].texts]
    assert not [t for t in chats if len(set(re.findall(DEVICES, t.casefold()))) > 1]
    for a, b in CONTRADICTIONS:
        both = [t for t in texts if re.search(a, t.casefold()) and re.search(b, t.casefold())]
        assert not both, both[:3]


def test_presets_are_valid_configs():
    quick = AdaptConfig.from_dict(dict(QUICK_CPU_DEMO))
    assert (quick.max_length, quick.batch_size, quick.positives_per_label) == (64, 16, 4)
    assert quick.epochs is None and quick.max_steps is None  # the default step budget tied to the tags
    paper = AdaptConfig.from_dict({"kind": "adapt", **PAPER_SETTINGS})
    assert paper.max_length == 128 and paper.batch_size == 64 and paper.lr == 5e-5
    assert paper.variational == "log" and paper.lambda_mix == 1.0 and paper.method == "dallmi"
    source = SourceConfig.from_dict(dict(SOURCE_DEMO))
    assert (source.max_length, source.epochs, source.batch_size) == (64, 2.0, 16)
    assert all(isinstance(p, dict) for p in (QUICK_CPU_DEMO, PAPER_SETTINGS, SOURCE_DEMO))  # what ui/session.py expects


def test_ensure_demo_project_imports_once_and_queues_one_source_run(svc):
    project_id = ensure_demo_project(svc)
    project = svc.store.get_project(project_id)
    assert (project.name, project.labels, project.source_model) == (DEMO_PROJECT, DEMO_LABELS, None)
    assert project.settings["backbone"] == "default"
    assert svc.store.count_documents(project_id) == {"source": 600, "target": 900, "eval": 400}
    assert [(c.label, c.positives) for c in svc.coverage(project_id)] == [(label, 4) for label in DEMO_LABELS]
    tagged_elsewhere = svc.store.tags_by_label(project_id)
    assert tagged_elsewhere == svc.store.tags_by_label(project_id, domain="target")  # gold labels are not tags
    evaluation = svc.store.get_documents(project_id, domain="eval", limit=400)
    assert sum(doc.gold_labels is not None for doc in evaluation) == 400
    runs = svc.store.list_runs(project_id)
    assert [(r.kind, r.status) for r in runs] == [("finetune-source", "queued")]
    assert SourceConfig.from_dict(runs[0].config["config"]) == SourceConfig.from_dict(dict(SOURCE_DEMO))

    assert ensure_demo_project(svc) == project_id  # idempotent: nothing new
    assert len(svc.store.list_runs(project_id)) == 1
    assert svc.store.count_documents(project_id)["target"] == 900
    assert [p.name for p in svc.store.list_projects()] == [DEMO_PROJECT]


def test_a_failed_import_leaves_no_half_project(svc, monkeypatch, tmp_path):
    (tmp_path / "data").mkdir()
    for path in demo_files():
        (tmp_path / "data" / path.name).write_bytes(path.read_bytes())
    with open(tmp_path / "data" / "demo_eval.csv", "a", encoding="utf-8") as broken:
        broken.write("eval-9999,a row with a label the project lacks,urgent,eval\n")
    monkeypatch.setattr("dallmi_core.app.demo.DEMO_DIR", tmp_path / "data")
    with pytest.raises(DataError, match="unknown label 'urgent'"):
        ensure_demo_project(svc)
    assert svc.store.list_projects() == [] and svc.store.list_runs() == []


def test_missing_demo_files_say_how_to_make_them(monkeypatch, tmp_path):
    monkeypatch.setattr("dallmi_core.app.demo.DEMO_DIR", tmp_path)
    with pytest.raises(DataError, match="make_demo.py"):
        demo_files()


def test_run_demo_waits_for_the_source_model(svc, tmp_path):
    project_id = ensure_demo_project(svc)
    with pytest.raises(RunStateError, match=r"not ready yet: fine-tuning run \d+ is queued"):
        run_demo(svc, project_id)
    (source_run,) = svc.store.list_runs(project_id)
    assert svc.store.claim_next_run(1).id == source_run.id
    svc.store.finish_run(source_run.id, "failed", error="out of memory")
    with pytest.raises(RunStateError, match="ended failed: out of memory"):
        run_demo(svc, project_id)
    assert [r.kind for r in svc.store.list_runs(project_id)] == ["finetune-source"]  # nothing was queued

    model = tmp_path / "source-model"  # what a finished finetune-source run leaves: a labelled model folder
    model.mkdir()
    id2label = {str(i): label for i, label in enumerate(DEMO_LABELS)}
    (model / "config.json").write_text(json.dumps({"id2label": id2label}), encoding="utf-8")
    (model / "model.safetensors").write_bytes(b"")
    svc.store.update_project(project_id, source_model=str(model))
    run_id = run_demo(svc, project_id)
    run = svc.store.get_run(run_id)
    assert (run.kind, run.status, run.config["source_model"]) == ("adapt", "queued", str(model))
    assert AdaptConfig.from_dict(run.config["config"]) == AdaptConfig.from_dict(dict(QUICK_CPU_DEMO))


def test_demo_dir_is_the_repository_data_folder():
    assert DEMO_DIR == Path(__file__).resolve().parents[2] / "data"
