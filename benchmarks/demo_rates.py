"""Does the demo's predictions export mark about as many documents positive as its gold says?

Runs the demo as the app does, headless, in a fresh data folder: the demo project (its source
fine-tuning), then "Run the demo adaptation" (QUICK_CPU_DEMO), each executed by `dallmi worker
--once`; then exports the predictions and compares each label's positive rate with the gold eval
file's rate (issue: within a factor of 2).

    python benchmarks/demo_rates.py [--data-dir /tmp/demo-rates]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from dallmi_core.app import demo, exporter
from dallmi_core.app.services import open_services


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json")
    args = parser.parse_args()
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="demo-rates-"))
    worker = [sys.executable, "-m", "dallmi_core.app.worker", "--data-dir", str(data_dir), "--once"]
    with open_services(data_dir, autostart_worker=False) as svc:
        project_id = demo.ensure_demo_project(svc)
        subprocess.run(worker, check=True)  # the demo's source fine-tuning
        run_id = demo.run_demo(svc, project_id)
        subprocess.run(worker, check=True)  # the demo adaptation
        run = svc.store.get_run(run_id)
        assert run.status == "done", (run.status, run.error)
        exported = exporter.export_predictions(svc.store, run_id, data_dir / "predictions.csv")
        frame = pd.read_csv(exported, dtype={"id": str})
    gold = pd.read_csv(demo.DEMO_DIR / "demo_eval.csv", dtype={"id": str})
    gold_rows = gold["labels"].fillna("").str.split("|")
    eval_frame = frame[frame["id"].isin(set(gold["id"]))]
    rows = []
    for label in demo.DEMO_LABELS:
        gold_rate = float(gold_rows.map(lambda labels, label=label: label in labels).mean())
        rows.append(
            {
                "label": label,
                "gold_rate": gold_rate,
                "export_rate": float(frame[f"pred_{label}"].mean()),
                "export_rate_eval_rows": float(eval_frame[f"pred_{label}"].mean()),
            }
        )
    table = pd.DataFrame(rows)
    table["ratio"] = table["export_rate"] / table["gold_rate"]
    print(table.to_markdown(index=False, floatfmt=".3f"))
    print(f"within a factor of 2 for {(table['ratio'].between(0.5, 2)).sum()} of {len(table)} labels")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
