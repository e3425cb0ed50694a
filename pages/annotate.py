"""Annotate: a fast "is this <label>?" pass over ranked candidates, search with bulk tagging, coverage.

Positive-unlabeled: a document is only ever tagged positive; Skip leaves it unlabeled. Shortcuts:
A accept, S skip, U undo (st.button's `shortcut`; they do nothing while a text field has focus).
"""

import pandas as pd
import streamlit as st

from dallmi_core import DallmiError
from dallmi_core.app import candidates as ranking
from ui import gate, widgets

svc = gate.start()
project = gate.current_project()
st.title("Annotate")

coverage = svc.coverage(project.id)
label = widgets.label_picker(project, coverage)
widgets.coverage_meter(coverage, highlight=label)

STRATEGIES = {"likely": "Likely positives", "uncertain": "Most uncertain", "similar": "Similar to tagged"}
SKIPPED = f"skipped:{project.id}:{label}"  # document ids skipped in this session, per label

quick, bulk = st.tabs(["Quick pass", "Search and bulk tag"])

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
    candidates = None
    try:
        candidates = ranking.candidates(svc.store, project.id, label, strategy, limit=len(skipped) + 25)
    except DallmiError as exc:
        st.info(widgets.plain(str(exc)), icon=":material/info:")
        if strategy != "similar" and project.source_model:
            if st.button("Score the target documents with the source model", key="score_now"):
                with widgets.shown_errors():
                    run_id = svc.start_run(project.id, "score")
                    widgets.flash(f"Run {run_id} (scoring) is queued; candidates appear when it is done (Adapt page).")
                    st.rerun()
        elif strategy != "similar":
            st.caption(
                "This project has no source model to score with yet (fine-tune one from source data on the "
                "Data page). Meanwhile: tag a few positives from the search tab, then use 'Similar to tagged'."
            )
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
            accept, skip, undo, _ = st.columns([1, 1, 1, 3])
            if accept.button("Accept", type="primary", shortcut="A", key="accept", icon=":material/check:"):
                with widgets.shown_errors():
                    svc.store.tag(project.id, doc.id, label)
                    st.rerun()
            if skip.button("Skip", shortcut="S", key="skip", icon=":material/skip_next:"):
                st.session_state[SKIPPED] = sorted(skipped | {doc.id})
                st.rerun()
            if undo.button("Undo", shortcut="U", key="undo", icon=":material/undo:"):
                with widgets.shown_errors():
                    reverted = svc.store.undo_last(project.id)
                    names = ", ".join(sorted({name for _, name in reverted}))
                    widgets.flash(
                        f"Undid {len(reverted)} tag change(s) ({names})." if reverted else "Nothing to undo.", "info"
                    )
                    st.rerun()
            st.caption(f"{len(queue)} candidates in this batch · shortcuts: A accept, S skip, U undo")

# ---- search and bulk tagging ----------------------------------------------------------------------

with bulk:
    query = st.text_input(
        "Full-text search in the target documents", key="query", placeholder='words, "a phrase", or prefix*'
    )
    source = st.radio(
        "Rows",
        ["search", "similar"],
        horizontal=True,
        key="bulk_source",
        format_func={
            "search": "Search results",
            "similar": f"Most similar to the {widgets.md_escape(repr(label))} tags",
        }.get,
    )
    docs, scores = [], {}
    if source == "search" and query.strip():
        docs = widgets.attempt(svc.store.search, project.id, query, domain="target", limit=200) or []
    elif source == "similar":
        found = widgets.attempt(ranking.candidates, svc.store, project.id, label, "similar", limit=100) or []
        docs, scores = [c.document for c in found], {c.document.id: c.score for c in found}
    if docs:
        tags = svc.store.tags_for([d.id for d in docs])
        was = [label in tags.get(d.id, []) for d in docs]
        table = pd.DataFrame(
            {
                "tag": was,
                "id": [d.ext_id for d in docs],
                "text": [widgets.shorten(d.text, 300) for d in docs],
                "tagged with": [", ".join(tags.get(d.id, [])) for d in docs],
            }
        )
        if scores:
            table["similarity"] = [scores[d.id] for d in docs]
        edited = st.data_editor(
            table,
            hide_index=True,
            disabled=[c for c in table.columns if c != "tag"],
            key=f"bulk-{label}-{source}-{query}",
            column_config={
                "tag": st.column_config.CheckboxColumn(f"is {label}", help="Tick to tag, untick to untag"),
                "text": st.column_config.TextColumn(width="large"),
            },
        )
        ticked = [bool(v) for v in edited["tag"]]
        add = [d.id for d, now, before in zip(docs, ticked, was, strict=True) if now and not before]
        remove = [d.id for d, now, before in zip(docs, ticked, was, strict=True) if before and not now]
        left, right = st.columns(2)
        if left.button(
            f"Save: tag {len(add)}, untag {len(remove)}", disabled=not (add or remove), type="primary", key="save_ticks"
        ):
            with widgets.shown_errors():
                added = svc.store.tag_many(project.id, add, label) if add else 0
                removed = sum(svc.store.untag(project.id, doc_id, label) for doc_id in remove)
                widgets.flash(f"{widgets.md_escape(repr(label))}: tagged {added}, untagged {removed} document(s).")
                st.rerun()
        if right.button(f"Tag all {len(docs)} rows as {widgets.md_escape(repr(label))}", key="tag_all"):
            with widgets.shown_errors():
                added = svc.store.tag_many(project.id, [d.id for d in docs], label)
                widgets.flash(
                    f"Tagged {added} document(s) as {widgets.md_escape(repr(label))} (Undo reverts them as one action)."
                )
                st.rerun()
        with st.expander("Read the documents in full"):
            for d in docs[:50]:
                widgets.document_card(d, tags=tags.get(d.id, []))
    elif source == "search" and query.strip():
        st.caption("No target document matches.")
