"""The Annotate page as Prodigy / Label Studio / Argilla users expect it: search with OR and the matches
marked (user text stays inert), filters by metadata, tag state and score, one document with every
label's decision saved as one undoable action, and "reviewed: not" in the quick pass and coverage."""

from __future__ import annotations

import numpy as np
import test_pages
from test_pages import _app, _finished_run, _texts

from dallmi_core.store import content_hash

env, seeded = test_pages.env, test_pages.seeded  # the page tests' fixtures: a seeded project, no worker
HOSTILE = "<script>alert(1)</script> [click me](http://evil.example) refund **bold** <b>x</b>"


def _add(store, project_id, rows):
    """Target documents with metadata, as an import of extra columns leaves them."""
    store.insert_documents(
        project_id, [(ext, "target", text, meta, None, content_hash(text)) for ext, text, meta in rows]
    )
    store.add_meta_columns(project_id, sorted({k for _, _, meta in rows for k in meta}))
    return store.find_ext_ids(project_id, [r[0] for r in rows])


def _bulk_ids(at) -> list[str]:
    editors = [e for e in at.data_editor if e.key.startswith("bulk-")]
    return list(editors[0].value["id"]) if editors else []


def test_search_with_or_marks_the_matches_and_keeps_user_text_inert(seeded):
    store, pid = seeded.svc.store, seeded.project.id
    _add(store, pid, [("x1", HOSTILE, {"channel": "app"})])
    at = _app("Annotate")
    at.text_input(key="query").input("refund OR parcel").run()
    assert not at.exception
    expected = store.matching_ids(pid, query="refund OR parcel")
    assert len(expected) > len(store.matching_ids(pid, query="refund"))  # OR widened the search
    assert _bulk_ids(at) == list(store.ext_ids(expected[:200]).get(i) for i in expected[:200])
    bodies = [h.proto.body for h in at.get("html")]
    assert bodies and all("<mark>" in body for body in bodies)
    hostile = next(body for body in bodies if "evil.example" in body)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile and "<script" not in hostile
    assert "<mark>refund</mark>" in hostile and "&lt;b&gt;x&lt;/b&gt;" in hostile
    assert "[click me](http://evil.example)" in hostile and "<a " not in hostile  # a Markdown link stays text


def test_filters_by_metadata_tag_state_and_score_combine_with_search(seeded):
    store, pid = seeded.svc.store, seeded.project.id
    ids = _add(
        store,
        pid,
        [
            ("m1", "refund for the parcel", {"channel": "app"}),
            ("m2", "refund the invoice", {"channel": "app"}),
            ("m3", "refund now", {"channel": "web"}),
            ("m4", "refund again", {"channel": "app"}),
            ("m5", "late parcel", {"channel": "app"}),  # no match for the search
        ],
    )
    at = _app("Annotate")
    at.text_input(key="query").input("refund").run()
    at.multiselect(key=f"f_meta:{pid}:channel").select("app").run()
    assert not at.exception and sorted(_bulk_ids(at)) == ["m1", "m2", "m4"]
    store.tag(pid, ids["m1"], "billing")
    store.mark_not(pid, ids["m2"], "billing")
    at.radio(key=f"f_state:{pid}").set_value("unreviewed").run()
    assert _bulk_ids(at) == ["m4"]
    at.radio(key=f"f_state:{pid}").set_value("reviewed-not").run()
    assert _bulk_ids(at) == ["m2"]
    assert "Filters (2 active)" in [e.label for e in at.expander]

    docs = store.document_ids(pid, "target")
    scores = np.zeros((len(docs), 3), dtype=np.float32)
    scores[docs.index(ids["m1"]), 0], scores[docs.index(ids["m4"]), 0] = 0.8, 0.3
    _finished_run(store, pid, "score", scores, docs)
    at.radio(key=f"f_state:{pid}").set_value(None).run()
    at.slider(key=f"f_score:{pid}:billing").set_range(0.5, 1.0).run()
    assert not at.exception and _bulk_ids(at) == ["m1"]
    editor = next(e for e in at.data_editor if e.key.startswith("bulk-"))
    assert list(editor.value["score"]) == [np.float32(0.8)]


