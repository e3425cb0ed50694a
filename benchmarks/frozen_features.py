"""How well do a backbone's frozen features transfer from source to target? (diagnostic)

Embeds every row once (first token, the BERT pooler's output, and mean pooling), trains a
one-vs-rest logistic regression on the source rows and reports macro AP on all target rows.
This is what showed that plain fine-tuning lost to the frozen features (docs/BENCHMARKS.md,
"Source model") and led to the head warm-up in dallmi_core/training/probe.py.

    python benchmarks/frozen_features.py --data ../shared/data/arxiv_shift.csv --max-length 128
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from transformers import AutoModel, AutoTokenizer

from dallmi_core.data.corpus import read_corpus
from dallmi_core.evaluation.metrics import ap_report
from dallmi_core.modeling.model import resolve_backbone


def embed(backbone: str, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    tokenizer, model = AutoTokenizer.from_pretrained(backbone), AutoModel.from_pretrained(backbone).eval()
    out: dict[str, list[np.ndarray]] = {"first token": [], "pooler": [], "mean": []}
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            batch = tokenizer(
                texts[start : start + 64], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
            )
            result = model(**batch)
            hidden, mask = result.last_hidden_state, batch["attention_mask"].unsqueeze(-1).float()
            out["first token"].append(hidden[:, 0].numpy())
            if getattr(result, "pooler_output", None) is not None:
                out["pooler"].append(result.pooler_output.numpy())
            out["mean"].append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return {name: np.concatenate(parts) for name, parts in out.items() if parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--backbone", default="default")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    args = parser.parse_args()

    corpus = read_corpus(args.data)
    labels = corpus.label_names()
    source, target = corpus.where_domain("source"), corpus.where_domain("target")
    started = time.perf_counter()
    features = embed(resolve_backbone(args.backbone), [*source.texts, *target.texts], args.max_length)
    print(f"embedded {len(source) + len(target)} rows in {time.perf_counter() - started:.0f} s")
    y_source, y_target = source.label_matrix(labels), target.label_matrix(labels)
    for name, x in features.items():
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        x_source, x_target = x[: len(source)], x[len(source) :]
        scores = np.stack(
            [
                LogisticRegression(max_iter=3000, C=args.C).fit(x_source, y_source[:, j]).predict_proba(x_target)[:, 1]
                for j in range(len(labels))
            ],
            axis=1,
        )
        report = ap_report(y_target, scores, labels)
        per_label = ", ".join(f"{label} {ap:.3f}" for label, ap in report.per_label_ap().items())
        print(f"{name:12s} macro AP {report.map_macro:.3f}  ({per_label})")


if __name__ == "__main__":
    main()
