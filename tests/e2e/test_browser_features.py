"""Real-browser checks of the labelling features of issue 15: a "reviewed: not" decision that survives a
reload, search with OR and its matches marked, and a label rename that carries the decisions.
`streamlit run app.py` on a seeded store, headless chromium (as test_browser_data.py).

Screenshots land in test-artifacts/e2e-features/ (not committed).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_browser import REPO, settled
from test_browser_data import browser, server  # noqa: F401 (fixtures)

from dallmi_core.app import importer
from dallmi_core.app.services import open_services

pytestmark = pytest.mark.slow
ARTIFACTS = REPO / "test-artifacts" / "e2e-features"
TEXTS = ["the soup was cold", "my parcel is late", "cold soup again", "a late parcel and cold fries"]


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(300)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def _seed_target_and_scores(data, project_id: int, tmp_path) -> list[int]:
    """Four target documents with a `channel` column and a finished score run ranking them for cold_food."""
    frame = pd.DataFrame({"id": [f"t{i}" for i in range(4)], "text": TEXTS, "channel": ["app", "web", "app", "web"]})
    frame.to_csv(tmp_path / "target.csv", index=False)
    with open_services(data, autostart_worker=False) as svc:
        importer.import_file(svc.store, project_id, tmp_path / "target.csv", domain="target")
        docs = svc.store.document_ids(project_id, "target")
        run_id = svc.store.enqueue_run(project_id, "score", {})
        assert svc.store.claim_next_run(1, kinds=["score"]).id == run_id
        scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.1], [0.5, 0.6]], dtype=np.float32)
        svc.store.save_predictions(run_id, docs, scores)
        svc.store.finish_run(run_id, "done")
        for run in svc.store.list_runs(project_id, status="queued"):  # the fixture's fine-tuning: a pending
            svc.store.request_cancel(run.id)  # run would refuse the label rename
    return docs


def test_review_marks_search_and_label_rename_in_the_browser(server, browser, tmp_path):  # noqa: F811
    docs = _seed_target_and_scores(server.data, server.project.id, tmp_path)
    url = server()
    page = browser.new_page()
    page.goto(f"{url}/annotate?project={server.project.id}")
    settled(page)
    page.get_by_role("heading", name="Annotate", exact=True).wait_for()

    # 1. "reviewed: not" in the quick pass: the most likely document first, then the next one
    page.get_by_text("Is this cold_food?").wait_for()
    assert TEXTS[0] in page.inner_text('[data-testid="stMain"]')
    page.get_by_role("button", name="Not cold_food").click()
    settled(page)
    page.get_by_text("1 reviewed: not").first.wait_for()
    shot(page, "01-reviewed-not-in-the-quick-pass")
    page.reload()  # the decision is stored, not session state
    settled(page)
    page.get_by_text("Is this cold_food?").wait_for()
    page.get_by_text("1 reviewed: not").first.wait_for()
    main = page.inner_text('[data-testid="stMain"]')
    assert TEXTS[2] in main and TEXTS[0] not in main  # the reviewed document left the queue
    shot(page, "02-reviewed-not-survives-a-reload")
    with open_services(server.data, autostart_worker=False) as svc:
        assert svc.store.reviews_for([docs[0]]) == {docs[0]: ["cold_food"]}

    # 2. search with OR: either word matches, both are marked
    page.get_by_role("tab", name="Search and bulk tag").click()
    box = page.get_by_label("Full-text search in the target documents", exact=True)
    box.fill("fries OR soup")
    box.press("Enter")
    settled(page)
    page.locator("mark", has_text="fries").first.wait_for()
    page.locator("mark", has_text="soup").first.wait_for()
    assert not page.locator("mark", has_text="parcel").count()  # a word outside the query is not marked
    shot(page, "03-search-or-with-highlights")

    # 3. rename the label on the Projects page: its review marks follow the new name
    page.locator('[data-testid="stSidebarNav"] a', has_text="Projects").first.click()
    settled(page)
    page.get_by_text("Labels: add or rename").click()
    settled(page)
    target = page.get_by_label("to", exact=True)
    target.fill("cold_meal")
    target.press("Tab")
    settled(page)
    page.get_by_role("button", name="Rename label").click()
    settled(page)
    page.get_by_text("Renamed 'cold_food' to 'cold_meal'.").wait_for()
    shot(page, "04-label-renamed")
    with open_services(server.data, autostart_worker=False) as svc:
        assert svc.store.get_project(server.project.id).labels == ("cold_meal", "late")
        assert svc.store.reviews_for([docs[0]]) == {docs[0]: ["cold_meal"]}
