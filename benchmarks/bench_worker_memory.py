"""Resident memory of the worker the app starts: idle, during the demo's source fine-tuning, and after it.

    python benchmarks/bench_worker_memory.py [--no-recycle] [--out bench_out/worker_memory.json]

Plays the app on a fresh data folder: one process that beats into the store (AppHeartbeat, as
ui.services() does) and starts the worker with `ensure_worker` (so it is app-linked, exactly as on a
first launch). The worker's RSS (/proc/<pid>/status VmRSS) is sampled every 0.25 s: idle for 5 s
before anything is queued, then while the demo project's finetune-source run (dallmi_core.app.demo:
MiniLM, 600 e-mails, 2 epochs at 64 tokens) runs, then for 20 s after it finished. `--no-recycle`
keeps the worker in its interpreter after the run (gc, CUDA cache, malloc_trim only), to show what
the fresh interpreter adds. At the end the heartbeat stops and the time until the worker exits is
measured (DALLMI_WORKER_IDLE_EXIT, set to 10 s here).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dallmi_core.app import presence  # noqa: E402
from dallmi_core.app.demo import ensure_demo_project  # noqa: E402
from dallmi_core.app.process import rss_bytes, worker_running  # noqa: E402
from dallmi_core.app.services import open_services  # noqa: E402

MB = 2**20


def sample(pid: int, seconds: float, every: float = 0.25) -> list[float]:
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        rss = rss_bytes(pid)
        if rss:
            out.append(rss / MB)
        time.sleep(every)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-recycle", action="store_true", help="keep the worker's interpreter after the run")
    parser.add_argument("--out", type=Path, default=Path("bench_out/worker_memory.json"))
    args = parser.parse_args()
    os.environ["DALLMI_WORKER_IDLE_EXIT"] = "10"
    os.environ["DALLMI_WORKER_ARGS"] = "--poll 0.2" + (" --no-recycle" if args.no_recycle else "")
    with tempfile.TemporaryDirectory(prefix="bench-worker-mem-") as tmp:
        data = Path(tmp)
        svc = open_services(data, autostart_worker=True, app_heartbeat=True)
        proc = presence.ensure_worker(svc.data_dir)
        while presence.worker_status(svc.store).report is None:
            time.sleep(0.1)
        idle = sample(proc.pid, 5.0)
        project_id = ensure_demo_project(svc)  # queues the demo's source fine-tuning, as on a first launch
        run = next(r for r in svc.store.list_runs(project_id) if r.kind == "finetune-source")
        started, during = time.time(), []
        while (status := svc.store.get_run(run.id).status) not in ("done", "failed", "cancelled"):
            rss = rss_bytes(proc.pid)
            during.append(rss / MB if rss else float("nan"))
            time.sleep(0.25)
        took = time.time() - started
        after = sample(proc.pid, 20.0)
        svc.close()  # the app stops: its heartbeat ends
        stopped = time.time()
        while worker_running(data) and time.time() - stopped < 120:
            time.sleep(0.1)
        result = {
            "recycle": not args.no_recycle,
            "run_status": status,
            "run_seconds": round(took, 1),
            "idle_mb": round(statistics.median(idle), 1),
            "during_median_mb": round(statistics.median(during), 1),
            "during_peak_mb": round(max(during), 1),
            "after_settled_mb": round(statistics.median(after[-20:]), 1),
            "after_first_mb": round(after[0], 1),
            "after_over_idle": round(statistics.median(after[-20:]) / statistics.median(idle), 2),
            "exit_after_heartbeat_stop_s": round(time.time() - stopped, 1),
            "worker_exited": not worker_running(data) and proc.wait(timeout=30) == 0,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
