"""The Annotate page's larger pieces: the filter controls, a document with its search matches marked,
the per-document view (every label's decision and score, saved as one action) and the undo button."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from dallmi_core.app import browse
from dallmi_core.app.services import PENDING
from ui import widgets

if TYPE_CHECKING:
    from dallmi_core import Document, Project, Services
    from dallmi_core.app.services import Refresh

STATE_NAMES = {
    None: "any",  # the first option: no state filter
    "tagged": "tagged",
    "untagged": "not tagged",
    "reviewed-not": "reviewed: not",
    "unreviewed": "unreviewed",
}
META_VALUES = 500  # distinct values offered per metadata column


def marked_html(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """The text as HTML, every character escaped, the matched spans inside <mark>: user text never
    becomes markup (a <script> or a Markdown link stays text), whitespace is kept."""
    parts, position = [], 0
    for start, end in sorted(spans):
        if start < position or end <= start:
            continue
        parts += [html.escape(text[position:start]), "<mark>", html.escape(text[start:end]), "</mark>"]
        position = end
    parts.append(html.escape(text[position:]))
    return '<div style="white-space: pre-wrap; overflow-wrap: anywhere">' + "".join(parts) + "</div>"


def marked_card(doc: Document, spans: Sequence[tuple[int, int]], *, tags=(), reviewed_not=(), limit=600) -> None:
    """widgets.document_card with the search matches marked; a long text shows the part around its
    first match, the whole text folded below."""
    if not spans:
        widgets.document_card(doc, tags=tags, caption=_not_caption(reviewed_not), limit=limit)
        return
    with st.container(border=True):
        line = f"`{doc.ext_id}` · {doc.domain}"
        if tags:
            line += " · tagged: " + ", ".join(widgets.md_escape(t) for t in tags)
        if reviewed_not:
            line += " · " + _not_caption(reviewed_not)
        st.caption(line)
        text = doc.text
        if len(text) <= limit:
            st.html(marked_html(text, spans))
            return
        start = max(0, min(spans[0][0] - limit // 4, len(text) - limit))
        window = [(a - start, min(b, start + limit) - start) for a, b in spans if a >= start and a < start + limit]
        tail = " …" if start + limit < len(text) else ""
        st.html(marked_html(("… " if start else "") + text[start : start + limit] + tail, _shift(window, start)))
        with st.expander(f"Show all ({len(text):,} characters)"):
            st.html(marked_html(text, spans))


def _shift(spans: list[tuple[int, int]], start: int) -> list[tuple[int, int]]:
    offset = 2 if start else 0  # the leading "… "
    return [(a + offset, b + offset) for a, b in spans]


def _not_caption(labels: Sequence[str]) -> str:
    return "reviewed: not " + ", ".join(widgets.md_escape(t) for t in labels) if labels else ""


def filter_controls(svc: Services, project: Project, label: str, query: str) -> browse.Filters:
    """Metadata values, the tag state for `label` and the latest model's score range, in an expander
    whose title counts the active ones; returns them with the search `query`."""
    state_key, score_key = f"f_state:{project.id}", f"f_score:{project.id}:{label}"
    columns = svc.store.meta_columns(project.id)
    meta_keys = {column: f"f_meta:{project.id}:{column}" for column in columns}
    active = sum(bool(st.session_state.get(k)) for k in meta_keys.values()) + bool(st.session_state.get(state_key))
    active += tuple(st.session_state.get(score_key, browse.FULL_RANGE)) != browse.FULL_RANGE
    with st.expander(  # keyed: the same block when its title (the count) changes, so it stays open
        "Filters" + (f" ({active} active)" if active else ""),
        icon=":material/filter_list:",
        key=f"filters:{project.id}",
    ):
        state = st.radio(
            f"Documents that are, for {widgets.md_escape(repr(label))}",
            list(STATE_NAMES),
            format_func=STATE_NAMES.get,
            horizontal=True,
            key=state_key,
            help="Reviewed: not = marked as not carrying the label. Unreviewed = neither tagged nor reviewed: not.",
        )
        meta = {}
        for column, key in meta_keys.items():
            counted = dict(svc.store.meta_values(project.id, column, limit=META_VALUES))
            if counted:
                more = " (the most frequent values)" if len(counted) == META_VALUES else ""
                meta[column] = tuple(
                    st.multiselect(
                        f"{widgets.md_escape(column)}{more}",
                        list(counted),
                        format_func=lambda v, c=counted: f"{v} ({c[v]:,})",
                        key=key,
                        placeholder="any value",
                    )
                )
        run_id, scores = browse.label_scores(svc.store, project.id, label)
        score_range = None
        if run_id is None:
            st.caption(f"No model has scored {widgets.md_escape(repr(label))} yet: no score filter.")
            st.session_state.pop(score_key, None)
        else:
            score_range = st.slider(
                f"Latest model's score for {widgets.md_escape(repr(label))} (run {run_id})",
                0.0,
                1.0,
                browse.FULL_RANGE,
                step=0.01,
                key=score_key,
                help="The full range filters nothing; a narrower one leaves out documents the run did not score.",
            )
    return browse.Filters(query, meta, state, score_range)


def undo_button(svc: Services, project_id: int, *, key: str, container=st) -> None:
    """Undo the latest annotation action still in effect (a tag, a bulk change, a document's decisions),
    in an on_click callback: undone before the script draws the label picker and coverage."""

    def undone(reverted: list[tuple[int, str]]) -> None:
        names = ", ".join(sorted({name for _, name in reverted}))
        widgets.flash(f"Undid {len(reverted)} tag change(s) ({names})." if reverted else "Nothing to undo.", "info")

    container.button(
        "Undo",
        shortcut="U" if key == "undo" else None,
        key=key,
        icon=":material/undo:",
        on_click=widgets.store_action,
        args=(svc.store.undo_last, project_id),
        kwargs={"then": undone},
    )


def document_view(svc: Services, project: Project, docs: Sequence[Document], spans: dict[int, tuple]) -> None:
    """One document of `docs` at a time: every label's decision (tagged / reviewed: not / neither) and
    the latest model's score beside it, saved as one undoable action."""
    if not docs:
        st.caption("No document to show.")
        return
    ids = [d.id for d in docs]
    if st.session_state.get("one_doc") not in ids:
        st.session_state["one_doc"] = ids[0]
    by_id = {d.id: d for d in docs}

    def step(by: int) -> None:
        position = ids.index(st.session_state["one_doc"]) + by
        st.session_state["one_doc"] = ids[min(max(position, 0), len(ids) - 1)]

    # a row whose buttons keep their labels whole; the picker takes the rest of the width
    row = st.container(horizontal=True, vertical_alignment="bottom", gap="small")
    row.selectbox(
        f"Document ({len(ids)} in this list)",
        ids,
        key="one_doc",
        format_func=lambda i: f"{by_id[i].ext_id} · {widgets.shorten(by_id[i].text, 80)}",
    )
    row.button("Previous", key="one_prev", on_click=step, args=(-1,), icon=":material/chevron_left:")
    row.button("Next", key="one_next", on_click=step, args=(1,), icon=":material/chevron_right:")
    doc = by_id[st.session_state["one_doc"]]
    tags = set(svc.store.tags_for([doc.id]).get(doc.id, []))
    marks = set(svc.store.reviews_for([doc.id]).get(doc.id, []))
    marked_card(doc, spans.get(doc.id, ()), tags=sorted(tags), reviewed_not=sorted(marks), limit=2000)
    run_id, scores = browse.document_scores(svc.store, project.id, doc.id)
    labels = list(project.labels)
    table = pd.DataFrame(
        {
            "label": labels,
            "score": [scores.get(name) for name in labels],
            "yes": [name in tags for name in labels],
            "not": [name in marks for name in labels],
        }
    )
    edited = st.data_editor(
        table,
        hide_index=True,
        disabled=["label", "score"],
        key="one-" + widgets.digest(doc.id, sorted(tags), sorted(marks)),  # saved: a fresh editor
        column_config={
            "score": st.column_config.NumberColumn(
                "latest model's score", format="%.3f", help=f"run {run_id}" if run_id else "no scoring run yet"
            ),
            "yes": st.column_config.CheckboxColumn("tagged", help="The document carries the label"),
            "not": st.column_config.CheckboxColumn("reviewed: not", help="Looked at: it does not carry the label"),
        },
    )
    both = [name for name, yes, no in zip(labels, edited["yes"], edited["not"], strict=True) if yes and no]
    states = [
        (doc.id, name, "tag" if yes else "not" if no else None)
        for name, yes, no in zip(labels, edited["yes"], edited["not"], strict=True)
    ]
    current = {name: "tag" if name in tags else "not" if name in marks else None for name in labels}
    changes = [s for s in states if s[2] != current[s[1]]]
    if both:
        st.warning(f"Both ticked for {', '.join(map(widgets.md_escape, both))}: choose tagged or reviewed: not.")
    actions = st.container(horizontal=True, gap="small")
    if actions.button(
        f"Save {len(changes)} change(s)", type="primary", key="one_save", disabled=bool(both) or not changes
    ):
        with widgets.shown_errors():
            done = svc.store.set_states(project.id, changes)
            widgets.flash(
                f"{widgets.md_escape(doc.ext_id)}: tagged {done.tagged}, untagged {done.untagged}, reviewed: not "
                f"{done.marked}, unmarked {done.unmarked} (Undo reverts them as one action)."
            )
            st.rerun()
    undo_button(svc, project.id, key="undo_one", container=actions)
    if run_id is None:
        st.caption("No scores yet: a 'score' or adapt run gives every label a score.")
    elif not scores:
        st.caption(f"Run {run_id} did not score this document (imported after it?).")


@st.fragment(run_every=2)
def refresh_notice(svc: Services, refresh: Refresh) -> None:
    """Says which score run refreshes the candidates and why; the whole page reruns (and re-ranks) once
    it has finished."""
    if svc.store.get_run(refresh.run_id).status not in PENDING:
        st.rerun()
    st.caption(
        f":material/autorenew: Run {refresh.run_id} re-scores the documents ({widgets.md_escape(refresh.reason)}); "
        "the candidates update when it is done."
    )
