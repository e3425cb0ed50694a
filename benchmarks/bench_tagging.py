"""Concurrent tagging: P processes tag N documents each, at the same time, through the services layer.

    python benchmarks/bench_tagging.py [--processes 4] [--per-process 1000] [--json out.json]

Each process opens its own Services on one data folder (as separate app servers or CLI runs
would) and tags its documents one call at a time, timing every call. Neighbouring processes share
Processes work in pairs: both of a pair tag the same documents, in the same order, with the same label,
so every (document, label) pair is raced by two processes at once, and the store must create each tag
exactly once (no tag lost, none duplicated).
Prints the counts and the latency of one tag (p50/p95/max over all calls of all processes).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dallmi_core.app import importer  # noqa: E402
from dallmi_core.app.services import open_services  # noqa: E402

LABEL = "billing"


def _tagger(data_dir: str, project_id: int, doc_ids: list[int], ready, start, out) -> None:
    services = open_services(data_dir, autostart_worker=False)
    ready.put(True)
    start.wait()
    latencies, created = [], 0
    for doc in doc_ids:
        began = time.perf_counter()
        created += services.store.tag(project_id, doc, LABEL)
        latencies.append(time.perf_counter() - began)
    services.close()
    out.put({"created": created, "calls": len(doc_ids), "latencies": latencies})


def run(data_dir: str | Path, processes: int = 4, per_process: int = 1000) -> dict:
    """Seed a project with processes * per_process / 2 documents, tag concurrently, check the store."""
    if processes < 2 or processes % 2:
        raise ValueError("processes must be an even number (they work in pairs).")
    n_docs = processes * per_process // 2
    services = open_services(data_dir, autostart_worker=False)
    project = services.create_project(f"bench-{time.time_ns()}", [LABEL, "login"])
    path = Path(data_dir) / "bench-docs.csv"
    path.write_text("id,text\n" + "".join(f"d{i},ticket number {i} about an invoice\n" for i in range(n_docs)))
    importer.import_file(services.store, project.id, path)
    docs = services.store.document_ids(project.id, "target")
    slices = [docs[(i // 2) * per_process : (i // 2 + 1) * per_process] for i in range(processes)]
    ctx = mp.get_context("spawn")  # fresh interpreters, like separate servers
    ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_tagger, args=(str(data_dir), project.id, s, ready, start, out)) for s in slices]
    for p in procs:
        p.start()
    for _ in procs:  # every process has imported and opened its store: start them together
        ready.get(timeout=300)
    began = time.perf_counter()
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - began
    for p in procs:
        p.join(timeout=60)
    tagged = services.store.tags_by_label(project.id)[LABEL]
    latencies = sorted(x for r in results for x in r["latencies"])
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    report = {
        "processes": processes,
        "tags_per_process": per_process,
        "tag_calls": sum(r["calls"] for r in results),
        "distinct_pairs_expected": n_docs,
        "created": sum(r["created"] for r in results),
        "live_tags_in_store": len(tagged),
        "distinct_tags_in_store": len(set(tagged)),
        "annotation_rows": len(services.store.annotations(project.id, include_deleted=True)),
        "integrity": services.store.integrity_check(),
        "wall_s": round(wall, 2),
        "tags_per_s": round(sum(r["calls"] for r in results) / wall, 1),
        "latency_ms": {
            "mean": round(sum(latencies) / len(latencies) * 1000, 2),
            "p50": round(pick(0.50), 2),
            "p95": round(pick(0.95), 2),
            "p99": round(pick(0.99), 2),
            "max": round(latencies[-1] * 1000, 2),
        },
    }
    report["lost"] = n_docs - len(set(tagged))
    report["duplicated"] = len(tagged) - len(set(tagged)) + report["created"] - n_docs
    services.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--per-process", type=int, default=1000)
    parser.add_argument("--data-dir", help="default: a fresh temporary folder")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dallmi-bench-tagging-") as tmp:
        report = run(args.data_dir or tmp, args.processes, args.per_process)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["lost"] == report["duplicated"] == 0 and report["integrity"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
