"""The `dallmi` command: headless fine-tuning, adaptation, scoring, evaluation and benchmarks.

Every command prints a one-line error (exit 2) for input the user can fix (DallmiError);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from dallmi_core.cli.store import add_store_commands
from dallmi_core.config import DEFAULT_METHOD

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _add_training(p: argparse.ArgumentParser, *, epochs_default: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=float, help=f"passes over the training data ({epochs_default})")
    g.add_argument("--max-steps", type=int, help="optimizer steps (instead of --epochs)")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--batch-size", type=int, help="documents per batch (unlabeled batch for DALLMi)")
    p.add_argument("--max-length", type=int, help="max tokens per document (default 128)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--precision", default="auto", choices=["auto", "no", "bf16", "fp16"])


def _add_adapt_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variational", choices=["log", "norm"], help="variational PU loss variant (default log)")
    p.add_argument(
        "--step-positives",
        dest="positives_per_label",
        type=int,
        help="tagged positives per label in every step (default 8)",
    )
    p.add_argument("--mixup-pairs", type=int, help="MixUp pairs per label per step (default 1)")
    p.add_argument("--lambda-mix", type=float, help="weight of the MixUp regulariser (default 1)")
    p.add_argument("--mixup-at", choices=["word_embeddings", "embedding_output"])
    p.add_argument("--detach-target", action="store_true", default=None, help="stop the MixUp target's gradient")
    p.add_argument("--tag-passes", type=float, help="step budget: passes over each label's tags (default 10)")
    p.add_argument(
        "--selection",
        choices=["val_variational", "val_pu_ap", "last"],
        help="last: keep the final step (default); val_variational or val_pu_ap: the best step on held-out PU data",
    )
    p.add_argument("--eval-every", type=int, help="validate every N steps (default 10)")
    p.add_argument(
        "--anchor-weight",
        type=float,
        help=f"{DEFAULT_METHOD}: weight of the KL anchor to the source model's predictions (default 1; 0: off)",
    )
    p.add_argument(
        "--wise-alpha",
        type=float,
        help=f"{DEFAULT_METHOD}: final weights = alpha * adapted + (1 - alpha) * source (default 0.5; 1: off)",
    )


_ADAPT_FIELDS = (
    "epochs",
    "max_steps",
    "lr",
    "batch_size",
    "max_length",
    "seed",
    "device",
    "precision",
    "variational",
    "positives_per_label",
    "mixup_pairs",
    "lambda_mix",
    "mixup_at",
    "detach_target",
    "tag_passes",
    "selection",
    "eval_every",
    "method",
    "patience",
    "anchor_weight",
    "wise_alpha",
)


# fmt: off
_SOURCE_FIELDS = ("epochs", "max_steps", "lr", "batch_size", "max_length", "seed", "device", "precision",
                  "head_lr", "probe_epochs")
# fmt: on


def _config_kwargs(args: argparse.Namespace, fields: tuple[str, ...]) -> dict:
    return {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}


def _source_config(args):
    from dallmi_core.config import SourceConfig

    kw = _config_kwargs(args, _SOURCE_FIELDS)
    return SourceConfig(**kw)


def cmd_finetune_source(args) -> None:
    from dallmi_core.data.corpus import read_corpus
    from dallmi_core.modeling.model import new_classifier, save_classifier
    from dallmi_core.training.callbacks import TqdmProgress
    from dallmi_core.training.distributed import is_main
    from dallmi_core.training.train import finetune_source

    corpus = read_corpus(args.data).where_domain("source")
    if len(corpus) == 0:
        from dallmi_core.errors import DataError

        raise DataError(f"{Path(args.data).name}: no rows with domain=source; add a domain column.")
    labels = args.labels.split(",") if args.labels else corpus.label_names()
    clf = new_classifier(args.backbone, labels)
    cfg = _source_config(args)
    progress = TqdmProgress("finetune-source", disable=not is_main())
    result = finetune_source(clf, corpus.texts, corpus.label_matrix(labels), cfg, callbacks=[progress])
    if is_main():  # under torchrun / accelerate launch every rank holds the same weights
        save_classifier(clf, args.out)
        print(
            f"Source model ({len(labels)} labels, {len(corpus)} documents, {_trained_in(result)}) written to {args.out}"
        )


def cmd_adapt(args) -> None:
    from dallmi_core.config import AdaptConfig
    from dallmi_core.data.corpus import read_corpus
    from dallmi_core.modeling.model import load_classifier, save_classifier
    from dallmi_core.training.callbacks import CheckpointEvery, TqdmProgress
    from dallmi_core.training.distributed import gather, is_main
    from dallmi_core.training.train import adapt

    clf = load_classifier(args.model)
    corpus = read_corpus(args.target).where_domain("target")
    tags_matrix = corpus.label_matrix(clf.label_names)
    tags = [list(map(int, (tags_matrix[:, j] > 0).nonzero()[0])) for j in range(clf.num_labels)]
    cfg = AdaptConfig(**_config_kwargs(args, _ADAPT_FIELDS))
    skipped = [name for name, t in zip(clf.label_names, tags, strict=True) if not t]
    if skipped:
        print(f"No tagged positive for: {', '.join(skipped)} (skipped by the PU loss)", file=sys.stderr)
    callbacks = [TqdmProgress(f"adapt ({cfg.method})", disable=not is_main())]
    if args.checkpoint_dir:
        callbacks.append(CheckpointEvery(args.checkpoint_every))
    result = adapt(clf, corpus.texts, tags, cfg, callbacks=callbacks, checkpoint_dir=args.checkpoint_dir)
    shards = gather(result.extras.get("unlabeled_shard", []))
    if not is_main():  # under torchrun / accelerate launch every rank holds the same weights
        return
    save_classifier(result.clf, args.out)
    if args.shards_json:
        Path(args.shards_json).write_text(json.dumps({"world_size": len(shards), "unlabeled_shards": shards}))
    state = result.state
    print(
        f"Adapted model written to {args.out} after {state.step} steps ({_trained_in(result)});"
        f" kept step {state.best_step}" + (f" ({state.stop_reason})" if state.stop_reason else "")
    )


def _trained_in(result) -> str:
    from dallmi_core.config import precision_words

    return precision_words(result.extras.get("precision"))


def _score(model_dir, data_path, device="auto", fast=None):
    """Scores of every document; under a launcher each rank scores its shard and all get all.
    `fast` None: the int8 CPU path where it is measured faster (fast_inference.py); False: float32."""
    from tqdm.auto import tqdm

    from dallmi_core.data.corpus import read_corpus
    from dallmi_core.modeling.model import load_classifier, resolve_device
    from dallmi_core.modeling.scoring import score_texts
    from dallmi_core.training.distributed import is_main, rank_device, score_sharded, sharded

    clf = load_classifier(model_dir)
    corpus = read_corpus(data_path)
    on = rank_device(resolve_device(device))
    with tqdm(total=len(sharded(len(corpus))), desc="score", unit="doc", disable=not is_main()) as bar:

        def score(positions):
            return score_texts(clf, [corpus.texts[i] for i in positions], device=on, on_batch=bar.update, fast=fast)

        scores = score_sharded(score, len(corpus))
    return clf, corpus, scores


def cmd_score(args) -> None:
    import numpy as np
    import pandas as pd

    from dallmi_core.errors import DataError
    from dallmi_core.modeling.fast_inference import FAST_INFERENCE_ENV
    from dallmi_core.training.distributed import is_main

    out = Path(args.out)
    if out.suffix not in (".csv", ".parquet"):
        raise DataError(f"--out {out.name}: write predictions to a .csv or .parquet file.")
    if args.no_fast_inference:
        os.environ[FAST_INFERENCE_ENV] = "0"  # read by every scoring call of this process
    clf, corpus, scores = _score(args.model, args.data, args.device)
    if not is_main():
        return
    thresholds = clf.thresholds()
    frame = pd.DataFrame({"id": corpus.ids})
    for j, name in enumerate(clf.label_names):
        frame[f"score_{name}"] = scores[:, j]
    for j, name in enumerate(clf.label_names):
        frame[f"pred_{name}"] = (scores[:, j] >= np.float32(thresholds[name])).astype(int)  # float32, as stored
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=out.suffix, delete=False) as tmp:
        (frame.to_csv if out.suffix == ".csv" else frame.to_parquet)(tmp.name, index=False)
    os.replace(tmp.name, out)
    print(f"{len(frame)} predictions written to {out}")


def cmd_evaluate(args) -> None:
    from dallmi_core.evaluation.metrics import ap_report, thresholded_ap
    from dallmi_core.training.distributed import is_main

    clf, corpus, scores = _score(args.model, args.data, args.device, fast=False)  # figures in float32
    if not is_main():
        return
    gold = corpus.label_matrix(clf.label_names)
    report = ap_report(gold, scores, clf.label_names)
    print(report.to_markdown())
    paper = thresholded_ap(gold, scores, clf.label_names)
    print(f"\nThresholded AP at 0.5 (paper-comparison only): macro {paper.map_macro}")
    if args.json:
        payload = {**report.to_dict(), "thresholded_ap_macro": paper.map_macro}
        Path(args.json).write_text(json.dumps(payload, indent=2))


def cmd_bench_quality(args) -> None:
    from dallmi_core.bench.quality import QualityResult, ratio_table, run_quality
    from dallmi_core.config import AdaptConfig, SourceConfig
    from dallmi_core.data.corpus import read_corpus

    corpus = read_corpus(args.data)
    labels = args.labels.split(",") if args.labels else corpus.label_names()
    adapt_cfg = AdaptConfig(**_config_kwargs(args, _ADAPT_FIELDS))
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
            seeds=range(args.seeds),
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


def cmd_worker(args) -> None:
    from dallmi_core.app.worker import main as worker_main

    argv = ["--poll", str(args.poll)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    argv += (["--idle-exit", str(args.idle_exit)] if args.idle_exit is not None else []) + (
        ["--once"] if args.once else []
    )
    code = worker_main(argv)
    if code:
        raise SystemExit(code)


def cmd_hash_password(args) -> None:
    """Print the salted scrypt hash of a password (asked twice on a terminal, else the first stdin line)."""
    import getpass

    from dallmi_core.app.auth import HASH_ENV, hash_password
    from dallmi_core.errors import ConfigError

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise ConfigError("the two passwords differ. Try again.")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    print(hash_password(password))
    print(f'Set it as {HASH_ENV}=<hash> or password_hash = "<hash>" in .streamlit/secrets.toml.', file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dallmi", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("finetune-source", help="BCE fine-tune a backbone on the labelled source rows of a file")
    p.add_argument("--data", required=True, help="file with id,text,labels,domain (rows with domain=source are used)")
    p.add_argument("--out", required=True, help="folder for the source model")
    p.add_argument("--backbone", default="default", help="HF id or folder (default: offline all-MiniLM-L6-v2)")
    p.add_argument("--labels", help="comma-separated label set (default: labels found in the file)")
    p.add_argument("--head-lr", type=float, help="learning rate of the head while fine-tuning (default: --lr)")
    p.add_argument(
        "--probe-epochs",
        type=float,
        help="first train the head alone on frozen features for this many epochs (default 8; 0: off)",
    )
    _add_training(p, epochs_default="default 1, after the head warm-up")
    p.set_defaults(func=cmd_finetune_source)

    p = sub.add_parser("adapt", help="adapt a model to target text from tagged positives (DALLMi or a baseline)")
    p.add_argument("--model", required=True, help="source model folder")
    p.add_argument("--target", required=True, help="target file; its labels column holds the tagged positives")
    p.add_argument("--out", required=True, help="folder for the adapted model")
    p.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        choices=[DEFAULT_METHOD, "dallmi", "bce-partial"],
        help=f"{DEFAULT_METHOD} (default: DALLMi anchored to the source model, docs/METHOD.md) or the paper's dallmi",
    )
    p.add_argument("--checkpoint-dir", help="write resumable checkpoints here; an existing one is resumed")
    p.add_argument("--checkpoint-every", type=int, default=10, help="steps between checkpoints (default 10)")
    _add_training(p, epochs_default="default: a step budget of --tag-passes over the tags")
    _add_adapt_options(p)
    p.add_argument("--patience", type=int, help="stop after N validations without improvement")
    p.add_argument(
        "--shards-json",
        help="data parallel: write every rank's unlabeled shard (target row positions) here, to check sharding",
    )
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("score", help="write per-label scores and 0/1 predictions for a file")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="F.csv or F.parquet")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument(
        "--no-fast-inference",
        action="store_true",
        help="score in float32 only: no int8 CPU path (also DALLMI_FAST_INFERENCE=0; by default a CPU takes it"
        " where it is measured faster)",
    )
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("evaluate", help="per-label AP and macro/micro mAP against gold labels")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="file whose labels column holds gold labels")
    p.add_argument("--json", help="also write the figures as JSON here")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("bench-quality", help="the paper's protocol: source-only vs baselines vs DALLMi")
    p.add_argument("--data", required=True, help="file with source and target rows and gold labels")
    k = p.add_mutually_exclusive_group(required=True)
    k.add_argument("--positives-per-label", dest="k_tags", type=int, help="K gold positives kept as tags per label")
    k.add_argument(
        "--remove-ratio",
        help="hide this share of each label's positives (at least one kept); a list such as 0.5,0.7,0.9 gives "
        "the paper's label-removal table",
    )
    p.add_argument("--seeds", type=int, default=3)
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
    _add_training(p, epochs_default="adaptation; default: tag budget")
    _add_adapt_options(p)
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
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", help="write the figures as JSON here")
    p.set_defaults(func=cmd_bench_speed)

    p = sub.add_parser("worker", help="serve the project store's run queue (the app starts one itself)")
    p.add_argument("--data-dir", help="data directory (default: $DALLMI_DATA_DIR or ./dallmi_data)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between queue checks")
    p.add_argument("--idle-exit", type=float, help="exit after this many idle seconds (default: never)")
    p.add_argument("--once", action="store_true", help="exit after one run")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("hash-password", help="print the salted scrypt hash for the app's optional password gate")
    p.set_defaults(func=cmd_hash_password)
    add_store_commands(sub)  # projects, import, export (store_cli.py)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dallmi_core.errors import DallmiError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DallmiError as exc:
        print(f"dallmi {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
