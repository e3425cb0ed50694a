"""The Adapt page says whether a worker serves this data folder and when it last reported."""

from __future__ import annotations

import os
import re
import time

from test_pages import _app, env, seeded  # noqa: F401 - the fixtures of the page tests

from dallmi_core.app.process import acquire_lock


def _worker_line(at) -> str:
    lines = [c.value for c in at.caption if "worker" in c.value.lower() and "data folder" in c.value]
    assert len(lines) == 1, [c.value for c in at.caption]
    return lines[0]


def test_the_adapt_page_says_when_no_worker_serves_the_data_folder(seeded):  # noqa: F811
    assert seeded.svc.store.last_app_heartbeat() is None
    line = _worker_line(_app("Adapt"))
    assert "No worker is running for this data folder" in line and "dallmi worker --data-dir" in line  # NO_WORKER
    assert [row["pid"] for row in seeded.svc.store.app_heartbeats()] == [os.getpid()]  # ui.session.services() beats
    seeded.svc.store.report_worker(4321, "h", started_at=time.time() - 100, state="exited")
    line = _worker_line(_app("Adapt"))
    assert "The last one (pid 4321) exited" in line and "s ago" in line


def test_the_adapt_page_shows_the_live_worker_and_its_last_report(seeded):  # noqa: F811
    lock = acquire_lock(seeded.data)  # this process plays the worker: it holds the lock and reports
    try:
        seeded.svc.store.report_worker(
            os.getpid(),
            "h",
            started_at=time.time(),
            state="running",
            run_id=7,
            rss_bytes=300 * 2**20,
            app_idle_exit=600.0,
        )
        reported = time.time()
        line = _worker_line(_app("Adapt"))
        rendered = time.time()
        assert f"A worker serves this data folder: pid {os.getpid()} · running run 7" in line
        ago = int(re.search(r"last reported (\d+) s ago", line).group(1))
        assert 0 <= ago <= rendered - reported + 1  # the page's age of the report, not a clock of its own
        assert "300 MB resident" in line and "exits 10 min 00 s after the app closes" in line
    finally:
        lock.close()
