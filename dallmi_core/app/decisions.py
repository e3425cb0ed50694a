"""Which threshold each label's exported 0/1 column uses, and what it rests on.

One rule for every consumer (exports, the run report, the candidates ranking, the pages): a
threshold the user saved for the run wins; else the default the run's calibration chose without
gold (calibration.py, stored with the run and in its model folder); else 0.5, said as such.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dallmi_core.modeling.calibration import DEFAULT_THRESHOLD, Calibration
from dallmi_core.store import Store

CALIBRATION_ANALYSIS = "calibration"  # the run_analysis kind holding a run's calibration


@dataclass(frozen=True)
class Decision:
    """One label's threshold, where it came from ('saved', 'estimate', 'default'), and the prior."""

    label: str
    threshold: float
    source: str
    basis: str
    prior: float | None = None
    prior_low: float | None = None
    prior_high: float | None = None
    suggested: float | None = None  # the calibration's own threshold, also when the user saved another


def save_calibration(store: Store, run_id: int, calibration: Calibration) -> None:
    store.save_analysis(run_id, CALIBRATION_ANALYSIS, {}, calibration.to_config())


def run_calibration(store: Store, run_id: int) -> Calibration | None:
    saved = store.load_analysis(run_id, CALIBRATION_ANALYSIS, {})
    return None if saved is None else Calibration.from_config(saved[0])


def decisions(store: Store, run_id: int, labels: list[str] | tuple[str, ...] | None = None) -> dict[str, Decision]:
    """Every label's decision for the run's exported 0/1 columns."""
    run = store.get_run(run_id)
    labels = list(labels or run.prediction_labels or store.get_project(run.project_id).labels)
    calibration = run_calibration(store, run_id)
    saved = store.thresholds(run_id)
    out = {}
    for label in labels:
        item = calibration.labels.get(label) if calibration is not None else None
        prior = (
            {} if item is None else {"prior": item.prior, "prior_low": item.prior_low, "prior_high": item.prior_high}
        )
        suggested = None if item is None else item.threshold
        if label in saved:
            out[label] = Decision(label, saved[label], "saved", "saved by the user", suggested=suggested, **prior)
        elif item is not None:
            source = "estimate" if item.basis.startswith("estimate") else "default"
            out[label] = Decision(label, item.threshold, source, item.basis, suggested=suggested, **prior)
        else:
            basis = f"no calibration for this run: the fixed {DEFAULT_THRESHOLD}"
            out[label] = Decision(label, DEFAULT_THRESHOLD, "default", basis)
    return out


def thresholds(store: Store, run_id: int, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """label -> threshold by `decisions`, with `overrides` (e.g. an export's own) on top."""
    return {label: d.threshold for label, d in decisions(store, run_id).items()} | dict(overrides or {})


def decision_table(store: Store, run_id: int) -> pd.DataFrame:
    """Per label: the estimated prior, the share of target documents predicted positive at the
    threshold in use, that threshold and where it comes from, the calibration's suggestion and, with
    gold eval documents, the gold-tuned threshold (best F1) and the gold share. Where users marked
    documents "reviewed: not <label>", how many of those the run scored and how many of them it puts
    at or above the threshold (false positives it would export): the marks only measure here, nothing
    is fitted on them (the prior, the map and the thresholds rest on the tags and the unlabeled text)."""
    from dallmi_core.evaluation.metrics import best_f1_threshold

    run = store.get_run(run_id)
    labels = list(run.prediction_labels or ())
    chosen = decisions(store, run_id, labels)
    ids, scores = store.load_predictions(run_id)
    row = {int(d): i for i, d in enumerate(ids)}
    target = [row[d] for d in store.document_ids(run.project_id, "target") if d in row]
    gold_docs = [d for d in store.gold_documents(run.project_id) if d.id in row]
    tags = store.tags_by_label(run.project_id)
    marks = store.reviews_by_label(run.project_id, domain="target")
    marked = any(marks.values())
    records = []
    for j, label in enumerate(labels):
        d = chosen[label]
        column = scores[:, j]
        record = {
            "label": label,
            "tags": len(tags.get(label, [])),
            "estimated prior": d.prior,
            "prior interval": None if d.prior_low is None else f"{d.prior_low:.3f}-{d.prior_high:.3f}",
            "predicted share": float(np.mean(column[target] >= d.threshold)) if target else None,
            "threshold": d.threshold,
            "from": d.source,
            "suggested": d.suggested,
            "rests on": d.basis,
        }
        if marked:
            negatives = [row[d] for d in marks.get(label, []) if d in row]
            record["reviewed: not"] = len(negatives)
            record["of them ≥ threshold"] = int(np.sum(column[negatives] >= d.threshold)) if negatives else 0
        if gold_docs:
            y = np.array([label in doc.gold_labels for doc in gold_docs], dtype=np.int64)
            s = column[[row[doc.id] for doc in gold_docs]]
            record["gold share"] = float(y.mean())
            record["gold-tuned"] = min(1.0, best_f1_threshold(y, s)) if y.any() else None
        records.append(record)
    return pd.DataFrame(records)
