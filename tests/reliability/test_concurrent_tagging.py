"""Four processes tagging at once through the services layer lose and duplicate nothing (the CI-sized
run of benchmarks/bench_tagging.py, which measures 4 x 1,000 tags and their latency)."""

from __future__ import annotations

import importlib
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_four_processes_racing_on_the_same_tags_lose_and_duplicate_nothing(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # importable by name: the spawned processes import it too
    report = importlib.import_module("bench_tagging").run(tmp_path, processes=4, per_process=150)
    assert report["tag_calls"] == 600 and report["distinct_pairs_expected"] == 300
    assert report["created"] == 300  # each raced pair was created by exactly one of its two processes
    assert report["live_tags_in_store"] == report["distinct_tags_in_store"] == report["annotation_rows"] == 300
    assert report["lost"] == report["duplicated"] == 0 and report["integrity"] == "ok"
    assert report["latency_ms"]["p95"] < 100, report["latency_ms"]
