"""Time the embedded demo as a first-time user meets it, in a real browser, and screenshot every page.

    python benchmarks/bench_demo.py [--data-dir DIR] [--out bench_out/demo.json] [--shots test-artifacts/screenshots]

Starts `streamlit run app.py` on a fresh data folder (demo on, worker started by the app), opens it in
headless chromium (Debian package `chromium`, driven by Playwright), which creates the demo project
and queues its source fine-tuning. When that run is done it clicks "Run the demo adaptation" on the
Adapt page and waits until the run history shows the run's macro AP after adaptation. Times are
wall-clock seconds from the first page load; the figures and a screenshot of every page are written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from dallmi_core.app.process import worker_pid
from dallmi_core.app.server import CHROMIUM_ARGS, AppServer, app_env
from dallmi_core.store import open_store

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 120  # s until the server answers its health check
PAGES = ["Projects", "Data", "Annotate", "Adapt", "Export", "Per-label AP", "MixUp samples", "Domain shift"]


def settled(page) -> None:
    page.wait_for_timeout(300)
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()


def goto(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    settled(page)
    page.get_by_role("heading", name=title, exact=True).wait_for()


def screenshot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main section, so grow the viewport to fit it first."""
    size = page.viewport_size
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMainBlockContainer\"]').scrollHeight")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(int(height) + 200, 6000))})
    page.wait_for_timeout(500)
    page.screenshot(path=path)
    page.set_viewport_size(size)


def runs(data: Path) -> list:
    store = open_store(data)
    try:
        project = store.find_project("Demo: support tickets")
        return [] if project is None else store.list_runs(project.id)
    finally:
        store.close()


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a live process (Linux): a figure the machine's other load inflates less."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError, TypeError):
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 1)


def wait_run(data: Path, kind: str, start: float, limit_s: float) -> dict:
    """Poll the store until the newest run of `kind` has finished; its times relative to `start`."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        found = [r for r in runs(data) if r.kind == kind]
        if found and found[0].status not in ("queued", "running", "interrupted"):
            run = found[0]
            return {
                "worker_cpu_s": cpu_seconds(worker_pid(data)),
                "load_avg_1min": round(os.getloadavg()[0], 2),
                "run": run.id,
                "status": run.status,
                "error": run.error,
                "queued_s": round(run.created_at - start, 1),
                "started_s": round(run.started_at - start, 1),
                "finished_s": round(run.finished_at - start, 1),
                "took_s": round(run.finished_at - run.started_at, 1),
                "steps": run.metrics.get("steps"),
                "macro_ap_before": (run.metrics.get("before") or {}).get("map_macro"),
                "macro_ap_after": (run.metrics.get("after") or {}).get("map_macro"),
            }
        time.sleep(2)
    raise SystemExit(f"no finished {kind} run within {limit_s:.0f} s")


def demo_story(page, data: Path, start: float, limit_s: float) -> dict:
    """Wait for the demo's source model, start the demo adaptation, wait until the page shows its metrics."""
    result = {"finetune_source": wait_run(data, "finetune-source", start, limit_s)}
    print("finetune-source", result["finetune_source"], flush=True)
    goto(page, "Adapt")
    page.get_by_role("button", name="Run the demo adaptation (quick CPU preset)").click()
    settled(page)
    result["adapt"] = wait_run(data, "adapt", start, limit_s)
    print("adapt", result["adapt"], flush=True)
    page.get_by_text(re.compile(r"adapt · \S+ done$")).wait_for(timeout=120_000)
    settled(page)
    result["metrics_shown_s"] = round(time.time() - start, 1)
    print("metrics shown", result["metrics_shown_s"], flush=True)
    return result


def screenshots(page, folder: Path) -> None:
    for i, title in enumerate(PAGES, 1):
        goto(page, title)
        screenshot(page, folder / f"{i:02d}-{re.sub(r'[^a-z]+', '-', title.lower())}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="a fresh folder (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=REPO / "bench_out" / "demo.json")
    parser.add_argument("--shots", type=Path, default=REPO / "test-artifacts" / "screenshots")
    parser.add_argument("--limit", type=float, default=1800, help="seconds allowed per run")
    args = parser.parse_args()
    data = (args.data_dir or Path(tempfile.mkdtemp(prefix="dallmi-demo-"))).resolve()
    if data.exists() and any(data.iterdir()):
        raise SystemExit(f"{data} is not empty: the demo must start on a fresh data folder")
    args.shots.mkdir(parents=True, exist_ok=True)
    env = app_env(data, demo=True, worker=True) | {"HF_HUB_OFFLINE": "1"}
    server = AppServer.start(REPO, env, args.shots / "streamlit.log")
    result: dict = {"data_dir": str(data), "cpu_cores": os.cpu_count()}
    try:
        server.wait_healthy(START_TIMEOUT)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(180_000)
            start = time.time()
            page.goto(server.url)
            settled(page)
            result["first_page_s"] = round(time.time() - start, 1)
            print("first page", result["first_page_s"], flush=True)
            result |= demo_story(page, data, start, args.limit)
            screenshots(page, args.shots)
            browser.close()
    finally:
        server.stop()
        pid = worker_pid(data)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
