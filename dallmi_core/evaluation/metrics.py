"""Evaluation metrics (DESIGN.md section 5): numpy and scikit-learn, no torch, no UI.

AP and the PR curve are scikit-learn's, on scores; labels without a gold positive are reported
as unevaluable (None) instead of being counted as 0 or NaN, which would silently drag or poison
the macro mean, and sklearn is never asked about them (it would warn). The thresholded AP of the
paper's code exists only as a comparison column.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

from dallmi_core.errors import ConfigError, DataError


@dataclass(frozen=True)
class LabelAP:
    """AP of one label, with the counts a reader needs to judge it."""

    label: str
    ap: float | None
    positives: int
    support: int

    @property
    def evaluable(self) -> bool:
        """AP is undefined without a gold positive."""
        return self.positives > 0


@dataclass(frozen=True)
class APReport:
    """Per-label AP plus macro and micro means over the evaluable labels only."""

    per_label: tuple[LabelAP, ...]
    map_macro: float | None
    map_micro: float | None
    unevaluable: tuple[str, ...]

    def per_label_ap(self) -> dict[str, float | None]:
        return {item.label: item.ap for item in self.per_label}

    def to_dict(self) -> dict:
        """JSON-ready: plain floats, None for undefined values."""
        return {
            "per_label_ap": self.per_label_ap(),
            "map_macro": self.map_macro,
            "map_micro": self.map_micro,
            "unevaluable": list(self.unevaluable),
            "positives": {item.label: item.positives for item in self.per_label},
        }

    def to_markdown(self) -> str:
        """A table for pages and reports; unevaluable labels are named, not zeroed."""

        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        lines = ["| label | positives | AP |", "| --- | ---: | ---: |"]
        for item in self.per_label:
            ap = "n/a (no positives)" if item.ap is None else f"{item.ap:.4f}"
            label = item.label.replace("|", "\\|")
            lines.append(f"| {label} | {item.positives} | {ap} |")
        lines.append(f"| **macro mAP** |  | {fmt(self.map_macro)} |")
        lines.append(f"| **micro mAP** |  | {fmt(self.map_micro)} |")
        return "\n".join(lines)


def _as_scores(scores, name: str = "scores") -> np.ndarray:
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be numeric: {exc}") from exc
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name} contain NaN or infinite values; check the model outputs.")
    return arr


def _as_labels(y_true) -> np.ndarray:
    try:
        arr = np.asarray(y_true, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"y_true must be 0/1: {exc}") from exc
    if not np.all((arr == 0) | (arr == 1)):
        bad = np.unique(arr[~((arr == 0) | (arr == 1))])[:5]
        raise DataError(f"y_true must contain only 0 and 1; found {bad.tolist()}.")
    return arr.astype(np.int64)


def _binary_pair(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y, s = _as_labels(y_true), _as_scores(scores)
    if y.ndim != 1 or s.shape != y.shape:
        raise DataError(f"y_true and scores must be 1-D of equal length; got shapes {y.shape} and {s.shape}.")
    return y, s


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer (tp, fp) counts at each distinct score, descending: best_f1_threshold needs exact
    counts (F1 from sklearn's float precision and recall could break ties differently)."""
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    last = np.r_[np.where(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y, dtype=np.float64)[last]
    fps = 1.0 + last - tps
    return tps, fps, s[last]


def average_precision(y_true, scores) -> float | None:
    """sklearn's average_precision_score; None without a positive (sklearn would warn)."""
    y, s = _binary_pair(y_true, scores)
    if not y.any():
        return None
    return float(average_precision_score(y, s))


def ap_report(y_true, scores, label_names: Sequence[str]) -> APReport:
    """Per-label, macro and micro AP on [n, L] gold and scores (probabilities or logits)."""
    y, s = _as_labels(y_true), _as_scores(scores)
    names = [str(name) for name in label_names]
    if y.ndim != 2 or s.shape != y.shape:
        raise DataError(
            f"y_true and scores must be 2-D [documents, labels] of equal shape; got {y.shape} and {s.shape}."
        )
    if len(names) != y.shape[1]:
        raise DataError(f"{len(names)} label names given for {y.shape[1]} label columns.")
    if len(set(names)) != len(names):
        raise DataError("label names must be unique.")
    per_label = []
    for j, name in enumerate(names):
        positives = int(y[:, j].sum())
        ap = average_precision(y[:, j], s[:, j]) if positives else None
        per_label.append(LabelAP(name, ap, positives, int(y.shape[0])))
    evaluable = [j for j, item in enumerate(per_label) if item.evaluable]
    if evaluable:
        map_macro = float(np.mean([per_label[j].ap for j in evaluable]))
        map_micro = average_precision(y[:, evaluable].ravel(), s[:, evaluable].ravel())
    else:
        map_macro = map_micro = None
    unevaluable = tuple(item.label for item in per_label if not item.evaluable)
    return APReport(tuple(per_label), map_macro, map_micro, unevaluable)


def thresholded_ap(y_true, scores, label_names: Sequence[str], threshold: float = 0.5) -> APReport:
    """For comparison with published numbers ONLY: the paper's code computes "mAP" on 0/1
    predictions (scores >= threshold), which discards the ranking. Use 0.0 for logits."""
    s = _as_scores(scores)
    return ap_report(y_true, (s >= _threshold(threshold)).astype(np.float64), label_names)


def pr_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, thresholds of sklearn.metrics.precision_recall_curve; without a
    positive, recall is all ones as there, but without sklearn's warning."""
    y, s = _binary_pair(y_true, scores)
    if y.size == 0:
        raise DataError("pr_curve needs at least one document.")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No positive class found")
        return precision_recall_curve(y, s)


def _threshold(threshold: float) -> float:
    value = float(threshold)
    if not np.isfinite(value):
        raise ConfigError(f"threshold must be a finite number, got {threshold!r}.")
    return value


def f1_at_threshold(y_true, scores, threshold: float) -> dict:
    """Precision/recall/F1 of one label predicting positive when score >= threshold;
    a zero denominator gives 0.0 rather than a warning or NaN."""
    y, s = _binary_pair(y_true, scores)
    pred = s >= _threshold(threshold)
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def best_f1_threshold(y_true, scores) -> float:
    """The score threshold (one of the scores) maximising F1 for one label; ties go to the
    highest threshold. A fixed 0.5 is wrong for rare labels, hence one threshold per label.
    Without a positive, a threshold just above the top score: predict nothing."""
    y, s = _binary_pair(y_true, scores)
    if y.size == 0:
        raise DataError("best_f1_threshold needs at least one document.")
    positives = int(y.sum())
    if positives == 0:
        return float(np.nextafter(s.max(), np.inf))
    tps, fps, thresholds = _curve(y, s)
    f1 = 2 * tps / (tps + fps + positives)
    return float(thresholds[int(np.argmax(f1))])


def _pu_split(heldout_positive_scores, unlabeled_scores) -> tuple[np.ndarray, np.ndarray]:
    pos = _as_scores(heldout_positive_scores, "held-out positive scores")
    unl = _as_scores(unlabeled_scores, "unlabeled scores")
    if pos.ndim != 1 or unl.ndim != 1:
        raise DataError(f"held-out positive and unlabeled scores must be 1-D; got {pos.shape} and {unl.shape}.")
    return pos, unl


def pu_estimated_ap(heldout_positive_scores, unlabeled_scores) -> float | None:
    """An ESTIMATE of AP without gold: held-out tagged positives as 1, unlabeled as 0.
    The unlabeled set hides unknown positives, so this understates the true AP; it is for
    comparing runs on the same split. None without a held-out positive."""
    pos, unl = _pu_split(heldout_positive_scores, unlabeled_scores)
    if pos.size == 0:
        return None
    y = np.r_[np.ones(pos.size), np.zeros(unl.size)]
    return average_precision(y, np.r_[pos, unl])


def recall_at_k(heldout_positive_scores, unlabeled_scores, k: int) -> float | None:
    """Share of held-out positives ranked in the top k of positives + unlabeled (an estimate,
    as pu_estimated_ap). Ties are broken against the positives. None without a positive."""
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}.")
    pos, unl = _pu_split(heldout_positive_scores, unlabeled_scores)
    if pos.size == 0:
        return None
    is_pos = np.r_[np.zeros(unl.size, dtype=bool), np.ones(pos.size, dtype=bool)]
    order = np.argsort(-np.r_[unl, pos], kind="stable")
    return float(is_pos[order[: int(k)]].sum() / pos.size)


def f1_macro(y_true, scores, thresholds: Sequence[float]) -> float | None:
    """Macro F1 of 0/1 predictions (score >= the label's threshold) over labels with a gold positive."""
    y, s = _as_labels(y_true), _as_scores(scores)
    values = [f1_at_threshold(y[:, j], s[:, j], thresholds[j])["f1"] for j in range(y.shape[1]) if y[:, j].any()]
    return float(np.mean(values)) if values else None


def f1_macro_best(y_true, scores) -> float | None:
    """Macro F1 with each label at its best threshold on this gold: the ceiling of any threshold rule."""
    y, s = _as_labels(y_true), _as_scores(scores)
    best = [best_f1_threshold(y[:, j], s[:, j]) for j in range(y.shape[1])]
    return f1_macro(y, s, best)
