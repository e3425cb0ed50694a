"""The store: schema and migrations, projects, documents and search, tags and undo, the run queue
under concurrency (threads and spawned processes), predictions and clear errors for bad files."""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dallmi_core.data.corpus import Corpus
from dallmi_core.errors import DataError, RunStateError, StoreError
from dallmi_core.store import MIGRATIONS, Store, content_hash, data_dir, fts_query, open_store
from dallmi_core.store import schema as schema_module

LABELS = ["billing", "login", "shipping"]
TEXTS = [
    "My invoice shows a double charge",
    "I cannot sign in, my password is locked",
    "The parcel delivery is late again",
    "Refund the payment for the broken parcel",
    "Café crème and naïve résumé",
]


def corpus(texts=TEXTS, domain="target", prefix="d") -> Corpus:
    n = len(texts)
    return Corpus(tuple(f"{prefix}{i}" for i in range(n)), tuple(texts), ((),) * n, (domain,) * n)


@pytest.fixture()
def docs(store, project):
    return store.add_documents(project.id, corpus())


# ---- opening, schema, migrations ----------------------------------------------------------------


def test_open_sets_pragmas_and_full_schema(store):
    pragma = {
        name: store.conn.execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
    }
    assert pragma == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 30000, "synchronous": 1}
    assert store.schema_version == len(MIGRATIONS)
    tables = set(store.table_counts())
    assert {
        "projects",
        "documents",
        "documents_fts",
        "annotations",
        "runs",
        "run_metrics",
        "predictions",
        "mixup_samples",
    } <= tables
    assert store.integrity_check() == "ok"


