"""Which checkpoint-selection rule keeps the best step? Reads `dallmi bench-quality --trace-test` JSON.

For every traced run, each rule picks one validated step using PU data only (variational loss,
PU-estimated AP, last step, a fixed step); the table reports the test mAP at the picked step,
averaged over seeds, next to the best step in hindsight (which no rule can know).

    python benchmarks/selection_rules.py bench_out/arxiv_trace.json [--method dallmi]
"""

from __future__ import annotations

import argparse
import json
import statistics


def picks(history: list[dict]) -> dict[str, dict]:
    later = [h for h in history if h["step"] > 0] or history
    rules = {
        "val_variational (step 0 allowed)": min(history, key=lambda h: h["val_variational"]),
        "val_variational (adapted steps only)": min(later, key=lambda h: h["val_variational"]),
        "val_pu_ap (step 0 allowed)": max(history, key=lambda h: h["val_pu_ap"]),
        "val_pu_ap (adapted steps only)": max(later, key=lambda h: h["val_pu_ap"]),
        "last step": history[-1],
        "source model (step 0)": history[0],
        "best in hindsight (test)": max(history, key=lambda h: h["test_map_macro"]),
    }
    for h in history:
        rules[f"fixed step {h['step']}"] = h
    return rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json")
    parser.add_argument("--method", default="dallmi")
    args = parser.parse_args()
    runs = [r for r in json.load(open(args.json))["runs"] if r["method"] == args.method and r.get("history")]
    if not runs or "test_map_macro" not in runs[0]["history"][0]:
        raise SystemExit("no traced runs: run bench-quality with --trace-test N")
    table: dict[str, list[tuple[float, int]]] = {}
    for run in runs:
        for rule, h in picks(run["history"]).items():
            table.setdefault(rule, []).append((h["test_map_macro"], h["step"]))
    print(f"{len(runs)} runs of {args.method}\n")
    print("| rule | test mAP (mean over seeds) | steps picked |\n|---|---|---|")
    for rule, values in table.items():
        if len(values) == len(runs):
            mean = statistics.mean(v for v, _ in values)
            print(f"| {rule} | {mean:.4f} | {', '.join(str(s) for _, s in values)} |")


if __name__ == "__main__":
    main()
