"""Import speed and memory: N synthetic documents -> a CSV -> a fresh store, streamed.

    python benchmarks/bench_import.py [--n 200000] [--chunk-rows 2000] [--meta] [--no-tracemalloc]

Prints docs/s and the process's peak RSS (ru_maxrss, before and after the import) for a plain
timed import, then repeats the import into another fresh store under tracemalloc to report the
peak of Python allocations (tracemalloc slows Python down, so that run is not timed). With --meta
each row also has three metadata columns (channel, date, score), kept as document metadata.
"""

from __future__ import annotations

import argparse
import csv
import random
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dallmi_core.app.importer import import_file  # noqa: E402
from dallmi_core.store import Store  # noqa: E402

LABELS = ["billing", "login", "shipping", "returns", "product"]
WORDS = (
    "the my please help today again order thanks hello issue account invoice refund charge payment "
    "password locked signin parcel delivery courier tracking return exchange size broken battery "
    "screen warranty price discount late early box label address phone email app update"
).split()


def write_csv(path: Path, n: int, seed: int = 0, meta: bool = False) -> None:
    """~25-word documents; 10% eval rows with gold labels, 1% target rows with a tag."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["id", "text", "labels", "domain"] + (["channel", "date", "score"] if meta else []))
        for i in range(n):
            text = " ".join(rng.choices(WORDS, k=rng.randint(10, 40))) + f" #{i}"
            domain = "eval" if i % 10 == 0 else "target"
            tagged = domain == "eval" or i % 100 == 1
            labels = "|".join(sorted(set(rng.choices(LABELS, k=rng.randint(1, 2))))) if tagged else ""
            extra = [rng.choice(("app", "web", "email")), f"2024-{i % 12 + 1:02d}-{i % 28 + 1:02d}", str(i % 5)]
            writer.writerow([f"doc-{i}", text, labels, domain] + (extra if meta else []))


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_import(folder: Path, name: str, csv_path: Path, chunk_rows: int):
    with Store(folder / f"{name}.db") as store:
        project = store.create_project("Bench", LABELS)
        start = time.perf_counter()
        report = import_file(store, project.id, csv_path, chunk_rows=chunk_rows)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        hits = len(store.search(project.id, "parcel delivery", limit=50))
        search_ms = (time.perf_counter() - start) * 1000
    return report, seconds, hits, search_ms


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="documents to generate (default 200000)")
    parser.add_argument("--chunk-rows", type=int, default=2000, help="rows per chunk/insert batch")
    parser.add_argument("--meta", action="store_true", help="three metadata columns per row")
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the tracemalloc run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        folder = Path(tmp)
        csv_path = folder / "docs.csv"
        start = time.perf_counter()
        write_csv(csv_path, args.n, meta=args.meta)
        print(
            f"generated {args.n:,} documents ({csv_path.stat().st_size / 2**20:.1f} MiB CSV) "
            f"in {time.perf_counter() - start:.1f} s"
        )
        rss_before = maxrss_mib()
        report, seconds, hits, search_ms = run_import(folder, "timed", csv_path, args.chunk_rows)
        db_mib = sum(p.stat().st_size for p in folder.glob("timed.db*")) / 2**20
        print(
            f"imported {report.imported:,} docs ({report.tags_added:,} tags, {report.gold_rows:,} gold rows, "
            f"{report.repeated:,} repeats, {report.attached:,} attached) in {seconds:.1f} s = "
            f"{report.imported / seconds:,.0f} docs/s"
        )
        print(
            f"peak RSS (ru_maxrss): {rss_before:.0f} MiB before the import, {maxrss_mib():.0f} MiB after; "
            f"store on disk {db_mib:.0f} MiB"
        )
        print(f"FTS search 'parcel delivery': {hits} hits in {search_ms:.1f} ms")
        if not args.no_tracemalloc:
            tracemalloc.start()
            run_import(folder, "traced", csv_path, args.chunk_rows)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            print(f"tracemalloc peak (Python allocations during the import): {peak / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
