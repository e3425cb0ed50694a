"""Real-browser checks of the import policy, the project in the URL, safe page scripts and the single
source fine-tuning: `streamlit run app.py` on a seeded store, headless chromium (as test_browser.py).

Screenshots land in test-artifacts/e2e-data/ (not committed).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_browser import CHROMIUM, REPO, START_TIMEOUT, settled, sync_api

from dallmi_core.app import importer
from dallmi_core.app.auth import hash_password
from dallmi_core.app.server import CHROMIUM_ARGS, AppServer, app_env
from dallmi_core.app.services import open_services

pytestmark = pytest.mark.slow
ARTIFACTS = REPO / "test-artifacts" / "e2e-data"
PASSWORD = "correct horse"


def shot(page, name: str) -> None:
    page.wait_for_timeout(300)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


@pytest.fixture()
def server(tmp_path):
    """A seeded store (two projects, the second with labelled source rows and a queued fine-tuning),
    then a server factory: server(password=...) -> url, stopped at teardown."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "data"
    with open_services(data, autostart_worker=False) as svc:
        svc.create_project("Other project", ["x"])
        tickets = svc.create_project("Tickets", ["cold_food", "late"])
        source = tmp_path / "source.csv"
        pd.DataFrame(
            {
                "id": ["s1", "s2"],
                "text": ["soup cold", "order late"],
                "labels": ["cold_food", "late"],
                "domain": "source",
            }
        ).to_csv(source, index=False)
        importer.import_file(svc.store, tickets.id, source)
        svc.start_run(tickets.id, "finetune-source", {"epochs": 1.0})  # queued: no worker in this test
    servers = []

    def start(password: str | None = None) -> str:
        env = app_env(data, demo=False, worker=False)
        env.pop("DALLMI_PASSWORD_HASH", None)
        if password:
            env["DALLMI_PASSWORD_HASH"] = hash_password(password)
        app = AppServer.start(REPO, env, ARTIFACTS / f"streamlit-{len(servers)}.log")
        servers.append(app)
        app.wait_healthy(START_TIMEOUT)
        return app.url

    start.data, start.project = data, tickets
    yield start
    for app in servers:
        app.stop()


@pytest.fixture()
def browser():
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = chromium.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        context.set_default_timeout(90_000)
        yield context
        context.close()
        chromium.close()


def picked(page) -> str:
    """The project the sidebar picker shows."""
    box = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]')
    return box.evaluate("e => (e.querySelector('input') || {}).value || e.textContent.replace('Project', '')").strip()


def upload(page, kind_text: str, path: Path) -> None:
    page.get_by_text(kind_text).first.click()
    settled(page)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(path))
    settled(page)
    page.get_by_role("button", name="Import into").click()
    settled(page)


def test_a_page_url_as_the_first_request_is_gated_then_rendered(server, browser):
    url = server(password=PASSWORD)
    page = browser.new_page()
    page.goto(f"{url}/data?project={server.project.id}")  # the server's very first request: a page URL
    page.get_by_label("Password", exact=True).wait_for()
    settled(page)
    assert "Tickets" not in page.content()
    width = page.locator('[data-testid="stMainBlockContainer"]').bounding_box()["width"]
    assert width > 900, width  # the app's wide layout from the first run on, not Streamlit's centred default
    shot(page, "01-page-url-first-request-gated")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    settled(page)
    page.get_by_role("heading", name="Data", exact=True).wait_for()
    page.get_by_text("A fine-tuning is queued").wait_for()
    shot(page, "02-page-url-first-request-rendered")
    assert "Tickets" in picked(page)
    nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
    assert "Per-label AP" in nav and "Results" in nav  # the app's titles and sections, not file names
    assert "per label ap" not in nav.lower().replace("per-label", "")


