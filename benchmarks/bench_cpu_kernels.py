"""Kernel choices for a CPU training step, measured: SDPA or eager attention, and torch.compile.

    OMP_NUM_THREADS=1 python benchmarks/bench_cpu_kernels.py [--data ../shared/data/movies_shift.csv] [--compile]

One step = forward in the CPU length groups + backward (`step.bce_step`) over 71 target documents
of the file drawn at random (as many sequences as a DALLMi step at 11 labels), in float32 and
under bf16 autocast. The variants run in turn on the same batches, so load falls on all alike;
each figure is the median over the batches and repeats. PyTorch's fused CPU attention cannot drop
out attention weights, so a training forward through SDPA takes its math path (float32 inside);
`--compile` adds torch.compile(dynamic=True) of the eager-attention model under bf16, its
compile time reported apart.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dallmi_core.data.corpus import read_corpus  # noqa: E402
from dallmi_core.method.step import bce_step  # noqa: E402
from dallmi_core.modeling.model import new_classifier  # noqa: E402
from dallmi_core.modeling.tokens import TokenizedCorpus  # noqa: E402

SEQUENCES = 71


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/movies_shift.csv")
    parser.add_argument("--backbone", default="default")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes to compile)")
    args = parser.parse_args(argv)
    corpus = read_corpus(args.data).where_domain("target")
    labels = corpus.label_names()
    clf = new_classifier(args.backbone, labels)
    tokens = TokenizedCorpus.build(clf.tokenizer, corpus.texts, 128)
    gold = corpus.label_matrix(labels)
    model = clf.model.train()
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(tokens), SEQUENCES, replace=False) for _ in range(args.batches)]
    cpu = torch.device("cpu")

    def step(net, rows, bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss, _ = bce_step(net, tokens, rows, gold[rows], cpu)
        loss.backward()
        model.zero_grad(set_to_none=True)

    variants = {(attention, bf16): model for attention in ("sdpa", "eager") for bf16 in (False, True)}
    if args.compile:
        model.set_attn_implementation("eager")
        compiled = torch.compile(model, dynamic=True)
        start = time.perf_counter()
        step(compiled, batches[0], True)
        print(f"torch.compile: first step (compiling) {time.perf_counter() - start:.0f} s")
        variants["compiled eager", True] = compiled
    times: dict[tuple[str, bool], list[float]] = {key: [] for key in variants}
    for rep in range(args.repeats + 1):
        for (attention, bf16), net in variants.items():
            model.set_attn_implementation("eager" if "eager" in attention else "sdpa")
            for rows in batches:
                start = time.perf_counter()
                step(net, rows, bf16)
                if rep:  # the first pass warms up
                    times[attention, bf16].append(time.perf_counter() - start)
    base = float(np.median(times["sdpa", False]))
    for (attention, bf16), seconds in times.items():
        median = float(np.median(seconds))
        precision = "bf16 autocast" if bf16 else "float32"
        print(f"{attention:>15} attention, {precision:>13}: {median:.3f} s/step ({base / median:.2f}x sdpa float32)")


if __name__ == "__main__":
    main()
