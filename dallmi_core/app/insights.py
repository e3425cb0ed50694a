"""What the insight pages show, computed from the store and cached per run (store.run_analysis).

Per-label AP reads stored metrics and predictions only (no model). The MixUp views need the source
and the adapted model: they are loaded here, in the calling process, on the first view (the page
shows a spinner), and their results are cached per run and parameters, so every later view reads the
store only. torch is imported lazily, so opening the app stays cheap. The domain-shift analysis, a
longer job, runs in the worker instead (shift_view.py, run kind "shift").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dallmi_core.app import run_models
from dallmi_core.errors import DataError, RunStateError
from dallmi_core.evaluation import metrics as m
from dallmi_core.store import Run, Store

MIXUP_FRESH = 64  # fresh pairs drawn per request: the scatter's points; the first few are shown as pairs


# ---- runs -----------------------------------------------------------------------------------------


def insight_runs(store: Store, project_id: int) -> list[Run]:
    """Finished adaptation runs that left a model and predictions: what the insight pages look at."""
    return [
        run
        for run in store.list_runs(project_id, status="done")
        if run.kind == "adapt" and run.prediction_labels and run.model_path and Path(run.model_path).is_dir()
    ]


# ---- per-label AP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class APOverview:
    """AP per label for the run (before, after) and its baselines, in long form (label, series, ap)."""

    table: pd.DataFrame  # label, series, ap
    tags: dict[str, int]  # tagged positives per label the run trained on
    positives: dict[str, int]  # gold positives (true AP) or held-out tagged positives (PU estimate) per label
    summary: pd.DataFrame  # series, macro, micro
    estimate: bool
    before: str  # the series of the model the run started from: "before (source model)" or, without one,
    # "before (backbone, untrained head)"


def _series_name(run: Run) -> str:
    method = run_models.run_config(run).method
    return f"run {run.id} · {method}"


def ap_overview(store: Store, run_id: int) -> APOverview:
    run = run_models.adapt_run(store, run_id)
    labels = list(run.prediction_labels or store.get_project(run.project_id).labels)
    metrics = run.metrics or {}
    estimate = bool(metrics.get("estimate"))
    before = f"before ({run_models.starting_model(store, run)})"
    tables: list[tuple[str, Mapping]] = [
        (name, metrics[key]) for key, name in (("before", before), ("after", "after")) if key in metrics
    ]
    for other in store.list_runs(run.project_id, status="done"):
        if other.id == run.id or other.kind != "adapt" or bool(other.metrics.get("estimate")) != estimate:
            continue
        if isinstance(other.metrics.get("after"), Mapping):
            tables.append((_series_name(other), other.metrics["after"]))
    rows, summary = [], []
    for name, table in tables:
        per_label = table.get("per_label_ap") or {}
        rows += [{"label": label, "series": name, "ap": per_label.get(label)} for label in labels]
        summary.append({"series": name, "macro": table.get("map_macro"), "micro": table.get("map_micro")})
    if estimate:
        split = store.load_analysis(run.id, "pu_split", {})
        held = split[0]["val_tags"] if split else {}
        positives = {label: len(held.get(label, [])) for label in labels}
    else:
        positives = {label: int((metrics.get("after") or {}).get("positives", {}).get(label, 0)) for label in labels}
    tags = {label: int((metrics.get("tags") or {}).get(label, 0)) for label in labels}
    return APOverview(
        pd.DataFrame(rows, columns=["label", "series", "ap"]),
        tags,
        positives,
        pd.DataFrame(summary, columns=["series", "macro", "micro"]),
        estimate,
        before,
    )


@dataclass(frozen=True)
class LabelCurve:
    """One label's gold (or PU) labels and the run's scores on the documents that measure it."""

    label: str
    y: np.ndarray  # 0/1
    scores: np.ndarray
    estimate: bool  # True: held-out tagged positives vs held-out unlabeled documents (PU estimate)

    @property
    def positives(self) -> int:
        return int(self.y.sum())

    @property
    def ap(self) -> float | None:
        return m.average_precision(self.y, self.scores)

    def pr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return m.pr_curve(self.y, self.scores)

    def at(self, threshold: float) -> dict:
        return m.f1_at_threshold(self.y, self.scores, threshold)

    def best_threshold(self) -> float:
        return min(1.0, m.best_f1_threshold(self.y, self.scores))


def label_curve(store: Store, run_id: int, label: str) -> LabelCurve:
    """Gold eval documents when the run was measured on gold; else the run's PU validation split."""
    run = run_models.adapt_run(store, run_id)
    labels = list(run.prediction_labels or ())
    if label not in labels:
        raise DataError(f"run {run_id} has no label {label!r}; its labels are {', '.join(labels)}.")
    ids, scores = store.load_predictions(run.id)
    column = scores[:, labels.index(label)]
    row = {int(d): i for i, d in enumerate(ids)}
    if not run.metrics.get("estimate"):
        docs = [d for d in store.gold_documents(run.project_id) if d.id in row]
        if not docs:
            raise RunStateError(f"run {run_id} has no scored gold documents to draw a curve from.")
        y = np.array([label in d.gold_labels for d in docs], dtype=np.int64)
        return LabelCurve(label, y, column[[row[d.id] for d in docs]], estimate=False)
    split = store.load_analysis(run.id, "pu_split", {})
    if split is None:
        raise RunStateError(f"run {run_id} predates the stored PU split, so its curves cannot be drawn; adapt again.")
    held = [d for d in split[0]["val_tags"].get(label, []) if d in row]
    unlabeled = [d for d in split[0]["val_unlabeled"] if d in row and d not in set(held)]
    y = np.r_[np.ones(len(held), dtype=np.int64), np.zeros(len(unlabeled), dtype=np.int64)]
    return LabelCurve(label, y, column[[row[d] for d in held + unlabeled]], estimate=True)


