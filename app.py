"""DALLMi Studio's Streamlit entry point (placeholder until the app issue lands)."""

import streamlit as st

st.set_page_config(page_title="DALLMi Studio", layout="wide")
st.title("DALLMi Studio")
st.info(
    "The app is being built. Meanwhile the engine works from the command line: "
    "`dallmi finetune-source`, `dallmi adapt`, `dallmi score`, `dallmi evaluate`, "
    "`dallmi bench-quality` (see README.md)."
)
