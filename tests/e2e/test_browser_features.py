"""Real-browser checks of the labelling features of issue 15: a "reviewed: not" decision that survives a
reload, search with OR and its matches marked, a label rename that carries the decisions, the metadata /
state / score-range filters, and the one-document view with every label's decision.
`streamlit run app.py` on a seeded store, headless chromium (as test_browser_data.py).

Screenshots land in test-artifacts/e2e-features/ (not committed).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_browser import REPO, settled
from test_browser import shot as browser_shot
from test_browser_data import browser, server  # noqa: F401 (fixtures)

from dallmi_core.app import importer
from dallmi_core.app.services import open_services

pytestmark = pytest.mark.slow
ARTIFACTS = REPO / "test-artifacts" / "e2e-features"
LONG_LABEL = "cold_or_badly_packed_food"
TEXTS = ["the soup was cold", "my parcel is late", "cold soup again", "a late parcel and cold fries"]


def shot(page, name: str) -> None:
    browser_shot(page, name, ARTIFACTS)


def _clipped_buttons(page) -> list[str]:
    """The visible buttons of the main area whose label is cut short (wider than the box that shows it)."""
    return page.locator('[data-testid="stMain"] button:visible').evaluate_all(
        "bs => bs.filter(b => [b, ...b.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1))"
        ".map(b => b.innerText)"
    )


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


def _annotate_page(server, browser, tmp_path):  # noqa: F811
    """The seeded store served, its Annotate page open: (page, target document ids)."""
    docs = _seed_target_and_scores(server.data, server.project.id, tmp_path)
    url = server()
    page = browser.new_page()
    page.goto(f"{url}/annotate?project={server.project.id}")
    settled(page)
    page.get_by_role("heading", name="Annotate", exact=True).wait_for()
    return page, docs


def test_review_marks_search_and_label_rename_in_the_browser(server, browser, tmp_path):  # noqa: F811
    page, docs = _annotate_page(server, browser, tmp_path)

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
    target.fill(LONG_LABEL)
    target.press("Tab")
    settled(page)
    page.get_by_role("button", name="Rename label").click()
    settled(page)
    page.get_by_text(f"Renamed 'cold_food' to '{LONG_LABEL}'.").wait_for()
    shot(page, "04-label-renamed")
    with open_services(server.data, autostart_worker=False) as svc:
        assert svc.store.get_project(server.project.id).labels == (LONG_LABEL, "late")
        assert svc.store.reviews_for([docs[0]]) == {docs[0]: [LONG_LABEL]}

    # 4. the quick pass under the long name: its buttons keep their labels whole on a laptop-wide window
    page.locator('[data-testid="stSidebarNav"] a', has_text="Annotate").first.click()
    settled(page)
    page.get_by_role("tab", name="Quick pass").click()
    page.get_by_text(f"Is this {LONG_LABEL}?").wait_for()
    assert _clipped_buttons(page) == []
    shot(page, "04b-quick-pass-long-label")


def _grid_cells(editor) -> list[str]:
    """The body cells of a data editor, row by row, as its accessible table shows them."""
    return editor.evaluate("e => [...e.querySelectorAll('table td')].map(c => c.innerText)")


def _ids(editor) -> list[str]:
    """The document ids a bulk editor lists (t0..t3)."""
    return [c for c in _grid_cells(editor) if c in {f"t{i}" for i in range(len(TEXTS))}]


def _tick(page, editor, row: int, column: int) -> None:
    """Toggle a checkbox cell of a data editor (a canvas): click the row's first cell, walk right, Space."""
    box = editor.bounding_box()
    page.mouse.click(box["x"] + 20, box["y"] + 35 * (row + 1) + 17)  # 35 px header and rows
    for _ in range(column):
        page.keyboard.press("ArrowRight")
    page.keyboard.press("Space")
    settled(page)


def test_filters_and_the_one_document_view_in_the_browser(server, browser, tmp_path):  # noqa: F811
    page, docs = _annotate_page(server, browser, tmp_path)
    page.get_by_role("tab", name="Search and bulk tag").click()
    page.get_by_text("Filters", exact=True).click()
    settled(page)
    bulk = page.locator('[data-testid="stDataFrame"]').filter(has_text="is cold_food")

    # 1. a metadata filter: the import's `channel` column
    page.locator('[data-testid="stMultiSelect"]').filter(has_text="channel").click()
    page.get_by_role("option", name="web (2)").click()
    settled(page)
    page.keyboard.press("Escape")
    page.get_by_text("Filters (1 active)").wait_for()
    assert _ids(bulk) == ["t1", "t3"]

    # 2. the score range: cold_food scores 0.2 (t1) and 0.5 (t3); from 0.30 up only t3 is left
    thumb = page.locator('[data-testid="stSlider"] input[type="range"]').first  # still open: same expander
    thumb.focus()
    for _ in range(30):
        page.keyboard.press("ArrowRight")
    settled(page)
    page.get_by_text("Filters (2 active)").wait_for()
    assert _ids(bulk) == ["t3"]
    shot(page, "05-metadata-and-score-filters")

    # 3. one document, every label: the filtered list's document, tagged late and reviewed: not cold_food
    page.get_by_role("tab", name="One document").click()
    settled(page)
    page.get_by_text("Document (1 in this list)").wait_for()
    single = page.locator('[data-testid="stDataFrame"]').filter(has_text="latest model's score")
    assert _grid_cells(single) == ["cold_food", "0.5", "false", "false", "late", "0.6000000238418579", "false", "false"]
    _tick(page, single, row=0, column=3)  # reviewed: not cold_food
    _tick(page, single, row=1, column=2)  # tagged late
    shot(page, "06-one-document-two-decisions")
    page.get_by_role("button", name="Save 2 change(s)").click()
    settled(page)
    page.get_by_text("t3: tagged 1, untagged 0, reviewed: not 1, unmarked 0").wait_for()
    assert _grid_cells(single)[2:4] + _grid_cells(single)[6:8] == ["false", "true", "true", "false"]  # stored
    shot(page, "07-one-document-saved")
    with open_services(server.data, autostart_worker=False) as svc:
        assert svc.store.tags_for([docs[3]]) == {docs[3]: ["late"]}
        assert svc.store.reviews_for([docs[3]]) == {docs[3]: ["cold_food"]}

    # 4. the state filter: of the web documents scored 0.30+ for cold_food, t3 is reviewed: not, none tagged
    page.get_by_role("tab", name="Search and bulk tag").click()
    states = page.locator('[data-testid="stRadio"]').filter(has_text="Documents that are, for")
    states.get_by_text("reviewed: not", exact=True).click()
    settled(page)
    assert _ids(bulk) == ["t3"]
    states.get_by_text("tagged", exact=True).click()
    settled(page)
    page.get_by_text("No target document matches.").wait_for()
    shot(page, "08-state-filter")
