"""Access and rendering safety of the app (AppTest): the optional password gate shows nothing of any
project until the right password is entered; the server binds to loopback; user text (project names,
labels, documents, file names) is never rendered as HTML, script or a Markdown link; two sessions on
one data folder see each other's tags after a rerun.
"""

from __future__ import annotations

import re
import tempfile
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import dallmi_core.app.system as system_module
from dallmi_core.app import importer
from dallmi_core.app.auth import hash_password
from dallmi_core.app.services import open_services
from dallmi_core.app.system import SystemInfo
from dallmi_core.errors import DallmiError

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "app.py"
PAGES = [
    "pages/projects.py",
    "pages/data.py",
    "pages/annotate.py",
    "pages/adapt.py",
    "pages/export.py",
    "pages/per_label_ap.py",
    "pages/mixup_samples.py",
    "pages/domain_shift.py",
]
SECRET_NAME = "payroll-secret-project"
HOSTILE = {
    "script": "<script>alert(1)</script>",
    "img": "<img src=x onerror=alert(1)>",
    "link": "[click me](javascript:alert(1))",
}
HOSTILE_NAME = " ".join(HOSTILE.values())


@pytest.fixture()
def env(tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("DALLMI_DATA_DIR", str(data))
    monkeypatch.setenv("DALLMI_NO_WORKER", "1")
    monkeypatch.setenv("DALLMI_NO_DEMO", "1")
    monkeypatch.delenv("DALLMI_PASSWORD_HASH", raising=False)
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(system_module, "_system_info", [SystemInfo(2, (), False, "test")])
    svc = open_services(data, autostart_worker=False)
    yield SimpleNamespace(svc=svc, data=data, tmp=tmp_path, monkeypatch=monkeypatch)
    svc.close()


def seed(env, name: str, labels, texts) -> int:
    project = env.svc.create_project(name, labels)
    frame = pd.DataFrame({"id": [f"d{i}" for i in range(len(texts))], "text": texts, "domain": "target"})
    frame.to_csv(env.tmp / "docs.csv", index=False)
    importer.import_file(env.svc.store, project.id, env.tmp / "docs.csv")
    return project.id


def app(page: str | None = None, secrets: dict | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    for key, value in (secrets or {}).items():
        at.secrets[key] = value
    at.run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def everything(at: AppTest) -> str:
    """Every element of the page as its protobuf text: whatever would reach the browser."""
    out: list[str] = []

    def walk(node) -> None:
        if getattr(node, "proto", None) is not None:
            out.append(str(node.proto))
        children = getattr(node, "children", None)
        for child in children.values() if isinstance(children, dict) else ():
            walk(child)

    walk(at._tree)
    return "\n".join(out)


# ---- the password gate -------------------------------------------------------------------------------


@pytest.fixture()
def gated(env):
    seed(env, SECRET_NAME, ["confidential-label"], ["salary of the director", "bonus table"])
    env.monkeypatch.setenv("DALLMI_PASSWORD_HASH", hash_password("correct horse"))
    return env


def login(at: AppTest, password: str) -> AppTest:
    at.text_input(key="password").input(password)
    at.button[0].click().run()  # the form's submit button
    assert not at.exception, at.exception
    return at


@pytest.mark.parametrize("page", [None, *PAGES])
def test_without_the_password_no_page_shows_anything_of_a_project(gated, page):
    at = app(page)
    shown = everything(at)
    assert "Password" in shown and SECRET_NAME not in shown and "confidential" not in shown
    assert "salary" not in shown and "Data folder" not in shown
    assert not at.sidebar.selectbox  # no project picker


def test_a_wrong_password_shows_nothing_and_the_right_one_opens_the_app(gated):
    at = login(app(), "wrong horse")
    assert [e.value for e in at.error] == ["Wrong password."]
    assert SECRET_NAME not in everything(at)
    at = login(at, "correct horse")
    assert not at.error and SECRET_NAME in everything(at)
    at.switch_page("pages/annotate.py").run()  # the session stays logged in across pages and reruns
    assert not at.exception and "confidential-label" in everything(at)
    assert SECRET_NAME not in everything(app())  # another browser session must log in itself
    at.sidebar.button(key="logout").click().run()
    assert SECRET_NAME not in everything(at) and "Password" in everything(at)


def test_the_hash_can_come_from_streamlit_secrets(env):
    seed(env, SECRET_NAME, ["x"], ["a text"])
    at = app(secrets={"password_hash": hash_password("s3cret")})
    assert SECRET_NAME not in everything(at)
    assert SECRET_NAME in everything(login(at, "s3cret"))


def test_a_malformed_hash_fails_closed(gated):
    gated.monkeypatch.setenv("DALLMI_PASSWORD_HASH", "md5$deadbeef")
    at = app()
    assert "misconfigured" in at.error[0].value and "dallmi hash-password" in at.error[0].value
    assert SECRET_NAME not in everything(at) and not at.text_input


def test_an_unreadable_secrets_file_fails_closed(gated, monkeypatch):
    """A secrets.toml that does not parse may hold the hash: the gate must not open (AppTest cannot
    load a broken file, so Streamlit's own error for one is raised from st.secrets)."""
    import streamlit as st
    from streamlit.errors import StreamlitSecretNotFoundError

    from ui import gate

    gated.monkeypatch.delenv("DALLMI_PASSWORD_HASH")

    class Broken:
        def get(self, key):
            raise StreamlitSecretNotFoundError(
                "Error parsing secrets file at {path}: {error}",
                path="secrets.toml",
                error="Illegal character",
                error_id="failed-parsing-secrets-file",
            )

    monkeypatch.setattr(st, "secrets", Broken())
    with pytest.raises(DallmiError, match="secrets file cannot be read"):
        gate._configured_hash()


def test_no_configured_password_means_no_gate(env):
    seed(env, SECRET_NAME, ["x"], ["a text"])
    at = app()
    assert SECRET_NAME in everything(at) and "Password" not in [t.label for t in at.text_input]


# ---- serving ---------------------------------------------------------------------------------------


def test_the_server_listens_on_loopback_and_caps_uploads():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["address"] == "127.0.0.1"
    assert 0 < config["server"]["maxUploadSize"] <= 1024  # MB
    assert config["browser"]["gatherUsageStats"] is False


# ---- user text is text ----------------------------------------------------------------------------------

# Elements whose strings Streamlit renders as Markdown: a raw `<script>`, `<img` or `](javascript:` there
# would be markup. (Text, code, dataframe cells and selectbox options are shown literally.)
_MARKUP = re.compile(r"(?<!\\)<(script|img)|\]\(javascript:", re.IGNORECASE)
_LITERAL = {"text", "code", "arrow_data_frame", "json", "selectbox", "data_frame"}


def markdown_strings(at: AppTest) -> list[tuple[str, str]]:
    """(element type, string) for every string field of every Markdown-rendering element."""
    found: list[tuple[str, str]] = []

    def walk(node) -> None:
        proto, kind = getattr(node, "proto", None), getattr(node, "type", "")
        if proto is not None and kind not in _LITERAL:
            for field, value in proto.ListFields():
                if isinstance(value, str) and field.name in ("body", "label", "text", "help", "caption"):
                    found.append((f"{kind}.{field.name}", value))
        children = getattr(node, "children", None)
        for child in children.values() if isinstance(children, dict) else ():
            walk(child)

    walk(at._tree)
    return found


def test_hostile_names_labels_and_documents_render_as_text(env):
    labels = [HOSTILE["script"], HOSTILE["img"], HOSTILE["link"]]
    pid = seed(env, HOSTILE_NAME, labels, [f"document {i}: {v}" for i, v in enumerate(HOSTILE.values())] * 3)
    docs = env.svc.store.document_ids(pid)
    env.svc.store.tag(pid, docs[0], HOSTILE["script"])
    env.svc.store.tag(pid, docs[1], HOSTILE["link"])
    unsafe = []
    for page in PAGES:
        at = app(page)
        unsafe += [(page, kind, value) for kind, value in markdown_strings(at) if _MARKUP.search(value)]
        assert "allow_html: true" not in everything(at), f"{page} allows raw HTML"
    assert not unsafe, "user text rendered as markup:\n" + "\n".join(map(str, unsafe))
    at = app("pages/annotate.py")
    at.radio(key="strategy").set_value("similar").run()
    assert not at.exception
    shown = everything(at)
    assert "javascript:alert(1)" in shown  # the text is there, as text
    assert not [(k, v) for k, v in markdown_strings(at) if _MARKUP.search(v)]


def test_an_upload_named_like_a_path_stays_inside_its_upload_folder(env, tmp_path):
    seed(env, "uploads", ["a"], ["one"])
    at = app("pages/data.py")
    for name in ("../../escape.csv", "/etc/passwd.csv", "..\\..\\win.csv", "é" * 200 + ".csv"):
        at.file_uploader(key="upload-target").upload(name, b"text\nhello\n", "text/csv").run()
        assert not at.exception, (name, at.exception)
        assert not at.error, (name, [e.value for e in at.error])
    uploads = tmp_path / "dallmi-uploads"
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".csv" and p.name != "docs.csv"]
    assert len(written) == 4 and all(p.parent.parent == uploads for p in written), written
    assert not (tmp_path.parent / "escape.csv").exists() and not Path("/etc/passwd.csv").exists()


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("../../x.csv", "x.csv"),
        ("/abs/path.csv", "path.csv"),
        ("nul\x00byte.csv", "nulbyte.csv"),
        ("..", "upload"),
        ("", "upload"),
        ("a\\..\\..\\b.tsv", "b.tsv"),
        ("line\nbreak.csv", "linebreak.csv"),
    ],
)
def test_uploaded_path_never_turns_a_name_into_a_path(env, tmp_path, name, stored):
    from ui import widgets

    upload = SimpleNamespace(file_id="../../id\x00", name=name, size=3, getvalue=lambda: b"abc")
    path = widgets.uploaded_path(upload)
    assert path.name == stored and path.parent == tmp_path / "dallmi-uploads" / "id" and path.read_bytes() == b"abc"
    widgets.forget_upload(path)
    assert (tmp_path / "dallmi-uploads").is_dir() and not path.parent.exists()


