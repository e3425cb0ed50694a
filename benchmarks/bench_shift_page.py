"""Domain-shift page: the first (computing) view and the cached render, on N source + N target documents.

    python benchmarks/bench_shift_page.py [--n 5000] [--backbone tiny|default|PATH] [--repeats 5]

Builds a store with N generated source and N target documents (two overlapping vocabularies) and a
finished adaptation run (an untrained head on the backbone: the timing does not depend on the
weights), times `shift_analysis` (what the page's "Compute" button runs: embeddings with both models,
domain classifier, MMD, log-odds, prior shift), then renders the Domain shift page with Streamlit's
AppTest from the cache and reports the median script time over `--repeats` fresh sessions.
`tiny` is a random 2-layer, 32-wide BERT on the default tokenizer (as in the tests).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from random_backbone import random_backbone  # noqa: E402

from dallmi_core.app import importer, shift_view  # noqa: E402

LABELS = ["billing", "login", "shipping", "returns", "product"]
COMMON = "the my please help today again order thanks hello issue account app update".split()
SOURCE = "invoice refund charge payment password locked signin parcel delivery courier tracking".split()
TARGET = "return exchange size broken battery screen warranty price discount late box label".split()


def texts(n: int, domain_words: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choices(COMMON, k=rng.randint(5, 20)) + rng.choices(domain_words, k=rng.randint(2, 10)))
        for _ in range(n)
    ]


def seed_store(root: Path, n: int, backbone: str) -> int:
    """A project with N source (gold) + N target documents and one finished adapt run; returns its id."""
    import pandas as pd
    import torch

    from dallmi_core.app.services import open_services
    from dallmi_core.modeling.model import new_classifier, save_classifier

    rng = np.random.default_rng(0)
    gold = ["|".join(rng.choice(LABELS, size=rng.integers(1, 3), replace=False)) for _ in range(n)]
    frame = pd.DataFrame(
        {
            "id": [f"s{i}" for i in range(n)] + [f"t{i}" for i in range(n)],
            "text": texts(n, SOURCE, 1) + texts(n, TARGET, 2),
            "labels": gold + [""] * n,
            "domain": ["source"] * n + ["target"] * n,
        }
    )
    frame.to_csv(root / "docs.csv", index=False)
    with open_services(root / "data", autostart_worker=False) as svc:
        project = svc.create_project("bench", LABELS, backbone=backbone)
        importer.import_file(svc.store, project.id, root / "docs.csv")
        target = svc.store.document_ids(project.id, "target")
        svc.store.tag_many(project.id, target[:10], "billing")
        torch.manual_seed(0)
        model = save_classifier(new_classifier(backbone, LABELS), svc.store.models_dir / "run-bench")
        store = svc.store
        run_id = store.enqueue_run(project.id, "adapt", {"backbone": backbone, "config": {"max_length": 128}})
        store.claim_next_run(1)
        store.save_predictions(run_id, target, rng.random((n, len(LABELS))).astype(np.float32))
        store.finish_run(run_id, "done", model_path=str(model), metrics={"estimate": True})
        return run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="documents per domain")
    parser.add_argument("--backbone", default="tiny", help="tiny, default (MiniLM) or a model folder")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    from dallmi_core.app.services import open_services

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="bench-shift-") as tmp:
        root = Path(tmp)
        backbone = random_backbone(root / "tiny", "tiny") if args.backbone == "tiny" else args.backbone
        start = time.perf_counter()
        run_id = seed_store(root, args.n, backbone)
        print(f"seeded {args.n:,} source + {args.n:,} target documents in {time.perf_counter() - start:.1f} s")

        with open_services(root / "data", autostart_worker=False) as svc:
            start = time.perf_counter()
            analysis = shift_view.shift_analysis(svc.store, run_id)
            compute = time.perf_counter() - start
        meta = analysis.meta
        print(
            f"first view (compute + cache): {compute:.1f} s on {meta['sampled_source']:,} + "
            f"{meta['sampled_target']:,} embedded documents, backbone {args.backbone}"
        )

        from streamlit.testing.v1 import AppTest

        os.environ.update({"DALLMI_DATA_DIR": str(root / "data"), "DALLMI_NO_WORKER": "1", "DALLMI_NO_DEMO": "1"})
        times = []
        for _ in range(args.repeats + 1):  # the first session also imports plotly/pandas: not counted
            at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
            at.run()
            at.switch_page("pages/domain_shift.py")
            start = time.perf_counter()
            at.run()
            times.append(time.perf_counter() - start)
            if at.exception or [b for b in at.button if b.key == "compute_shift"]:
                raise SystemExit(f"the page did not render from the cache: {at.exception}")
        cached = times[1:]
        print(
            f"cached render of the Domain shift page (AppTest script time): median {statistics.median(cached):.2f} s, "
            f"max {max(cached):.2f} s over {len(cached)} sessions (first session {times[0]:.2f} s)"
        )


if __name__ == "__main__":
    main()