def test_the_project_survives_a_reload_and_files_import_as_users_expect(server, browser, tmp_path):
    url = server()
    page = browser.new_page()
    page.goto(f"{url}/?project={server.project.id}")
    settled(page)
    page.locator('[data-testid="stSidebarNav"] a', has_text="Data").first.click()
    settled(page)
    page.get_by_role("heading", name="Data", exact=True).wait_for()
    page.reload()  # the same URL: the same project, not the first one
    settled(page)
    page.get_by_role("heading", name="Data", exact=True).wait_for()
    assert f"project={server.project.id}" in page.url
    assert picked(page) == "Tickets"
    page.get_by_text("A fine-tuning is queued").wait_for()  # no second one can be started
    assert not page.get_by_role("button", name="Start fine-tuning").count()
    shot(page, "03-reload-keeps-project-no-second-finetune")

    target = tmp_path / "excel.csv"  # Excel's semicolon CSV in Windows-1252, two ids with the same text
    target.write_bytes(
        "id;text;channel\n1;\u201cCold soup\u201d \u2013 \u20ac5 back;app\n2;\u201cCold soup\u201d \u2013 "
        "\u20ac5 back;web\n3;late parcel;email\n".encode("cp1252")
    )
    upload(page, "Target text", target)
    page.get_by_text("Read 3 rows: 3 new documents (3 target)").wait_for()
    shot(page, "04-semicolon-cp1252-distinct-ids-metadata")
    gold = tmp_path / "gold.csv"  # a labelled sample of the target: its texts are target documents already
    gold.write_text(
        "id,text,labels\ng1,late parcel,late\ng2,\u201cCold soup\u201d \u2013 \u20ac5 back,cold_food\n",
        encoding="utf-8",
    )
    upload(page, "Evaluation set", gold)
    page.get_by_text("2 eval rows gave their gold labels to the target documents").wait_for()
    page.get_by_text("Browse the documents").click()
    shot(page, "05-eval-file-keeps-gold")

    with open_services(server.data, autostart_worker=False) as svc:
        docs = {d.ext_id: d for d in svc.store.get_documents(server.project.id, domain="target")}
        assert docs["1"].text == "\u201cCold soup\u201d \u2013 \u20ac5 back" and set(docs) == {"1", "2", "3"}
        assert (docs["2"].meta, docs["3"].gold_labels, docs["1"].gold_labels) == (
            {"channel": "web"},
            ("late",),
            ("cold_food",),
        )
    page.locator('[data-testid="stSidebarNav"] a', has_text="Export").first.click()
    settled(page)
    with page.expect_download() as download:
        page.get_by_role("button", name="Annotations (CSV)").click()
    exported = pd.read_csv(download.value.path(), dtype=str, keep_default_na=False)
    assert list(exported.columns) == ["id", "text", "labels", "domain", "channel"]
    assert exported[exported.domain == "target"]["channel"].tolist() == ["app", "web", "email"]
    shot(page, "06-export-writes-metadata-back")


def test_open_a_project_shows_the_project_just_created(server, browser):
    url = server()
    page = browser.new_page()
    page.goto(f"{url}/?project={server.project.id}")  # another project is current
    settled(page)
    page.get_by_role("heading", name="Projects", exact=True).wait_for()
    page.get_by_text("Create a project").click()  # folded while projects exist
    page.get_by_label("Name", exact=True).fill("Fresh tickets")
    page.get_by_label("Labels", exact=True).fill("a, b")
    page.get_by_label("Labels", exact=True).press("Tab")
    settled(page)
    page.get_by_role("button", name="Create project").click()
    settled(page)
    page.get_by_text("Created project 'Fresh tickets' with 2 labels").wait_for()
    box = page.locator('[data-testid="stMain"] [data-testid="stSelectbox"]').filter(has_text="Open a project")
    shown = box.evaluate("e => (e.querySelector('input') || {}).value || e.innerText.replace('Open a project', '')")
    shot(page, "07-open-a-project-after-create")
    assert shown.strip() == "Fresh tickets" and picked(page) == "Fresh tickets"