def test_one_document_shows_every_label_with_its_score_and_saves_them_as_one_action(seeded):
    store, pid, docs = seeded.svc.store, seeded.project.id, seeded.target
    scores = np.tile(np.array([0.9, 0.2, 0.6], dtype=np.float32), (len(docs), 1))
    _finished_run(store, pid, "score", scores, docs)
    store.tag(pid, docs[0], "login")
    at = _app("Annotate")
    editor = next(e for e in at.data_editor if e.key.startswith("one-"))
    assert list(editor.value["label"]) == ["billing", "login", "shipping"]
    assert list(editor.value["score"]) == list(scores[0]) and list(editor.value["yes"]) == [False, True, False]
    at.session_state[editor.key] = {
        "edited_rows": {0: {"yes": True}, 1: {"yes": False, "not": True}, 2: {"not": True}},
        "added_rows": [],
        "deleted_rows": [],
    }
    at.run()
    assert at.button(key="one_save").proto.label == "Save 3 change(s)"
    at.button(key="one_save").click().run()
    assert not at.exception
    assert store.tags_for([docs[0]]) == {docs[0]: ["billing"]}
    assert sorted(store.reviews_for([docs[0]])[docs[0]]) == ["login", "shipping"]
    at.button(key="undo_one").click().run()
    assert store.tags_for([docs[0]]) == {docs[0]: ["login"]} and store.reviews_for([docs[0]]) == {}
    assert at.info[0].value.startswith("Undid 3 tag change(s)")  # one action, one undo

    at.button(key="one_next").click().run()
    assert at.selectbox(key="one_doc").value == docs[1]
    editor = next(e for e in at.data_editor if e.key.startswith("one-"))
    at.session_state[editor.key] = {
        "edited_rows": {0: {"yes": True, "not": True}},
        "added_rows": [],
        "deleted_rows": [],
    }
    at.run()
    assert at.button(key="one_save").disabled and "Both ticked for billing" in at.warning[0].value


def test_not_in_the_quick_pass_is_a_review_the_coverage_counts(seeded):
    store, pid, docs = seeded.svc.store, seeded.project.id, seeded.target
    scores = np.zeros((30, 3), dtype=np.float32)
    scores[:, 0] = np.linspace(0.0, 0.99, 30)
    _finished_run(store, pid, "score", scores, docs)
    at = _app("Annotate")
    assert at.button(key="reject").proto.shortcut.lower() == "n"
    at.button(key="reject").click().run()
    assert not at.exception and store.reviews_for([docs[29]]) == {docs[29]: ["billing"]}
    assert store.tags_for([docs[29]]) == {} and "t28" in _texts(at)  # reviewed: the next candidate
    billing = seeded.svc.coverage(pid)[0]
    assert (billing.positives, billing.reviewed_not, billing.unreviewed) == (0, 1, 29)
    assert (
        "0 of the recommended 8 positives tagged · 1 reviewed: not · 29 unreviewed" in at.get("progress")[0].proto.text
    )
    at.button(key="undo").click().run()
    assert store.reviews_for([docs[29]]) == {} and "t29" in _texts(at)


def test_labels_are_added_and_renamed_on_the_projects_page(seeded):
    store, pid, docs = seeded.svc.store, seeded.project.id, seeded.target
    store.tag(pid, docs[0], "billing")
    store.mark_not(pid, docs[1], "billing")
    at = _app("Projects")
    at.text_input(key=f"add_labels-{pid}").input("refund, warranty").run()
    at.button(key="add_labels").click().run()
    assert not at.exception and store.get_project(pid).labels[-2:] == ("refund", "warranty")
    at.selectbox(key=f"rename_label_from-{pid}").select("billing").run()
    at.text_input(key=f"rename_label_to-{pid}").input("payments").run()
    at.button(key="rename_label").click().run()
    assert not at.exception and "Renamed 'billing' to 'payments'." in at.success[0].value
    assert store.get_project(pid).labels == ("payments", "login", "shipping", "refund", "warranty")
    assert store.tags_for([docs[0]]) == {docs[0]: ["payments"]} and store.reviews_for([docs[1]]) == {
        docs[1]: ["payments"]
    }
    at.text_input(key=f"rename_label_to-{pid}").input("login").run()
    at.selectbox(key=f"rename_label_from-{pid}").select("shipping").run()
    at.button(key="rename_label").click().run()
    assert not at.exception and "duplicate label names: login" in at.error[0].value