def test_old_database_is_migrated_once_and_reopening_is_a_no_op(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    with Store(path, migrate_to=1) as old:
        assert old.schema_version == 1 and "runs" not in old.table_counts()
        project = old.create_project("Legacy", LABELS)
        old.insert_documents(
            project.id, [(f"d{i}", "target", t, None, None, content_hash(t)) for i, t in enumerate(TEXTS)]
        )
    with Store(path) as new:
        assert new.schema_version == len(MIGRATIONS)
        assert [d.ext_id for d in new.search(project.id, "parcel")] == ["d2", "d3"]  # FTS filled from old rows
        assert new.enqueue_run(project.id, "adapt", {}) == 1
        schema = new.conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    calls = []
    monkeypatch.setattr(
        schema_module, "MIGRATIONS", tuple((lambda db, m=m: calls.append(m.__name__)) for m in MIGRATIONS)
    )
    with Store(path) as again:
        assert calls == [] and again.schema_version == len(MIGRATIONS)
        assert again.conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == schema


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_missing_folder_directory_path_and_corrupt_file_are_store_errors(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "nope" / "dallmi.db")
    with pytest.raises(StoreError, match="is a folder"):
        Store(tmp_path)
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database at all " * 200)
    with pytest.raises(StoreError, match="not a DALLMi store or is corrupt"):
        Store(bad)
    real = tmp_path / "real.db"
    Store(real).close()
    real.write_bytes(real.read_bytes()[:100] + b"\x00garbage" * 100)  # header kept, pages destroyed
    with pytest.raises(StoreError, match="corrupt"):
        Store(real).list_projects()


def test_a_folder_that_cannot_hold_the_store_is_a_store_error(tmp_path):
    """Runs as root too (CI): the store's folder is a regular file, which no permission bit can fix."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should be")
    with pytest.raises(StoreError, match="not-a-folder is a file, not a folder"):
        Store(blocker / "dallmi.db")
    assert blocker.read_text() == "a file where the data folder should be"  # nothing stored is lost


def test_data_dir_from_environment_and_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("DALLMI_DATA_DIR", str(tmp_path / "data"))
    assert data_dir() == tmp_path / "data"
    with open_store() as handle:
        assert handle.path == tmp_path / "data" / "dallmi.db"
        assert handle.models_dir.is_dir() and handle.exports_dir.is_dir()
    monkeypatch.delenv("DALLMI_DATA_DIR")
    assert str(data_dir()) == "dallmi_data"


# ---- projects and documents -----------------------------------------------------------------


def test_projects_create_rename_update_delete_cascade(store, project, docs):
    assert store.get_project(project.id).labels == tuple(LABELS)
    with pytest.raises(DataError, match="already exists"):
        store.create_project("support", ["x"])  # names are case-insensitive
    for bad, message in ((["a|b"], "separator"), ([], "at least one"), (["a", "a"], "duplicate"), ([" "], "empty")):
        with pytest.raises(DataError, match=message):
            store.create_project("Other", bad)
    other = store.create_project("Other", ["x"])
    other_doc = store.add_documents(other.id, corpus(["parcel in other project"]))[0]
    assert store.rename_project(project.id, "Helpdesk").name == "Helpdesk"
    with pytest.raises(DataError, match="taken"):
        store.rename_project(project.id, "other")
    updated = store.update_project(project.id, source_model="minilm", settings={"k": 1}, add_labels=["refund"])
    assert (updated.source_model, updated.settings, updated.labels[-1]) == ("minilm", {"k": 1}, "refund")
    store.tag(project.id, docs[0], "billing")
    run = store.enqueue_run(project.id, "adapt", {"lr": 1e-5})
    store.delete_project(project.id)
    assert [p.name for p in store.list_projects()] == ["Other"]
    counts = store.table_counts()
    assert (counts["documents"], counts["annotations"], counts["runs"]) == (1, 0, 0)
    assert [d.id for d in store.search(other.id, "parcel")] == [other_doc]
    with pytest.raises(StoreError, match="does not exist"):
        store.get_run(run)
    assert store.integrity_check() == "ok"


def test_add_documents_is_one_transaction_and_validates(store, project, docs):
    assert store.count_documents(project.id) == {"source": 0, "target": 5, "eval": 0}
    before = store.table_counts()
    clash = Corpus(("new1", "d0"), ("fresh text", "other text"), ((), ()), ("target", "target"))
    with pytest.raises(DataError, match="'d0'"):
        store.add_documents(project.id, clash)
    gold = Corpus(("g1",), ("gold row",), (("sports",),), ("eval",))
    with pytest.raises(DataError, match="unknown label 'sports'.*billing, login, shipping"):
        store.add_documents(project.id, gold)
    assert store.table_counts() == before
    ids = store.add_documents(project.id, Corpus(("g1",), ("gold row",), (("login",),), ("eval",)), domain="source")
    doc = store.get_document(ids[0])
    assert (doc.domain, doc.gold_labels, doc.content_hash) == ("source", ("login",), content_hash(" GOLD   row "))


def test_get_and_iterate_documents(store, project, docs):
    assert [d.id for d in store.get_documents(project.id, ids=[docs[3], docs[1]])] == [docs[3], docs[1]]
    assert [d.ext_id for d in store.get_documents(project.id, limit=2, offset=1)] == ["d1", "d2"]
    assert store.get_documents(project.id, domain="eval") == []
    pages = list(store.iter_documents(project.id, batch_size=2))
    assert [len(p) for p in pages] == [2, 2, 1]
    assert store.document_ids(project.id, "target") == docs
    assert store.ext_ids(docs[:2]) == {docs[0]: "d0", docs[1]: "d1"}


def test_search_words_phrases_prefix_and_filters(store, project, docs):
    def ext(query, **kw):
        return [d.ext_id for d in store.search(project.id, query, **kw)]

    assert sorted(ext("parcel")) == ["d2", "d3"]
    assert ext("broken parcel") == ["d3"]  # all words must match
    assert ext('"parcel delivery"') == ["d2"]
    assert ext('"delivery parcel"') == []
    assert ext("passw*") == ["d1"]
    assert ext("cafe resume") == ["d4"]  # diacritics folded
    assert ext("sign-in") == ["d1"] and ext("in-sign") == []  # a hyphenated word is a phrase
    assert ext("parcel", domain="eval") == []


@pytest.mark.parametrize(
    "query",
    [
        '"',
        "*",
        "AND(",
        "-",
        "NOT",
        "OR",
        "(",
        ")",
        ":",
        "^",
        "text:parcel",
        "NEAR(a b)",
        '"unbalanced parcel',
        "",
        "   ",
        '- * " ( ) :',
        "parcel AND(",
    ],
)
def test_search_never_raises_on_fts_syntax(store, project, docs, query):
    found = store.search(project.id, query)
    if not any(ch.isalnum() for ch in query):
        assert found == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=40))
def test_search_accepts_any_text(store, project, docs, query):
    store.search(project.id, query)


def test_fts_query_quotes_every_term():
    assert fts_query('invoice "double charge" re*') == '"invoice" "double charge" "re"*'
    assert fts_query("AND( -x") == '"AND" "x"'
    assert fts_query('"*" -- ()') is None


# ---- tags ----------------------------------------------------------------------------------------


def test_tag_is_idempotent_and_untag_is_soft(store, project, docs):
    assert store.tag(project.id, docs[0], "billing") is True
    assert store.tag(project.id, docs[0], "billing") is False
    assert store.tags_by_label(project.id) == {"billing": [docs[0]], "login": [], "shipping": []}
    assert store.untag(project.id, docs[0], "billing") is True
    assert store.untag(project.id, docs[0], "billing") is False
    assert store.tags_by_label(project.id)["billing"] == []
    history = store.annotations(project.id, include_deleted=True)
    assert len(history) == 1 and history[0].deleted_at is not None and store.annotations(project.id) == []
    assert store.tag(project.id, docs[0], "billing") is True  # a fresh live row beside the deleted one
    assert len(store.annotations(project.id, include_deleted=True)) == 2


def test_tag_rejects_unknown_label_and_foreign_document(store, project, docs):
    with pytest.raises(DataError, match="unknown label 'sports'.*billing, login, shipping"):
        store.tag(project.id, docs[0], "sports")
    other = store.create_project("Other", LABELS)
    with pytest.raises(DataError, match="not in project"):
        store.tag(other.id, docs[0], "billing")
    assert store.table_counts()["annotations"] == 0


def test_undo_walks_back_tags_bulk_tags_and_untags(store, project, docs):
    store.tag(project.id, docs[0], "billing")
    store.tag_many(project.id, docs[1:4], "shipping")
    store.untag(project.id, docs[0], "billing")
    store.tag(project.id, docs[4], "login", annotator="bob")
    assert store.undo_last(project.id) == [(docs[0], "billing")]  # the untag is reverted
    assert store.tags_by_label(project.id)["billing"] == [docs[0]]
    assert sorted(store.undo_last(project.id)) == [(d, "shipping") for d in docs[1:4]]  # the whole bulk tag
    assert store.undo_last(project.id) == [(docs[0], "billing")]
    assert store.undo_last(project.id) == []
    assert store.tags_by_label(project.id) == {"billing": [], "login": [docs[4]], "shipping": []}  # bob's stays
    assert store.tag_many(project.id, [docs[4]], "login") == 0  # no-op: nothing to undo
    assert store.undo_last(project.id) == []


def test_undo_skips_actions_already_reversed_by_others(store, project, docs):
    store.tag(project.id, docs[0], "billing", annotator="ann")
    store.tag(project.id, docs[1], "billing", annotator="ann")
    store.untag(project.id, docs[1], "billing", annotator="bob")
    assert store.undo_last(project.id, "ann") == [(docs[0], "billing")]


# ---- runs ----------------------------------------------------------------------------------------


def test_run_lifecycle_progress_metrics_and_cancel(store, project):
    run_id = store.enqueue_run(project.id, "adapt", {"lr": 5e-5})
    run = store.get_run(run_id)
    assert (run.status, run.config, run.attempts, run.cancel_requested) == ("queued", {"lr": 5e-5}, 0, False)
    claimed = store.claim_next_run(worker_pid=4242)
    assert (claimed.id, claimed.status, claimed.worker_pid, claimed.attempts) == (run_id, "running", 4242, 1)
    assert store.claim_next_run(worker_pid=1) is None
    assert store.heartbeat(run_id)
    progress = {
        "stage": "adapt",
        "step": 3,
        "max_steps": 10,
        "epoch": 0.5,
        "eta_s": 1.0,
        "variational": 0.7,
        "mixup": np.float32(0.25),
        "flag": True,
        "bad": float("nan"),
        "note": "x",
    }
    assert store.update_progress(
        run_id, progress, metrics={k: progress[k] for k in ("variational", "mixup", "flag", "bad", "note")}
    )
    assert store.get_run(run_id).progress["variational"] == 0.7
    assert store.run_metrics(run_id) == [(3, "variational", 0.7), (3, "mixup", 0.25)]
    assert store.set_checkpoint(run_id, "/tmp/ckpt")
    assert store.request_cancel(run_id) == "running" and store.is_cancel_requested(run_id)
    done = store.finish_run(run_id, "cancelled", metrics={"map_macro": 0.5})
    assert (done.status, done.metrics, done.checkpoint_dir) == ("cancelled", {"map_macro": 0.5}, "/tmp/ckpt")
    assert done.finished_at is not None
    assert not store.heartbeat(run_id) and not store.update_progress(run_id, {"step": 4})
    with pytest.raises(RunStateError, match="not running"):
        store.finish_run(run_id, "done")
    with pytest.raises(RunStateError, match="cannot finish"):
        store.finish_run(run_id, "queued")
    queued = store.enqueue_run(project.id, "adapt", {})
    assert store.request_cancel(queued) == "cancelled"
    assert store.claim_next_run(worker_pid=1) is None
    assert [r.id for r in store.list_runs(project.id, status=["cancelled"])] == [queued, run_id]


def test_progress_is_for_display_and_only_the_metrics_given_are_logged(store, project):
    run_id = store.enqueue_run(project.id, "score", {})
    store.claim_next_run(worker_pid=1)
    progress = {"stage": "score", "step": 2, "max_steps": 4, "scored": 512, "total": 2048, "lr": 1e-5}
    assert store.update_progress(run_id, progress)  # no metrics: nothing is logged
    assert store.get_run(run_id).progress == progress and store.run_metrics(run_id) == []
    assert store.update_progress(run_id, {**progress, "loss": 0.5}, metrics={"loss": 0.5})
    assert store.run_metrics(run_id) == [(2, "loss", 0.5)]
    with pytest.raises(ValueError, match="step"):
        store.update_progress(run_id, {"stage": "score"}, metrics={"loss": 0.5})


def test_drop_metrics_after_keeps_a_resumed_run_one_row_per_step(store, project):
    run_id, other = (store.enqueue_run(project.id, "adapt", {}) for _ in range(2))
    for step in range(1, 6):  # a killed attempt logged steps 1..5; its checkpoint was at step 3
        store.log_metrics(run_id, step, {"loss": 1.0 / step, "val_variational": 0.1})
        store.log_metrics(other, step, {"loss": 1.0})
    assert store.drop_metrics_after(run_id, 3) == 4
    assert sorted({step for step, _, _ in store.run_metrics(run_id)}) == [1, 2, 3]
    assert len(store.run_metrics(other)) == 5  # other runs are left alone


def test_claim_replaces_the_previous_attempts_progress(store, project):
    run_id = store.enqueue_run(project.id, "adapt", {})
    assert store.claim_next_run(1).progress == {"stage": "starting"}
    store.update_progress(run_id, {"stage": "adapt", "step": 7, "max_steps": 60, "loss": 0.3})
    store.finish_run(run_id, "interrupted")
    assert store.get_run(run_id).progress["step"] == 7  # shown while it waits to be resumed
    resumed = store.claim_next_run(2)
    assert resumed.id == run_id and resumed.progress == {"stage": "resuming"}


def test_tags_by_label_of_one_domain(store, project, docs):
    source = store.add_documents(project.id, corpus(["a source text"], domain="source", prefix="s"))[0]
    store.tag_many(project.id, [docs[0], source], "billing")
    assert store.tags_by_label(project.id)["billing"] == [docs[0], source]
    assert store.tags_by_label(project.id, domain="target") == {"billing": [docs[0]], "login": [], "shipping": []}
    assert store.tags_by_label(project.id, domain="source")["billing"] == [source]


def test_stale_runs_are_interrupted_then_resumed_first(store, project):
    first, second, third = (store.enqueue_run(project.id, "adapt", {"n": i}) for i in range(3))
    a, b = store.claim_next_run(1), store.claim_next_run(2)
    assert (a.id, b.id) == (first, second)
    store.request_cancel(second)
    later = time.time() + 100
    store.heartbeat(first)
    assert store.mark_stale_runs_interrupted(50, now=later) == [first, second]
    assert store.mark_stale_runs_interrupted(500, now=later) == []
    assert store.get_run(first).status == "interrupted" and store.get_run(second).status == "cancelled"
    resumed = store.claim_next_run(3)
    assert (resumed.id, resumed.attempts, resumed.started_at, resumed.error) == (first, 2, a.started_at, None)
    assert store.claim_next_run(4).id == third
    assert store.claim_next_run(5, kinds=["finetune-source"]) is None


def _claim_all(path, gate=None, out=None):
    with Store(path) as handle:
        if gate is not None:
            gate.wait(30)
        claimed = []
        while (run := handle.claim_next_run(os.getpid())) is not None:
            claimed.append(run.id)
    if out is not None:
        out.put(claimed)
    return claimed


def test_claim_never_double_claims_across_threads(store, project):
    ids = [store.enqueue_run(project.id, "adapt", {}) for _ in range(40)]
    gate, results = threading.Barrier(4), []
    threads = [threading.Thread(target=lambda: results.append(_claim_all(store.path, gate))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    claimed = [run for batch in results for run in batch]
    assert sorted(claimed) == ids


def test_claim_never_double_claims_across_processes(store, project):
    ids = [store.enqueue_run(project.id, "adapt", {}) for _ in range(40)]
    ctx = mp.get_context("spawn")
    gate, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(str(store.path), gate, out)) for _ in range(2)]
    for proc in procs:
        proc.start()
    gate.set()
    claimed = [run for _ in procs for run in out.get(timeout=120)]
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert sorted(claimed) == ids
    assert {r.status for r in store.list_runs()} == {"running"}


def _tag_range(path, project_id, doc_ids, shared, gate):
    with Store(path) as handle:
        gate.wait(30)
        for doc in doc_ids:
            handle.tag(project_id, doc, "billing", annotator=f"p{os.getpid()}")
            handle.tag(project_id, doc, "login")
        for doc in shared:  # both processes tag these: idempotent under contention
            handle.tag(project_id, doc, "shipping")


def test_two_processes_tagging_at_once_lose_nothing(store, project):
    ids = store.add_documents(project.id, corpus([f"document number {i}" for i in range(400)]))
    ctx = mp.get_context("spawn")
    gate = ctx.Event()
    procs = [
        ctx.Process(target=_tag_range, args=(str(store.path), project.id, part, ids[:50], gate))
        for part in (ids[:200], ids[200:])
    ]
    for proc in procs:
        proc.start()
    gate.set()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    assert store.tags_by_label(project.id) == {"billing": ids, "login": ids, "shipping": ids[:50]}
    assert len(store.annotations(project.id)) == 400 + 400 + 50
    assert store.integrity_check() == "ok"


def test_integrity_check_sees_a_search_index_out_of_step(store, project, docs):
    assert store.integrity_check() == "ok"
    with store.transaction():
        store.conn.execute("INSERT INTO fts_deferred VALUES (1)")  # what a bulk load does, minus its final step
        store.insert_documents(project.id, [("x", "target", "unindexed text", None, None, content_hash("x"))])
        store.conn.execute("DELETE FROM fts_deferred")
    assert "full-text index" in store.integrity_check()


def test_bulk_load_indexes_new_documents_once_at_the_end(store, project, docs):
    with store.deferred_search_index():
        store.insert_documents(project.id, [("x", "target", "zebra parcel", None, None, content_hash("x"))])
        assert store.search(project.id, "zebra") == []  # not yet indexed inside the bulk load
    assert [d.ext_id for d in store.search(project.id, "zebra")] == ["x"]
    assert store.table_counts()["fts_deferred"] == 0 and store.integrity_check() == "ok"
    with pytest.raises(RuntimeError), store.deferred_search_index():
        raise RuntimeError("boom")
    assert store.table_counts()["fts_deferred"] == 0


def test_transaction_rolls_back_everything(store, project):
    before = store.table_counts()
    with pytest.raises(RuntimeError), store.transaction():
        store.create_project("Temp", LABELS)
        store.enqueue_run(project.id, "adapt", {})
        raise RuntimeError("boom")
    assert store.table_counts() == before and store.find_project("Temp") is None


# ---- predictions and MixUp samples --------------------------------------------------------------


def test_predictions_round_trip_as_float32(store, project, docs):
    run_id = store.enqueue_run(project.id, "adapt", {})
    scores = np.random.default_rng(0).random((len(docs), 3))
    assert store.save_predictions(run_id, docs[::-1], scores[::-1]) == len(docs)
    ids, loaded = store.load_predictions(run_id)
    assert ids.tolist() == docs and loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, scores.astype(np.float32))
    store.save_predictions(run_id, docs[:1], np.ones((1, 3)), replace=False)
    assert store.load_predictions(run_id)[1][0].tolist() == [1, 1, 1]
    store.save_predictions(run_id, docs[:2], np.zeros((2, 2)), labels=["login", "billing"])
    assert store.get_run(run_id).prediction_labels == ("login", "billing")
    assert store.load_predictions(run_id)[1].shape == (2, 2)
    with pytest.raises(DataError, match="3 columns but there are 2"):
        store.save_predictions(run_id, docs[:1], np.zeros((1, 3)), labels=["a", "b"])
    with pytest.raises(DataError, match="shape"):
        store.save_predictions(run_id, docs[:2], np.zeros((1, 3)))


def test_mixup_samples_are_logged_and_read(store, project, docs):
    run_id = store.enqueue_run(project.id, "adapt", {})
    rows = [
        {
            "label": "billing",
            "positive_doc": docs[0],
            "unlabeled_doc": docs[1],
            "mu": 0.3,
            "prediction": 0.4,
            "target": 0.8,
        }
    ]
    assert store.log_mixup_samples(run_id, 7, rows) == 1
    assert store.mixup_samples(run_id, label="billing") == [{"step": 7, **rows[0]}]
    assert store.mixup_samples(run_id, label="login") == []
