"""Scoring memory: peak RSS of the score run (store -> model -> stored predictions) at 10k vs 100k docs.

    python benchmarks/bench_scoring_memory.py [--sizes 10000,100000] [--backbone tiny|default]

Each size runs in a fresh interpreter (ru_maxrss only grows): N generated documents (~25 words,
the import benchmark's generator) are imported into a new store, then the worker's `score`
executor scores every document page by page and stores the predictions, as the app does. Memory
is flat when the 100k peak stays under 1.5x the 10k peak. `--backbone tiny` (the default) is a
random 2-layer, 64-wide BERT with the default tokenizer: memory, not model quality, is measured
here, and the real 6-layer MiniLM needs on the order of an hour for 100k documents on 2 shared
cores (its weights and activations add a constant, not a per-document, amount).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_import import LABELS, maxrss_mib, write_csv  # noqa: E402
from random_backbone import random_backbone  # noqa: E402


def tiny_model(folder: Path) -> str:
    """A random 2-layer, 64-wide BERT classifier with the default backbone's tokenizer."""
    from dallmi_core.modeling.model import new_classifier, save_classifier

    backbone = random_backbone(folder / "backbone", "small")
    return str(save_classifier(new_classifier(backbone, LABELS), folder / "model"))


def one_size(n: int, backbone: str) -> dict:
    """Import n documents into a fresh store, then run the `score` executor over all of them."""
    import torch

    torch.set_num_threads(1)  # a small model on shared cores runs far faster on one thread

    from dallmi_core.app.importer import import_file
    from dallmi_core.app.jobs.job import Job
    from dallmi_core.app.jobs.score import run_score
    from dallmi_core.modeling.model import default_backbone_dir, new_classifier, save_classifier
    from dallmi_core.store import Store

    with tempfile.TemporaryDirectory(prefix="bench-score-mem-") as tmp:
        folder = Path(tmp)
        write_csv(folder / "docs.csv", n)
        with Store(folder / "store.db") as store:
            project = store.create_project("Bench", LABELS)
            import_file(store, project.id, folder / "docs.csv")
            after_import = maxrss_mib()
            if backbone == "tiny":
                model = tiny_model(folder)
            else:
                model = str(save_classifier(new_classifier(str(default_backbone_dir()), LABELS), folder / "model"))
            store.enqueue_run(project.id, "score", {"model": model, "device": "cpu"})
            job = Job(store, store.claim_next_run(os.getpid()), threading.Event())
            before = maxrss_mib()
            start = time.perf_counter()
            _, metrics = run_score(job)
            seconds = time.perf_counter() - start
            peak = maxrss_mib()
            stored = len(store.load_predictions(job.run.id)[0])
    return {
        "documents": metrics["documents"],
        "stored_predictions": stored,
        "score_s": round(seconds, 1),
        "docs_per_s": round(metrics["documents"] / seconds, 1),
        "peak_rss_after_import_mib": round(after_import, 1),
        "peak_rss_before_scoring_mib": round(before, 1),
        "peak_rss_mib": round(peak, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="document counts (default 10000,100000)")
    parser.add_argument("--backbone", default="tiny", choices=["tiny", "default"])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process: one size
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_size(args.one, args.backbone)))
        return
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        child = [sys.executable, __file__, "--one", str(n), "--backbone", args.backbone]
        done = subprocess.run(child, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    if len(rows) > 1:
        ratio = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
        print(f"peak RSS {rows[-1]['documents']:,} docs / {rows[0]['documents']:,} docs: {ratio:.2f}x (goal < 1.5x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"backbone": args.backbone, "sizes": rows}, indent=2))


if __name__ == "__main__":
    main()
