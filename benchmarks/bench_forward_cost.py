"""A forward's fixed cost in padded tokens (the CPU step's length groups), and bf16 against float32.

    OMP_NUM_THREADS=1 python benchmarks/bench_forward_cost.py [--backbone default]

Times forward + backward of the classifier on random ids of several shapes, fits
time = a + b * padded_tokens, and prints a / b: how many padded tokens one more forward costs
(`dallmi_core.method.step.CPU_FORWARD_COST_TOKENS`). Then times a 32 x 64 batch in float32 and under
CPU bf16 autocast (fast only where the CPU has avx512_bf16 or AMX), training and inference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dallmi_core.modeling.model import new_classifier  # noqa: E402

SHAPES = [(1, 16), (1, 64), (2, 32), (4, 16), (4, 64), (8, 32), (16, 64), (8, 128), (32, 64), (32, 128)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="default")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes over the shapes (after a warm-up)")
    args = parser.parse_args(argv)
    model = new_classifier(args.backbone, [f"label_{i}" for i in range(11)]).model.train()
    rows = []
    for rep in range(args.repeats + 1):
        for n, t in SHAPES:
            ids = torch.randint(1000, 2000, (n, t))
            start = time.perf_counter()
            model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().backward()
            model.zero_grad(set_to_none=True)
            if rep:
                rows.append((n * t, time.perf_counter() - start))
    tokens, seconds = np.array(rows).T
    per_token, per_forward = np.polyfit(tokens, seconds, 1)
    print(f"per forward {per_forward * 1e3:.1f} ms, per padded token {per_token * 1e6:.1f} us: "
          f"one forward costs as much as {per_forward / per_token:.0f} tokens")
    ids = torch.randint(1000, 2000, (32, 64))
    for training in (True, False):
        best = {}
        for bf16 in (False, True, False, True):
            times = []
            for _ in range(args.repeats + 1):
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.inference_mode(not training):
                    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
                    if training:
                        logits.float().sum().backward()
                        model.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - start)
            best[bf16] = min(best.get(bf16, float("inf")), float(np.median(times[1:])))
        print(f"{'training' if training else 'inference'} 32x64: float32 {best[False]:.3f} s, "
              f"bf16 autocast {best[True]:.3f} s ({best[False] / best[True]:.2f}x)")


if __name__ == "__main__":
    main()