# ---- MixUp ---------------------------------------------------------------------------------------------


def logged_mixup(store: Store, run_id: int, label: str, limit: int = 500) -> pd.DataFrame:
    """Pairs logged while the run trained: step, positive_doc, unlabeled_doc, mu, prediction, target."""
    rows = store.mixup_samples(run_id, label=label, limit=limit)
    columns = ["step", "positive_doc", "unlabeled_doc", "mu", "prediction", "target"]
    return pd.DataFrame(rows, columns=["label", *columns])[columns]


def fresh_mixup(store: Store, run_id: int, label: str, *, n: int = MIXUP_FRESH, seed: int = 0) -> pd.DataFrame:
    """n fresh pairs (tagged positive, target document) scored by the source and the adapted model.

    Columns: positive_doc, unlabeled_doc, mu, and per model (before/after) phi_u, target, prediction."""
    run = run_models.adapt_run(store, run_id)
    params = {"label": label, "n": int(n), "seed": int(seed)}
    cached = store.load_analysis(run.id, "mixup", params)
    if cached is not None:
        return pd.DataFrame(cached[1])
    from dallmi_core.app.mixup_view import draw_pairs
    from dallmi_core.method.mixup import mixup_target, score_pairs
    from dallmi_core.modeling.tokens import TokenizedCorpus

    labels = list(run.prediction_labels or ())
    if label not in labels:
        raise DataError(f"run {run_id} has no label {label!r}; its labels are {', '.join(labels)}.")
    cfg = run_models.run_config(run)
    target = store.document_ids(run.project_id, "target")
    tagged = store.tags_by_label(run.project_id, domain="target").get(label, [])
    pairs = draw_pairs(tagged, target, int(n), alpha=cfg.mixup_alpha, seed=int(seed))
    docs = np.unique(np.r_[pairs.positive, pairs.unlabeled])
    texts = {d.id: d.text for d in store.get_documents(run.project_id, ids=[int(d) for d in docs])}
    row = {int(d): i for i, d in enumerate(docs)}
    columns: dict[str, np.ndarray] = {
        "positive_doc": pairs.positive,
        "unlabeled_doc": pairs.unlabeled,
        "mu": pairs.mu.astype(np.float64),
    }
    for name, clf in zip(("before", "after"), run_models.models(store, run), strict=True):
        tokens = TokenizedCorpus.build(clf.tokenizer, [texts[int(d)] for d in docs], cfg.max_length)
        phi_u, prediction = score_pairs(
            clf.model,
            tokens,
            [row[int(d)] for d in pairs.unlabeled],
            [row[int(d)] for d in pairs.positive],
            pairs.mu,
            labels.index(label),
            mixup_at=cfg.mixup_at,
        )
        columns |= {
            f"phi_u_{name}": phi_u,
            f"target_{name}": mixup_target(phi_u, pairs.mu),
            f"prediction_{name}": prediction,
        }
    store.save_analysis(run.id, "mixup", params, {"rows": int(n)}, columns)
    return pd.DataFrame(columns)


def decoded_pair(store: Store, run_id: int, positive_doc: int, unlabeled_doc: int, mu: float) -> pd.DataFrame:
    """The mixed input token by token under the adapted model's word embeddings (cached per pair):
    position, unlabeled, positive, mixed (nearest token), similarity (cosine)."""
    run = run_models.adapt_run(store, run_id)
    params = {"positive": int(positive_doc), "unlabeled": int(unlabeled_doc), "mu": round(float(mu), 6)}
    cached = store.load_analysis(run.id, "mixup_decode", params)
    if cached is not None:
        return pd.DataFrame(cached[0]["rows"])
    from dallmi_core.app.mixup_view import decode_pair

    docs = {d.id: d.text for d in store.get_documents(run.project_id, ids=[int(positive_doc), int(unlabeled_doc)])}
    if len(docs) < len({int(positive_doc), int(unlabeled_doc)}):
        raise DataError("a document of this pair no longer exists (it was deleted); draw fresh pairs.")
    clf = run_models.models(store, run)[1]
    max_length = run_models.run_config(run).max_length
    rows = decode_pair(
        clf.model, clf.tokenizer, docs[int(unlabeled_doc)], docs[int(positive_doc)], mu, max_length=max_length
    )
    store.save_analysis(run.id, "mixup_decode", params, {"rows": rows})
    return pd.DataFrame(rows)


def save_thresholds(store: Store, run_id: int, thresholds: Mapping[str, float]) -> dict[str, float]:
    """Per-label thresholds the exports use (predictions' 0/1 columns, the model's config)."""
    return store.set_thresholds(run_id, thresholds)


def document_texts(store: Store, project_id: int, ids: Sequence[int]) -> dict[int, tuple[str, str]]:
    """{document id: (external id, text)} for the documents a view shows."""
    return {d.id: (d.ext_id, d.text) for d in store.get_documents(project_id, ids=[int(i) for i in ids])}
