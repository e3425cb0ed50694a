"""`dallmi bench-quality|bench-speed`: the measurements docs/BENCHMARKS.md reports."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dallmi_core.cli.options import add_adapt_options, config_kwargs
from dallmi_core.config import DEVICES


def add_bench_commands(sub) -> None:
    p = sub.add_parser("bench-quality", help="the paper's protocol: source-only vs baselines vs DALLMi")
    p.add_argument("--data", required=True, help="file with source and target rows and gold labels")
    k = p.add_mutually_exclusive_group(required=True)
    k.add_argument("--positives-per-label", dest="k_tags", type=int, help="K gold positives kept as tags per label")
    k.add_argument(
        "--remove-ratio",
        help="hide this share of each label's positives (at least one kept); a list such as 0.5,0.7,0.9 gives "
        "the paper's label-removal table",
    )
    p.add_argument(
        "--seeds",
        type=_seeds,
        default="3",
        help="how many seeds (3: seeds 0, 1, 2), or which ones as a list (3,4; one seed: 4,) (default 3)",
    )
    p.add_argument(
        "--eval-on",
        default="test",
        choices=["dev", "test"],
        help="gold part scored: dev (for choosing defaults) or test (for reporting; the default)",
    )
    p.add_argument(
        "--methods",
        default="tfidf-source,source-only,bce-partial,aad,dallmi,default,target-oracle",
        help="comma-separated; `default` is the default adaptation (dallmi-anchored), `dallmi` the paper's",
    )
    p.add_argument("--backbone", default="default")
    p.add_argument("--labels", help="comma-separated label set (default: labels found in the file)")
    p.add_argument("--source-epochs", type=float, help="source fine-tuning epochs after the head warm-up (default 1)")
    p.add_argument(
        "--baseline-epochs",
        type=float,
        help="epochs of target-oracle over the target train part (default 3)",
    )
    p.add_argument(
        "--source-probe-epochs", type=float, help="source head warm-up epochs on frozen features (default 8; 0: off)"
    )
    p.add_argument("--work-dir", default="bench_out", help="caches the source model between runs")
    p.add_argument("--dump-scores", help="also save each run's raw logits, eval gold and tags (.npz) in this folder")
    p.add_argument("--json", help="write summary and per-run figures as JSON here")
    p.add_argument(
        "--trace-test",
        type=int,
        default=0,
        metavar="N",
        help="diagnostics: record test mAP on N test docs at every validation (never used for selection)",
    )
    p.add_argument("--method", default=None, help=argparse.SUPPRESS)
    add_adapt_options(p)
    p.set_defaults(func=cmd_bench_quality)

    p = sub.add_parser("bench-speed", help="vectorised vs per-label step, our pipeline vs the official, scoring")
    p.add_argument("--labels", default="5,14,40", help="label counts for the step benchmark (default 5,14,40)")
    p.add_argument("--data", default="../shared/data/movies_shift.csv", help="real texts (its target rows)")
    p.add_argument("--backbone", default="default", help="HF id or folder (default: offline all-MiniLM-L6-v2)")
    p.add_argument("--batch-size", type=int, default=16, help="unlabeled documents per step (default 16)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement (default 5)")
    p.add_argument("--max-length", type=int, default=128, help="max tokens per document (default 128)")
    p.add_argument("--docs", type=int, help="use only the first N target rows (default: all)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's peak TFLOP/s in the precision measured (e.g. 989 for an H100/H200's dense bf16):"
        " adds model FLOP utilisation (*_mfu) to the figures",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "no", "bf16"],
        help="our pipeline's and both steps' precision: auto as `dallmi adapt` picks it (bf16 on GPUs and CPUs"
        " with avx512_bf16/AMX), no (float32) or bf16; the official shape stays float32",
    )
    p.add_argument("--parts", default="step,pipeline,scoring", help="measurements to run (default all three)")
    p.add_argument(
        "--score-model",
        help="a trained classifier folder for the scoring part, so the int8 path's AP change means something"
        " (default: the backbone with a fresh head)",
    )
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--json", help="write the figures as JSON here")
    p.set_defaults(func=cmd_bench_speed)


def cmd_bench_quality(args) -> None:
    from dallmi_core.bench.quality import run_quality
    from dallmi_core.bench.report import QualityResult, ratio_table
    from dallmi_core.config import AdaptConfig, SourceConfig
    from dallmi_core.data.corpus import read_corpus

    corpus = read_corpus(args.data)
    labels = args.labels.split(",") if args.labels else corpus.label_names()
    adapt_cfg = AdaptConfig(**config_kwargs(args, AdaptConfig))
    source_kw = {"max_length": adapt_cfg.max_length, "device": adapt_cfg.device, "precision": adapt_cfg.precision}
    if args.source_epochs is not None:
        source_kw["epochs"] = args.source_epochs
    if args.source_probe_epochs is not None:
        source_kw["probe_epochs"] = args.source_probe_epochs

    ratios = _ratios(args.remove_ratio) if args.remove_ratio else [None]
    results: dict = {}

    def write_json(_result=None) -> None:
        if not args.json:
            return
        runs = [{**run, "remove_ratio": r} for r, res in results.items() for run in res.runs]
        payload = {**next(iter(results.values())).summary(), "command": " ".join(sys.argv),
                   "config": adapt_cfg.to_dict(), "runs": runs}  # fmt: skip
        if len(ratios) > 1:
            payload["by_ratio"] = {str(r): res.summary()["methods"] for r, res in results.items()}
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        os.replace(tmp, args.json)

    for ratio in ratios:
        results[ratio] = QualityResult(labels)  # written as it grows: a late failure loses nothing
        result = run_quality(
            corpus,
            labels=labels,
            methods=args.methods.split(","),
            seeds=args.seeds,
            adapt_cfg=adapt_cfg,
            source_cfg=SourceConfig(**source_kw),
            backbone=args.backbone,
            work_dir=Path(args.work_dir),
            positives_per_label=args.k_tags,
            remove_ratio=ratio,
            eval_on=args.eval_on,
            dump_dir=Path(args.dump_scores) if args.dump_scores else None,
            trace_test=args.trace_test,
            baseline_epochs=args.baseline_epochs,
            on_run=lambda res, r=ratio: (results.__setitem__(r, res), write_json()),
        )
        results[ratio] = result
        print(result.to_markdown())
    if len(ratios) > 1:
        print(ratio_table(results))


def _seeds(text: str) -> list[int]:
    """A count (the first N seeds) or an explicit list, so a stopped table can be finished seed by seed."""
    try:
        if "," in text:
            seeds = [int(x) for x in text.split(",") if x.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a count such as 5 or seeds such as 3,4") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one seed, none negative or repeated")
    return seeds


def _ratios(text: str) -> list[float]:
    from dallmi_core.errors import ConfigError

    try:
        ratios = [float(x) for x in text.split(",")]
    except ValueError as exc:
        raise ConfigError(f"--remove-ratio {text!r}: give shares such as 0.5 or 0.5,0.7,0.9.") from exc
    if not all(0 < r < 1 for r in ratios):
        raise ConfigError(f"--remove-ratio {text!r}: each share must be between 0 and 1.")
    return ratios


def cmd_bench_speed(args) -> None:
    import torch

    from dallmi_core.bench.speed import PARTS, SpeedSettings, run_speed
    from dallmi_core.data.corpus import read_corpus
    from dallmi_core.errors import ConfigError, DataError
    from dallmi_core.modeling.model import resolve_backbone, resolve_device

    try:
        labels = tuple(int(x) for x in args.labels.split(","))
    except ValueError as exc:
        raise ConfigError(f"--labels {args.labels!r}: give label counts such as 5,14,40.") from exc
    if not Path(args.data).is_file():
        raise DataError(f"--data {args.data}: no such file; pass a file with text and labels columns.")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        raise ConfigError(f"--peak-tflops {args.peak_tflops}: give the device's peak, a positive number of TFLOP/s.")
    parts = tuple(part.strip() for part in args.parts.split(","))
    if not parts or set(parts) - set(PARTS):
        raise ConfigError(f"--parts {args.parts!r}: choose from {','.join(PARTS)}.")
    settings = SpeedSettings(
        labels=labels,
        batch_size=args.batch_size,
        steps=args.steps,
        max_length=args.max_length,
        docs=args.docs,
        precision=args.precision,
        peak_tflops=args.peak_tflops,
        parts=parts,
        score_model=args.score_model,
    )
    device = torch.device(resolve_device(args.device))
    result = run_speed(read_corpus(args.data), resolve_backbone(args.backbone), settings, device)
    result["command"] = " ".join(sys.argv)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
