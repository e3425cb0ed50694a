"""Annotate: a fast "is this <label>?" pass over ranked candidates, search and filters with bulk
tagging, one document with every label's decision, coverage.

Positive-unlabeled: a tag is a positive; "reviewed: not" records that a document was looked at and does
not carry the label (it measures, it never trains); Skip leaves it unlabeled. Shortcuts: A accept,
N not, S skip, U undo (st.button's `shortcut`; they do nothing while a text field has focus).
"""

import pandas as pd
import streamlit as st

from dallmi_core import DallmiError
from dallmi_core.app import browse
from dallmi_core.app import candidates as ranking
from ui import annotate_views as views
from ui import gate, widgets

svc = gate.start()
project = gate.current_project()
st.title("Annotate")

coverage = svc.coverage(project.id)
label = widgets.label_picker(project, coverage)
widgets.coverage_meter(coverage, highlight=label)

STRATEGIES = {"likely": "Likely positives", "uncertain": "Most uncertain", "similar": "Similar to tagged"}
SKIPPED = f"skipped:{project.id}:{label}"  # document ids skipped in this session, per label

# Stateful tabs (a key and on_change): the selected tab is a widget value kept in st.session_state, so
# a rerun (Save, Accept, a flash message above the tabs) keeps it instead of going back to the first.
TABS = ["Quick pass", "Search and bulk tag", "One document"]
quick, bulk, single = st.tabs(TABS, key="annotate_tab", on_change="rerun")

# ---- the quick binary pass -----------------------------------------------------------------------

with quick:
    strategy = st.radio(
        "Candidates",
        list(STRATEGIES),
        format_func=STRATEGIES.get,
        horizontal=True,
        key="strategy",
        help="Likely/uncertain rank by the latest predictions of a score or "
        "adapt run; similar ranks by TF-IDF similarity to the documents tagged with this label.",
    )
    skipped = set(st.session_state.get(SKIPPED, []))
    refresh = None
    if strategy != "similar":  # stale predictions (a newer model, new documents, new tags): re-score them
        with widgets.shown_errors():
            refresh = svc.refresh_predictions(project.id)
    candidates = None
    try:
        candidates = ranking.candidates(svc.store, project.id, label, strategy, limit=len(skipped) + 25)
    except DallmiError as exc:
        st.info(widgets.plain(str(exc)), icon=":material/info:")
        if refresh is None and strategy != "similar" and not ranking.newest_model(svc.store, project.id):
            finetuning = svc.pending_finetune(project.id)
            st.caption(
                (
                    f"The source model is being fine-tuned (run {finetuning.id}, progress on the Adapt page); "
                    "its scores rank the candidates here once it is done."
                    if finetuning
                    else "This project has no source model to score with yet (fine-tune one from source data on "
                    "the Data page)."
                )
                + " Meanwhile: tag a few positives from the search tab, then use 'Similar to tagged'."
            )
    if refresh is not None:
        views.refresh_notice(svc, refresh)
    if candidates is not None:
        queue = [c for c in candidates if c.document.id not in skipped]
        if not queue:
            st.success(f"No untagged candidate left for {widgets.md_escape(repr(label))} with this strategy.")
            if skipped and st.button("Show the skipped ones again", key="unskip"):
                st.session_state.pop(SKIPPED, None)
                st.rerun()
        else:
            candidate = queue[0]
            doc = candidate.document
            measure = "similarity" if strategy == "similar" else "model confidence"
            st.markdown(f"### Is this **{widgets.md_escape(label)}**?")
            st.progress(
                min(max(candidate.score, 0.0), 1.0),
                text=f"{measure}: {candidate.score:.3f}" + (f" (run {candidate.run_id})" if candidate.run_id else ""),
            )
            widgets.document_card(doc, tags=svc.store.tags_for([doc.id]).get(doc.id, []))
            # sized to their labels, in one row: fixed columns cut "Not <label>" short on a laptop screen
            row = st.container(horizontal=True, gap="small")
            # on_click callbacks: the tag is stored before the next script run draws the label picker and
            # the coverage meter above, so both count it at once (no run that draws the old count first).
            row.button(
                "Accept",
                type="primary",
                shortcut="A",
                key="accept",
                icon=":material/check:",
                on_click=widgets.store_action,
                args=(svc.store.tag, project.id, doc.id, label),
            )
            row.button(
                f"Not {widgets.md_escape(label)}",
                shortcut="N",
                key="reject",
                icon=":material/close:",
                on_click=widgets.store_action,
                args=(svc.store.mark_not, project.id, doc.id, label),
            )
            if row.button("Skip", shortcut="S", key="skip", icon=":material/skip_next:"):
                st.session_state[SKIPPED] = sorted(skipped | {doc.id})
                st.rerun()
            views.undo_button(svc, project.id, key="undo", container=row)
            st.caption(
                f"{len(queue)} candidates in this batch · shortcuts: A accept, N reviewed: not "
                f"{widgets.md_escape(label)}, S skip, U undo"
            )

# ---- search, filters and bulk tagging ------------------------------------------------------------

