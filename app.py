"""DALLMi Studio: the Streamlit entry point (`streamlit run app.py`).

Page config, the one Services handle of this process (ui.services), the demo project on the first
start, the sidebar project picker, and st.navigation over the pages listed explicitly (app_pages/). Set
DALLMI_DATA_DIR to choose the data folder, DALLMI_NO_WORKER=1 to queue runs without starting a
worker process, DALLMI_WORKER_IDLE_EXIT (seconds, default 600, 0 = never) for how long the worker it
starts outlives the last app process, DALLMI_NO_DEMO=1 to skip the demo project,
DALLMI_PASSWORD_HASH (from `dallmi hash-password`) to ask for a password before anything else.
"""

import streamlit as st

import ui
from dallmi_core.errors import DallmiError

st.set_page_config(page_title="DALLMi Studio", page_icon=":material/model_training:", layout="wide")
ui.password_gate()  # first: with a password configured, nothing below runs until it is entered

try:
    ui.services()
except DallmiError as exc:  # e.g. an unwritable data folder: say how to fix it, nothing else works
    st.error(str(exc))
    st.stop()

demo_id = ui.ensure_demo()
# The page scripts live in app_pages/, not pages/: a pages/ folder beside the entry point switches
# Streamlit to its legacy multipage mode until st.navigation first runs in the process, so the first
# request after a restart that lands on a page URL (and every AppTest rerun) would skip this script.
page = st.navigation(
    {
        "Workflow": [
            st.Page("app_pages/projects.py", title="Projects", icon=":material/folder_open:", default=True),
            st.Page("app_pages/data.py", title="Data", icon=":material/upload_file:"),
            st.Page("app_pages/annotate.py", title="Annotate", icon=":material/label:"),
            st.Page("app_pages/adapt.py", title="Adapt", icon=":material/model_training:"),
            st.Page("app_pages/export.py", title="Export", icon=":material/download:"),
        ],
        "Results": [
            st.Page("app_pages/per_label_ap.py", title="Per-label AP", icon=":material/leaderboard:"),
            st.Page("app_pages/mixup_samples.py", title="MixUp samples", icon=":material/join_inner:"),
            st.Page("app_pages/domain_shift.py", title="Domain shift", icon=":material/compare_arrows:"),
        ],
    }
)
with st.sidebar:
    ui.project_picker(prefer=demo_id)
    st.caption(f"Data folder: `{ui.data_dir()}`")
ui.show_flash()
page.run()
