"""The app's page setup and its pages, titled and grouped, in one place: app.py applies them, and so
does a page that Streamlit ran in its legacy `pages/` mode, before anything draws (gate.start)."""

from __future__ import annotations

import streamlit as st


def configure_page() -> None:
    """The browser tab's title and icon, and the wide layout every page is drawn for."""
    st.set_page_config(page_title="DALLMi Studio", page_icon=":material/model_training:", layout="wide")


def pages() -> dict[str, list[st.Page]]:
    """The sidebar's sections and their pages, in workflow order."""
    return {
        "Workflow": [
            st.Page("pages/projects.py", title="Projects", icon=":material/folder_open:", default=True),
            st.Page("pages/data.py", title="Data", icon=":material/upload_file:"),
            st.Page("pages/annotate.py", title="Annotate", icon=":material/label:"),
            st.Page("pages/adapt.py", title="Adapt", icon=":material/model_training:"),
            st.Page("pages/export.py", title="Export", icon=":material/download:"),
        ],
        "Results": [
            st.Page("pages/per_label_ap.py", title="Per-label AP", icon=":material/leaderboard:"),
            st.Page("pages/mixup_samples.py", title="MixUp samples", icon=":material/join_inner:"),
            st.Page("pages/domain_shift.py", title="Domain shift", icon=":material/compare_arrows:"),
        ],
    }
