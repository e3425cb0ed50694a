"""What every page run needs before it draws: the password gate, the services handle, the current
project. Kept apart from the widgets so each page can be safe on its own.

A `pages/` folder beside app.py puts Streamlit in its legacy multipage mode until st.navigation first
runs in the process: the first request after a server start that lands on a page URL runs that page
script without app.py, under a sidebar titled from file names. So app.py runs its pages inside
`app_run()`, and each page begins with `start()`, which, outside app.py, registers the app's own
navigation, applies the gate, opens the services and draws the project picker itself.
The current project lives in the URL (`?project=<id>`), so a reload, a new tab and a shared link keep
it; st.session_state only mirrors it.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from dallmi_core import ConfigError, DallmiError, Project, Services
from dallmi_core.app import auth
from ui import navigation, session, widgets

PROJECT_KEY = "project_id"
QUERY_KEY = "project"
_AUTH_KEY = "_authenticated_hash"
_run = threading.local()  # set while app.py runs this script run (a page run inside it)


# ---- one page run --------------------------------------------------------------------------------


@contextmanager
def app_run() -> Iterator[None]:
    """app.py's whole script run: a page run inside it skips what app.py has done already."""
    _run.inside_app = True
    try:
        yield
    finally:
        _run.inside_app = False


def prepare() -> Services:
    """The gate, then the services handle (an unusable data folder stops the run with its fix)."""
    password_gate()
    try:
        return session.services()
    except DallmiError as exc:
        st.error(str(exc))
        st.stop()


def start() -> Services:
    """A page's first call: inside app.py, its services. Run on its own (Streamlit's legacy `pages/`
    mode, which lasts until st.navigation first runs in the process), it registers the app's titled
    navigation over the legacy one derived from file names, then applies the same gate, services and
    sidebar project picker app.py draws. No rerun: it would drop the click that started this run."""
    if getattr(_run, "inside_app", False):
        return session.services()
    ctx = get_script_run_ctx()
    # What app.py draws, drawn as the main script (st.navigation's own choice for the rest of a run):
    # the gate's and the picker's widgets keep the ids they have under app.py, and once the block ends
    # this page's widgets keep theirs, so the next run, through app.py, finds every widget's state.
    with ctx.run_with_active_hash(ctx.pages_manager.main_script_hash):
        navigation.configure_page()
        st.navigation(navigation.pages())
        svc = prepare()
        sidebar(prefer=session.ensure_demo())
        widgets.show_flash()
    return svc


def sidebar(prefer: int | None) -> None:
    """The sidebar below the navigation: the project picker and the data folder."""
    with st.sidebar:
        project_picker(prefer=prefer)
        st.caption(f"Data folder: `{session.data_dir()}`")


# ---- access --------------------------------------------------------------------------------------


def _configured_hash() -> str | None:
    """$DALLMI_PASSWORD_HASH, else password_hash in .streamlit/secrets.toml (no secrets file: None)."""
    try:
        secrets = {auth.SECRET_KEY: st.secrets.get(auth.SECRET_KEY)}
    except FileNotFoundError as exc:  # StreamlitSecretNotFoundError: none at all, or one that cannot be read
        if getattr(exc, "error_id", None) != "no-secrets-found":  # it may hold the hash: fail closed
            raise ConfigError(f"the secrets file cannot be read ({exc}). Fix .streamlit/secrets.toml.") from exc
        secrets = {}
    return auth.configured_hash(secrets)


def password_gate() -> None:
    """Stop the script, before anything of any project renders, until this session has entered the
    configured password; a no-op when none is configured. A malformed hash shows only its error."""
    try:
        stored = _configured_hash()
    except DallmiError as exc:
        st.error(f"The app's password is misconfigured: {exc}", icon=":material/lock:")
        st.stop()
    if stored is None or hmac.compare_digest(str(st.session_state.get(_AUTH_KEY, "")).encode(), stored.encode()):
        if stored is not None and st.sidebar.button("Log out", key="logout", icon=":material/logout:"):
            st.session_state.clear()
            st.rerun()
        return
    st.title("DALLMi Studio")
    with st.form("login"):
        password = st.text_input("Password", type="password", key="password")
        entered = st.form_submit_button("Log in", type="primary")
    if entered:
        if auth.verify_password(password, stored):
            st.session_state.pop("password", None)
            st.session_state[_AUTH_KEY] = stored
            st.rerun()
        time.sleep(0.5)  # with scrypt, a few guesses per second per session at most
        st.error("Wrong password.", icon=":material/lock:")
    st.stop()


# ---- the current project -------------------------------------------------------------------------


def _from_url() -> int | None:
    value = st.query_params.get(QUERY_KEY)
    return int(value) if value is not None and str(value).isdigit() else None


def select_project(project_id: int | None) -> None:
    """Make a project current for this session and its URL (None: no project)."""
    if project_id is None:
        st.session_state.pop(PROJECT_KEY, None)
        if QUERY_KEY in st.query_params:
            del st.query_params[QUERY_KEY]
    else:
        st.session_state[PROJECT_KEY] = int(project_id)
        if st.query_params.get(QUERY_KEY) != str(int(project_id)):  # unchanged: no write at all
            st.query_params[QUERY_KEY] = str(int(project_id))


def project_picker(prefer: int | None = None) -> Project | None:
    """The sidebar's project selector. The URL's project wins (a reload, a new tab, a shared link),
    then this session's, then `prefer`; an unknown id in the URL is said, not silently replaced."""
    projects = session.services().store.list_projects()
    if not projects:
        select_project(None)
        st.sidebar.caption("No project yet: create one on the Projects page.")
        return None
    by_id = {p.id: p for p in projects}
    wanted = _from_url()
    current = wanted if wanted in by_id else st.session_state.get(PROJECT_KEY)
    if wanted is not None and wanted not in by_id:
        st.sidebar.warning(f"The link's project {wanted} does not exist (it may have been deleted).")
    if current not in by_id:
        current = prefer if prefer in by_id else projects[0].id
    ids = list(by_id)
    # Keyed by the current project: a page that selects another one (select_project + st.rerun) makes
    # a new widget showing it, while the user's own choice in this one is kept.
    chosen = st.sidebar.selectbox(
        "Project",
        ids,
        index=ids.index(current),
        format_func=lambda pid: by_id[pid].name,
        key=f"project_picker-{current}",
        help="Type to search. Every page works on this project; the address bar keeps it (?project=).",
    )
    select_project(chosen)
    return by_id[chosen]


def current_project() -> Project:
    """The selected project, or stop the page with a pointer to the Projects page."""
    project_id = st.session_state.get(PROJECT_KEY)
    project = None
    if project_id is not None:
        try:
            project = session.services().store.get_project(project_id)
        except DallmiError:
            select_project(None)
    if project is None:
        st.info("Create or pick a project first: see the Projects page, or the picker in the sidebar.")
        st.stop()
    return project
