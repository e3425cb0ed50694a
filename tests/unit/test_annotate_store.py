"""What the Annotate page stands on: search with OR (never an FTS5 syntax error), where it matched,
metadata / tag-state / score filters, "reviewed: not" marks (undoable, counted, exported, measured,
never trained on) and a document's decisions saved as one action."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dallmi_core.app import browse, candidates, decisions, exporter
from dallmi_core.app.services import Services
from dallmi_core.data.corpus import Corpus
from dallmi_core.errors import DataError, RunStateError
from dallmi_core.store import content_hash, fts_query

LABELS = ["billing", "login", "shipping"]
TEXTS = [
    "My invoice shows a double charge",  # d0
    "I cannot sign in, my password is locked",  # d1
    "The parcel delivery is late again",  # d2
    "Refund the payment for the broken parcel",  # d3
    "Café crème and naïve résumé",  # d4
    "A chargeback for the late parcel, refund please",  # d5
]
META = [{"channel": "app", "stars": 1}, {"channel": "web"}, {"channel": "app"}, None, {"channel": "email"}, None]
WORDS = ["invoice", "parcel", "refund", "late", "charge", "password", "the", "chargeback", "cafe", "nothing"]


@pytest.fixture()
def docs(store, project):
    store.insert_documents(
        project.id,
        [(f"d{i}", "target", t, m, None, content_hash(t)) for i, (t, m) in enumerate(zip(TEXTS, META, strict=True))],
    )
    return store.document_ids(project.id)


def ext(store, ids):
    names = store.ext_ids(ids)
    return [names[i] for i in ids]


# ---- search: OR, phrases, prefixes, and no syntax error ever --------------------------------------


def test_or_between_terms_and_and_as_the_default(store, project, docs):
    def found(query):
        return sorted(ext(store, store.matching_ids(project.id, query=query)))

    assert found("refund OR invoice") == ["d0", "d3", "d5"]
    assert found("refund invoice") == []  # AND stays the default
    assert found("parcel late OR broken") == ["d2", "d3", "d5"]  # parcel AND (late OR broken)
    assert found('"late parcel" OR "double charge"') == ["d0", "d5"]
    assert found("charge* OR passw*") == ["d0", "d1", "d5"]
    assert found("refund or invoice") == []  # lower-case `or` is a word
    assert found('"OR"') == [] and found("refund OR") == ["d3", "d5"]  # a dangling OR is ignored
    assert sorted(d.ext_id for d in store.search(project.id, "invoice OR password")) == ["d0", "d1"]


def test_fts_query_writes_or_groups_with_explicit_and():
    assert fts_query("refund OR chargeback") == '("refund" OR "chargeback")'
    assert fts_query("refund card OR cash") == '"refund" AND ("card" OR "cash")'
    assert fts_query("a OR OR b") == '("a" OR "b")'
    assert fts_query("OR") is None and fts_query("OR OR *") is None
    assert fts_query('x "OR" y or') == '"x" "OR" "y" "or"'
    assert fts_query('invoice "double charge" re*') == '"invoice" "double charge" "re"*'  # unchanged without OR


FTS_NOISE = st.sampled_from(
    ["OR", "AND", "NOT", "NEAR", "NEAR(", '"', "*", "(", ")", "-", "+", ":", "^", "{", "}", "text:", "or", "_", "é"]
)
QUERIES = st.lists(st.one_of(FTS_NOISE, st.sampled_from(WORDS), st.text(max_size=6)), max_size=8).map(
    lambda parts: " ".join(parts)
) | st.text(max_size=40)


@settings(max_examples=300, deadline=None)
@given(QUERIES)
def test_no_query_is_ever_an_fts5_syntax_error(query):
    match = fts_query(query)
    if match is None:
        return
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE f USING fts5(text, tokenize='unicode61 remove_diacritics 2')")
    conn.execute("INSERT INTO f VALUES ('the late parcel and a refund')")
    conn.execute("SELECT highlight(f, 0, '[', ']') FROM f WHERE f MATCH ?", (match,)).fetchall()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(WORDS), st.sampled_from(WORDS), st.sampled_from(WORDS))
def test_or_is_the_union_and_juxtaposition_the_intersection(store, project, docs, a, b, c):
    def ids(query):
        return set(store.matching_ids(project.id, query=query))

    assert ids(f"{a} OR {b}") == ids(a) | ids(b)
    assert ids(f"{a} {b}") == ids(a) & ids(b)
    assert ids(f"{a} {b} OR {c}") == ids(a) & (ids(b) | ids(c))


def test_highlights_follow_the_index_tokenizer(store, project, docs):
    spans = store.highlights("cafe OR resume", [docs[4]])[docs[4]]
    assert [TEXTS[4][a:b] for a, b in spans] == ["Café", "résumé"]  # diacritics folded, as the index does
    spans = store.highlights('charge* "late parcel"', [docs[5]])[docs[5]]
    assert [TEXTS[5][a:b] for a, b in spans] == ["chargeback", "late parcel"]  # a phrase is one mark
    assert store.highlights("parcel", [docs[0]]) == {}  # no match, no entry
    odd = store.add_documents(project.id, Corpus(("x",), ("parcel \ue000 here",), ((),), ("target",)))[0]
    assert store.highlights("parcel", [odd]) == {}  # a marker character in the text: no marks, never wrong ones


# ---- filters ----------------------------------------------------------------------------------------


def test_metadata_and_tag_state_filters_combine_with_search(store, project, docs):
    assert store.meta_values(project.id, "channel") == [("app", 2), ("email", 1), ("web", 1)]
    assert store.meta_values(project.id, "stars") == [(1, 1)]
    assert ext(store, store.matching_ids(project.id, meta={"channel": ["app", "web"]})) == ["d0", "d1", "d2"]
    assert ext(store, store.matching_ids(project.id, meta={"stars": [1]})) == ["d0"]
    assert ext(store, store.matching_ids(project.id, query="parcel", meta={"channel": ["app"]})) == ["d2"]
    store.tag(project.id, docs[2], "shipping")
    store.mark_not(project.id, docs[3], "shipping")

    def state(name, query=""):
        return sorted(ext(store, store.matching_ids(project.id, query=query, label="shipping", state=name)))

    assert state("tagged") == ["d2"] and state("reviewed-not") == ["d3"]
    assert state("untagged", "parcel") == ["d3", "d5"] and state("unreviewed", "parcel") == ["d5"]
    with pytest.raises(DataError, match="unknown tag state"):
        store.matching_ids(project.id, label="shipping", state="maybe")


def _scored(store, project_id, doc_ids, scores, labels=None):
    run_id = store.enqueue_run(project_id, "score", {})
    store.claim_next_run(1)
    store.save_predictions(run_id, doc_ids, np.asarray(scores, dtype=np.float32), labels=labels)
    store.finish_run(run_id, "done")
    return run_id


def test_browse_filters_by_the_latest_scores_and_says_what_it_left_out(store, project, docs):
    with pytest.raises(RunStateError, match="no model has scored"):
        browse.browse(store, project.id, "shipping", browse.Filters(score_range=(0.5, 1.0)))
    scores = np.zeros((5, 3))
    scores[:, 2] = [0.1, 0.2, 0.9, 0.6, 0.4]  # d5 was not scored
    run_id = _scored(store, project.id, docs[:5], scores)
    listing = browse.browse(store, project.id, "shipping", browse.Filters(query="parcel", score_range=(0.5, 1.0)))
    assert [r.document.ext_id for r in listing.rows] == ["d2", "d3"] and listing.unscored == 1
    assert listing.run_id == run_id and [r.score for r in listing.rows] == pytest.approx([0.9, 0.6])
    everything = browse.browse(store, project.id, "shipping", browse.Filters(query="parcel"))
    assert everything.total == 3 and everything.unscored == 0  # the full range filters nothing
    d5 = next(r for r in everything.rows if r.document.ext_id == "d5")
    assert [TEXTS[5][a:b] for a, b in d5.spans] == ["parcel"] and d5.score is None
    assert browse.document_scores(store, project.id, docs[2]) == (
        run_id,
        pytest.approx(dict(zip(LABELS, scores[2], strict=True))),
    )
    assert browse.document_scores(store, project.id, docs[5]) == (run_id, {})
    with pytest.raises(DataError, match="score range"):
        browse.Filters(score_range=(0.8, 0.2))


# ---- reviewed: not --------------------------------------------------------------------------------


def test_a_pair_is_tagged_or_reviewed_not_and_undo_brings_back_the_other(store, project, docs):
    assert store.tag(project.id, docs[0], "billing")
    assert store.mark_not(project.id, docs[0], "billing")  # replaces the tag, in one action
    assert store.tags_for([docs[0]]) == {} and store.reviews_for([docs[0]]) == {docs[0]: ["billing"]}
    assert store.mark_not(project.id, docs[0], "billing") is False  # already
    assert store.untag(project.id, docs[0], "billing") is False  # untag leaves a mark alone
    assert store.undo_last(project.id) == [(docs[0], "billing")]
    assert store.tags_for([docs[0]]) == {docs[0]: ["billing"]} and store.reviews_for([docs[0]]) == {}
    assert store.mark_not_many(project.id, docs[1:4], "login") == 3
    assert store.unmark_not(project.id, docs[1], "login") and not store.unmark_not(project.id, docs[1], "login")
    store.undo_last(project.id)
    assert store.reviews_by_label(project.id)["login"] == docs[1:4]
    assert sorted(store.undo_last(project.id)) == [(d, "login") for d in docs[1:4]]  # the bulk mark, as one
    assert store.reviews_by_label(project.id) == {label: [] for label in LABELS}


def test_a_documents_decisions_are_one_action(store, project, docs):
    store.tag(project.id, docs[0], "login")
    done = store.set_states(
        project.id, [(docs[0], "billing", "tag"), (docs[0], "login", "not"), (docs[0], "shipping", None)]
    )
    assert (done.tagged, done.untagged, done.marked, done.unmarked) == (1, 1, 1, 0)
    assert store.tags_for([docs[0]]) == {docs[0]: ["billing"]} and store.reviews_for([docs[0]]) == {docs[0]: ["login"]}
    assert not store.set_states(project.id, [(docs[0], "billing", "tag")]).any  # nothing changed: no action
    assert sorted(store.undo_last(project.id)) == [(docs[0], "billing"), (docs[0], "login")]
    assert store.tags_for([docs[0]]) == {docs[0]: ["login"]} and store.reviews_for([docs[0]]) == {}
    with pytest.raises(DataError, match="unknown annotation state"):
        store.set_states(project.id, [(docs[0], "billing", "maybe")])
    with pytest.raises(DataError, match="unknown label"):
        store.set_states(project.id, [(docs[0], "sports", "not")])


def test_marks_never_reach_training_and_leave_the_quick_pass(store, project, docs):
    store.tag_many(project.id, docs[:2], "billing")
    before = store.tags_by_label(project.id)
    store.mark_not_many(project.id, docs[2:5], "billing")
    assert store.tags_by_label(project.id) == before  # what adaptation and scoring read
    assert store.tags_by_label(project.id, domain="target") == before
    scores = np.zeros((6, 3))
    scores[:, 0] = np.linspace(0.9, 0.4, 6)
    _scored(store, project.id, docs, scores)
    ranked = candidates.candidates(store, project.id, "billing", "likely")
    assert [c.document.ext_id for c in ranked] == ["d5"]  # tagged and reviewed-not documents are done


def test_coverage_counts_tagged_reviewed_not_and_unreviewed(store, project, docs):
    store.tag_many(project.id, docs[:2], "billing")
    store.mark_not_many(project.id, docs[2:5], "billing")
    store.add_documents(project.id, Corpus(("e1",), ("eval invoice",), (("billing",),), ("eval",)))
    store.mark_not(project.id, store.find_ext_ids(project.id, ["e1"])["e1"], "billing")  # not a target document
    billing = Services(store, autostart_worker=False).coverage(project.id)[0]
    assert (billing.positives, billing.reviewed_not, billing.unreviewed) == (2, 3, 1)


def test_marks_are_exported_and_measure_the_thresholds(store, project, docs, tmp_path):
    path = exporter.export_annotations(store, project.id, tmp_path / "plain.csv")
    assert "reviewed_not" not in pd.read_csv(path).columns  # a project without marks: the file as before
    store.tag(project.id, docs[0], "billing")
    store.mark_not(project.id, docs[1], "billing")
    store.mark_not(project.id, docs[1], "shipping")
    frame = pd.read_csv(
        exporter.export_annotations(store, project.id, tmp_path / "a.csv"), dtype=str, keep_default_na=False
    )
    assert list(frame.columns[:5]) == ["id", "text", "labels", "domain", "reviewed_not"]
    assert frame.set_index("id").loc["d1", "reviewed_not"] == "billing|shipping"
    assert frame.set_index("id").loc["d0", ["labels", "reviewed_not"]].tolist() == ["billing", ""]
    only = exporter.export_annotations(store, project.id, tmp_path / "o.jsonl", only_labelled=True)
    rows = pd.read_json(only, lines=True)
    assert rows["id"].tolist() == ["d0", "d1"] and rows["reviewed_not"].tolist() == [[], ["billing", "shipping"]]
    documents = pd.read_csv(exporter.export_documents(store, project.id, tmp_path / "d.csv"), dtype=str)
    assert documents.set_index("id").loc["d1", "reviewed_not"] == "billing|shipping"

    store.mark_not(project.id, docs[2], "billing")
    scores = np.full((6, 3), 0.2)
    scores[1, 0], scores[2, 0] = 0.9, 0.1  # d1 reviewed not billing, yet scored above the threshold
    run_id = _scored(store, project.id, docs, scores)
    table = decisions.decision_table(store, run_id).set_index("label")  # no calibration: the fixed 0.5
    assert table.loc["billing", "reviewed: not"] == 2 and table.loc["billing", "of them ≥ threshold"] == 1
    assert table.loc["login", "reviewed: not"] == 0 and table.loc["billing", "tags"] == 1