def _shown_tab(at) -> str:
    """The label of the tab the page shows (the tab container's selected tab)."""
    container = next(node for node in at._tree if getattr(node, "type", None) == "tab_container")
    return [tab.label for tab in at.tabs][container.proto.tab_container.default_tab_index]


def test_saving_in_the_bulk_tab_keeps_the_bulk_tab_shown(seeded):
    store, pid = seeded.svc.store, seeded.project.id
    at = _app("Annotate")
    assert _shown_tab(at) == "Quick pass"
    at.session_state["annotate_tab"] = "Search and bulk tag"  # what a click on the tab sends
    at.radio(key="bulk_source").set_value("search").run()
    at.text_input(key="query").input("refund OR parcel").run()
    assert not at.exception and _shown_tab(at) == "Search and bulk tag"
    editor = next(e for e in at.data_editor if e.key.startswith("bulk-"))
    first = editor.value["id"][0]
    at.session_state[editor.key] = {"edited_rows": {0: {"tag": True}}, "added_rows": [], "deleted_rows": []}
    at.run()
    at.button(key="save_ticks").click().run()
    assert not at.exception and "tagged 1, untagged 0" in at.success[0].value
    doc_id = store.find_ext_ids(pid, [first])[first]
    assert store.tags_for([doc_id]) == {doc_id: ["billing"]}
    assert _shown_tab(at) == "Search and bulk tag"  # Save's rerun stays on the bulk tab
    assert at.session_state["annotate_tab"] == "Search and bulk tag"


def test_the_label_picker_counts_an_accept_and_an_undo_in_the_run_the_click_starts(seeded, monkeypatch):
    import ui.widgets

    store, pid, docs = seeded.svc.store, seeded.project.id, seeded.target
    scores = np.zeros((30, 3), dtype=np.float32)
    scores[:, 1] = np.linspace(0.0, 0.99, 30)
    _finished_run(store, pid, "score", scores, docs)
    drawn, real = [], ui.widgets.label_picker

    def recording(project, coverage, **options):  # the login count of every picker a script run draws
        drawn.append(next(c.positives for c in coverage if c.label == "login"))
        return real(project, coverage, **options)

    monkeypatch.setattr(ui.widgets, "label_picker", recording)
    at = _app("Annotate")
    at.selectbox(key="label_picker").select("login").run()
    assert at.selectbox(key="label_picker").proto.options[1] == "login  ✗ 0/8 tagged"
    drawn.clear()
    at.button(key="accept").click().run()
    assert not at.exception and store.tags_for([docs[29]]) == {docs[29]: ["login"]}
    assert drawn == [1]  # no run drew the count from before the accept
    box = at.selectbox(key="label_picker")
    assert box.value == "login" and box.proto.options[1] == "login  · 1/8 tagged"
    assert box.proto.set_value and box.proto.raw_value == "login  · 1/8 tagged"  # the box's own text, too
    assert "**login**: 1 of the recommended 8" in at.get("progress")[0].proto.text
    drawn.clear()
    at.button(key="undo").click().run()
    assert not at.exception and store.tags_for([docs[29]]) == {}
    assert drawn == [0] and at.info[0].value == "Undid 1 tag change(s) (login)."
    box = at.selectbox(key="label_picker")
    assert box.value == "login" and box.proto.raw_value == "login  ✗ 0/8 tagged" and box.proto.set_value
    at.run()  # nothing changed: the box is left as the browser has it
    assert not at.selectbox(key="label_picker").proto.set_value


def test_the_quick_pass_says_a_source_fine_tuning_is_under_way_instead_of_asking_for_one(seeded):
    at = _app("Annotate")
    assert "no source model to score with yet (fine-tune one" in _texts(at)
    run_id = seeded.svc.start_run(seeded.project.id, "finetune-source", {"epochs": 1.0})  # queued: no worker
    at.run()
    shown = _texts(at)
    assert f"The source model is being fine-tuned (run {run_id}" in shown and "fine-tune one" not in shown