# ---- two sessions ---------------------------------------------------------------------------------------


def test_two_sessions_on_one_project_see_each_others_tags_after_a_rerun(env):
    pid = seed(env, "shared", ["billing", "login"], [f"ticket {i} invoice refund" for i in range(6)])
    docs = env.svc.store.document_ids(pid)
    alice, bob = app("pages/annotate.py"), app("pages/annotate.py")
    alice.text_input(key="query").input("invoice").run()
    bob.text_input(key="query").input("invoice").run()
    alice.button(key="tag_all").click().run()  # alice tags every hit as billing
    assert not alice.exception
    bob.selectbox(key="label_picker").select("login").run()
    editor = bob.data_editor[0]
    bob.session_state[editor.key] = {"edited_rows": {0: {"tag": True}}, "added_rows": [], "deleted_rows": []}
    bob.run()
    bob.button(key="save_ticks").click().run()  # bob tags one as login
    assert not bob.exception
    bob.selectbox(key="label_picker").select("billing").run()
    assert list(bob.data_editor[0].value["tag"]) == [True] * len(docs)  # alice's tags, seen by bob
    alice.selectbox(key="label_picker").select("login").run()
    assert list(alice.data_editor[0].value["tag"]).count(True) == 1  # bob's tag, seen by alice
    tags = env.svc.store.tags_for(docs)
    assert sum(len(v) for v in tags.values()) == len(docs) + 1
