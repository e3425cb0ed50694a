"""Add labels to a project and rename one (tags, reviewed-not marks, gold labels, scores, thresholds
and the app's model folders follow the new name: dallmi_core/app/labels.py)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import streamlit as st

from dallmi_core.app import labels
from ui import widgets

if TYPE_CHECKING:
    from dallmi_core import Project, Services


def label_editor(svc: Services, project: Project) -> None:
    with st.expander("Labels: add or rename", icon=":material/label:"):
        add, rename = st.columns(2)
        with add:
            text = st.text_input("New labels", key=f"add_labels-{project.id}", placeholder="refund, warranty")
            st.caption("Comma-separated. The source model has no output for them until it is fine-tuned again.")
            if st.button("Add", key="add_labels", disabled=not text.strip()):
                names = [part.strip() for part in re.split(r"[,\n]", text) if part.strip()]
                with widgets.shown_errors():
                    labels.add_labels(svc.store, project.id, names)
                    widgets.flash(f"Added {len(names)} label(s): {', '.join(map(widgets.md_escape, names))}.")
                    st.rerun()
        with rename:
            old = st.selectbox("Rename the label", list(project.labels), key=f"rename_label_from-{project.id}")
            new = st.text_input("to", key=f"rename_label_to-{project.id}")
            st.caption("Its tags, reviewed-not marks, gold labels, stored scores and thresholds keep the new name.")
            if st.button("Rename label", key="rename_label", disabled=not new.strip() or new.strip() == old):
                with widgets.shown_errors():
                    labels.rename_label(svc.store, project.id, old, new)
                    widgets.flash(f"Renamed {widgets.md_escape(repr(old))} to {widgets.md_escape(repr(new.strip()))}.")
                    st.rerun()
