"""`dallmi finetune-source|adapt|score|evaluate`: the model's life from the shell.

Settings come from the config dataclasses (options.py); under `accelerate launch` or torchrun
every rank trains or scores its shard and rank 0 writes the result.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from dallmi_core.cli.options import add_adapt_options, add_source_options, config_kwargs
from dallmi_core.config import DEFAULT_METHOD, DEVICES

ADAPT_METHODS = (DEFAULT_METHOD, "dallmi", "bce-partial")  # aad needs the source text: bench-quality only


def add_model_commands(sub) -> None:
    p = sub.add_parser("finetune-source", help="BCE fine-tune a backbone on the labelled source rows of a file")
    p.add_argument("--data", required=True, help="file with id,text,labels,domain (rows with domain=source are used)")
    p.add_argument("--out", required=True, help="folder for the source model")
    p.add_argument("--backbone", default="default", help="HF id or folder (default: offline all-MiniLM-L6-v2)")
    p.add_argument("--labels", help="comma-separated label set (default: labels found in the file)")
    add_source_options(p)
    p.set_defaults(func=cmd_finetune_source)

    p = sub.add_parser("adapt", help="adapt a model to target text from tagged positives (DALLMi or a baseline)")
    p.add_argument("--model", required=True, help="source model folder")
    p.add_argument("--target", required=True, help="target file; its labels column holds the tagged positives")
    p.add_argument("--out", required=True, help="folder for the adapted model")
    p.add_argument(
        "--method",
        choices=ADAPT_METHODS,
        help=f"{DEFAULT_METHOD} (default: DALLMi anchored to the source model, docs/METHOD.md) or the paper's dallmi",
    )
    p.add_argument("--checkpoint-dir", help="write resumable checkpoints here; an existing one is resumed")
    p.add_argument("--checkpoint-every", type=int, default=10, help="steps between checkpoints (default 10)")
    add_adapt_options(p)
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
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument(
        "--no-fast-inference",
        action="store_true",
        help="score in float32 only: no int8 CPU path (also DALLMI_FAST_INFERENCE=0; by default a CPU with VNNI"
        " takes it where it is measured faster)",
    )
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("evaluate", help="per-label AP and macro/micro mAP against gold labels")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="file whose labels column holds gold labels")
    p.add_argument("--json", help="also write the figures as JSON here")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.set_defaults(func=cmd_evaluate)


def cmd_finetune_source(args) -> None:
    from dallmi_core.config import SourceConfig
    from dallmi_core.data.corpus import read_corpus
    from dallmi_core.modeling.model import new_classifier, save_classifier
    from dallmi_core.training.callbacks import TqdmProgress
    from dallmi_core.training.distributed import is_main
    from dallmi_core.training.source import finetune_source

    corpus = read_corpus(args.data).where_domain("source")
    if len(corpus) == 0:
        from dallmi_core.errors import DataError

        raise DataError(f"{Path(args.data).name}: no rows with domain=source; add a domain column.")
    labels = args.labels.split(",") if args.labels else corpus.label_names()
    clf = new_classifier(args.backbone, labels)
    cfg = SourceConfig(**config_kwargs(args, SourceConfig))
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
    from dallmi_core.training.adapt import adapt
    from dallmi_core.training.callbacks import CheckpointEvery, TqdmProgress
    from dallmi_core.training.distributed import gather, is_main

    clf = load_classifier(args.model)
    corpus = read_corpus(args.target).where_domain("target")
    tags_matrix = corpus.label_matrix(clf.label_names)
    tags = [list(map(int, (tags_matrix[:, j] > 0).nonzero()[0])) for j in range(clf.num_labels)]
    cfg = AdaptConfig(**config_kwargs(args, AdaptConfig))
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
    `fast` None: the int8 CPU path where fast_inference.py takes it (VNNI, measured faster); False: float32."""
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
