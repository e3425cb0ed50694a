"""DALLMi Studio: the Streamlit entry point (`streamlit run app.py`).

Page config, the password gate and the one Services handle of this process (gate.prepare), the
demo project on the first start, the sidebar project picker (the project lives in the URL,
`?project=<id>`), and st.navigation over the pages of ui/navigation.py. Each page begins with
gate.start(), which does the same when Streamlit runs the page without this script (the first
request after a server start on a page URL: ui/gate.py).
Set DALLMI_DATA_DIR to choose the data folder, DALLMI_NO_WORKER=1 to queue runs without starting a
worker process, DALLMI_WORKER_IDLE_EXIT (seconds, default 600, 0 = never) for how long the worker it
starts outlives the last app process, DALLMI_NO_DEMO=1 to skip the demo project,
DALLMI_PASSWORD_HASH (from `dallmi hash-password`) to ask for a password before anything else.
"""

import streamlit as st

from ui import gate, navigation, session, widgets

navigation.configure_page()
with gate.app_run():
    gate.prepare()  # first: with a password configured, nothing below runs until it is entered
    demo_id = session.ensure_demo()
    page = st.navigation(navigation.pages())
    gate.sidebar(prefer=demo_id)
    widgets.show_flash()
    page.run()