with bulk:
    query = st.text_input(
        "Full-text search in the target documents",
        key="query",
        placeholder='words, "a phrase", prefix*, refund OR chargeback',
        help="All words must match; OR between two terms lets either match (it binds the terms beside it: "
        "`refund card OR cash` is refund AND (card OR cash)); quote a phrase; word* matches a prefix.",
    )
    filters = views.filter_controls(svc, project, label, query)
    source = st.radio(
        "Rows",
        ["search", "similar"],
        horizontal=True,
        key="bulk_source",
        format_func={
            "search": "Search and filter results",
            "similar": f"Most similar to the {widgets.md_escape(repr(label))} tags",
        }.get,
    )
    docs, scores, spans, listing = [], {}, {}, None
    if source == "search" and filters.active:
        listing = widgets.attempt(browse.browse, svc.store, project.id, label, filters, limit=200)
        if listing is not None:
            docs = [row.document for row in listing.rows]
            spans = {row.document.id: row.spans for row in listing.rows}
            if listing.run_id is not None:
                scores = {row.document.id: row.score for row in listing.rows}
    elif source == "similar":
        found = widgets.attempt(ranking.candidates, svc.store, project.id, label, "similar", limit=100) or []
        docs, scores = [c.document for c in found], {c.document.id: c.score for c in found}
    if docs:
        tags, marks = svc.store.tags_for([d.id for d in docs]), svc.store.reviews_for([d.id for d in docs])
        was = [label in tags.get(d.id, []) for d in docs]
        was_not = [label in marks.get(d.id, []) for d in docs]
        before = ["tag" if t else "not" if n else None for t, n in zip(was, was_not, strict=True)]
        table = pd.DataFrame(
            {
                "tag": was,
                "not": was_not,
                "id": [d.ext_id for d in docs],
                "text": [widgets.shorten(d.text, 300) for d in docs],
                "tagged with": [", ".join(tags.get(d.id, [])) for d in docs],
            }
        )
        if scores:
            table["similarity" if source == "similar" else "score"] = [scores[d.id] for d in docs]
        if listing is not None:
            shown = f"the first {len(docs)} of {listing.total:,}" if listing.total > len(docs) else f"{len(docs)}"
            unscored = f"; {listing.unscored:,} the run did not score are left out" if listing.unscored else ""
            st.caption(f"{shown} matching target documents{unscored}.")
        edited = st.data_editor(
            table,
            hide_index=True,
            disabled=[c for c in table.columns if c not in ("tag", "not")],
            key="bulk-" + widgets.digest(label, source, [d.id for d in docs], before),  # new rows, a new editor
            column_config={
                "tag": st.column_config.CheckboxColumn(f"is {label}", help="Tick to tag, untick to untag"),
                "not": st.column_config.CheckboxColumn(
                    "reviewed: not",
                    help=f"Looked at: not {widgets.md_escape(label)} (measures the model, never trains it)",
                ),
                "text": st.column_config.TextColumn(width="large"),
            },
        )
        wanted = ["tag" if t else "not" if n else None for t, n in zip(edited["tag"], edited["not"], strict=True)]
        both = sum(bool(t and n) for t, n in zip(edited["tag"], edited["not"], strict=True))
        changes = [(d.id, label, w) for d, w, b in zip(docs, wanted, before, strict=True) if w != b]
        if both:
            st.warning(f"{both} row(s) have both boxes ticked: choose tagged or reviewed: not.")
        actions = st.container(horizontal=True, gap="small")  # each button as wide as its label
        if actions.button(
            f"Save {len(changes)} change(s)", disabled=not changes or bool(both), type="primary", key="save_ticks"
        ):
            with widgets.shown_errors():
                done = svc.store.set_states(project.id, changes)
                widgets.flash(
                    f"{widgets.md_escape(repr(label))}: tagged {done.tagged}, untagged {done.untagged}"
                    + (
                        f", reviewed: not {done.marked}, unmarked {done.unmarked}"
                        if done.marked or done.unmarked
                        else ""
                    )
                    + " document(s) (Undo reverts them as one action)."
                )
                st.rerun()
        if actions.button(f"Tag all {len(docs)} rows as {widgets.md_escape(repr(label))}", key="tag_all"):
            with widgets.shown_errors():
                added = svc.store.tag_many(project.id, [d.id for d in docs], label)
                widgets.flash(
                    f"Tagged {added} document(s) as {widgets.md_escape(repr(label))} (Undo reverts them as one action)."
                )
                st.rerun()
        untagged = [d.id for d, b in zip(docs, before, strict=True) if b is None]
        if actions.button(f"Mark the {len(untagged)} unreviewed rows: not {widgets.md_escape(label)}", key="not_all"):
            with widgets.shown_errors():
                marked = svc.store.mark_not_many(project.id, untagged, label)
                widgets.flash(f"Marked {marked} document(s) reviewed: not {widgets.md_escape(repr(label))}.")
                st.rerun()
        with st.expander("Read the documents in full, matches marked", expanded=bool(query.strip())):
            for d in docs[:50]:
                views.marked_card(d, spans.get(d.id, ()), tags=tags.get(d.id, []), reviewed_not=marks.get(d.id, []))
    elif source == "search" and filters.active:
        st.caption("No target document matches.")

# ---- one document, every label --------------------------------------------------------------------

with single:
    if not docs:
        listing = widgets.attempt(browse.browse, svc.store, project.id, label, browse.Filters(), limit=200)
        docs = [row.document for row in listing.rows] if listing else []
        st.caption("The first target documents in id order: search or filter on the previous tab to choose others.")
    else:
        st.caption("The documents of the previous tab's list.")
    views.document_view(svc, project, docs, spans)
