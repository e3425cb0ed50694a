"""Which unreviewed target documents to show next for a label: by a run's scores (likely, uncertain)
or by TF-IDF similarity to the label's tagged documents (no run needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dallmi_core.app import decisions
from dallmi_core.errors import ConfigError, DataError, RunStateError
from dallmi_core.store import Document, Run, Store

STRATEGIES = ("likely", "uncertain", "similar")
# Tags since the last scoring that make it stale: a score run re-fits the calibration on the tags (the
# "uncertain" ranking moves with it) but costs a pass over the corpus (minutes on a CPU for a full-size
# model), so a refresh per click would keep the worker busy for nothing.
REFRESH_AFTER_TAGS = 10


@dataclass(frozen=True)
class Candidate:
    """A document to look at next for one label, with the score that ranked it."""

    document: Document
    score: float
    run_id: int | None  # the predictions it came from; None for TF-IDF similarity


def latest_predictions_run(store: Store, project_id: int) -> Run | None:
    """The newest finished adapt or score run that stored predictions."""
    return next(
        (
            run
            for run in store.list_runs(project_id, status="done")
            if run.kind in ("adapt", "score") and run.prediction_labels
        ),
        None,
    )


@dataclass(frozen=True)
class Staleness:
    """Why the latest predictions no longer rank what the user sees, and the model to refresh them with."""

    model: str
    reason: str


def newest_model(store: Store, project_id: int) -> str | None:
    """The folder of the newest model the project has: the last finished adaptation or source
    fine-tuning whose folder still exists, else the project's source model."""
    for run in store.list_runs(project_id, status="done"):
        if run.kind in ("adapt", "finetune-source") and run.model_path and Path(run.model_path).is_dir():
            return run.model_path
    return store.get_project(project_id).source_model


def stale_predictions(store: Store, project_id: int) -> Staleness | None:
    """None while the latest predictions are current (or there is no model to score with)."""
    model = newest_model(store, project_id)
    if model is None:
        return None
    latest = latest_predictions_run(store, project_id)
    if latest is None:
        return Staleness(model, "no run has scored the documents yet")
    if Path(latest.model_path or "") != Path(model):
        return Staleness(model, f"a newer model exists than run {latest.id}'s")
    missing = [label for label in store.get_project(project_id).labels if label not in latest.prediction_labels]
    if missing:
        return Staleness(model, f"run {latest.id} predates label(s) {', '.join(missing)}")
    unscored = store.count_unscored(project_id, latest.id)
    if unscored:
        return Staleness(model, f"{unscored:,} documents were imported after run {latest.id} scored")
    tags = store.count_tags_since(project_id, latest.finished_at or latest.created_at)
    if tags >= REFRESH_AFTER_TAGS:
        return Staleness(model, f"{tags} tags were made after run {latest.id} scored")
    return None


def candidates(
    store: Store,
    project_id: int,
    label: str,
    strategy: str = "likely",
    limit: int = 20,
    *,
    threshold: float | None = None,
) -> list[Candidate]:
    """Unreviewed target documents to look at next for `label`: neither tagged nor marked "reviewed:
    not" for it (documents tagged with other labels stay candidates: labels are not exclusive).
    likely: highest score first; uncertain: score closest to `threshold` (default: the label's
    decision threshold for the run); similar: TF-IDF cosine to the centroid of the label's tagged
    documents."""
    project = store.get_project(project_id)
    if label not in project.labels:
        raise DataError(f"unknown label {label!r}; the project's labels are {', '.join(project.labels)}.")
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy={strategy!r} is not one of {', '.join(STRATEGIES)}.")
    tagged = set(store.tags_by_label(project_id)[label])
    run_id = None
    if strategy == "similar":
        ids, score = _similarity(store, project_id, label, tagged)
        key = -score
    else:
        run = latest_predictions_run(store, project_id)
        if run is None:
            raise RunStateError(
                "no predictions yet: a score run (queued by itself once a model exists) or an adaptation makes them."
            )
        if label not in run.prediction_labels:
            raise RunStateError(f"run {run.id} predates label {label!r}; start a new 'score' run.")
        ids, scores = store.load_predictions(run.id)
        target = np.isin(ids, np.asarray(store.document_ids(project_id, "target"), dtype=np.int64))
        ids, score, run_id = ids[target], scores[target, run.prediction_labels.index(label)], run.id
        if threshold is None:
            threshold = decisions.thresholds(store, run.id)[label]
        key = -score if strategy == "likely" else np.abs(score - threshold)
    reviewed = tagged | set(store.reviews_by_label(project_id)[label])
    keep = ~np.isin(ids, np.fromiter(reviewed, dtype=np.int64, count=len(reviewed)))
    ids, score, key = ids[keep], score[keep], key[keep]
    order = np.argsort(key, kind="stable")[:limit]
    docs = store.get_documents(project_id, ids=[int(i) for i in ids[order]])
    return [Candidate(doc, float(s), run_id) for doc, s in zip(docs, score[order], strict=True)]


def _similarity(store: Store, project_id: int, label: str, tagged: set[int]) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    ids, texts = [], []
    for page in store.iter_documents(project_id, domain="target"):
        ids += [doc.id for doc in page]
        texts += [doc.text for doc in page]
    rows = [i for i, doc in enumerate(ids) if doc in tagged]
    if not rows:
        raise DataError(f"no target document is tagged {label!r} yet: tag one to find similar documents.")
    try:
        matrix = TfidfVectorizer(sublinear_tf=True, max_features=50_000, dtype=np.float32).fit_transform(texts)
    except ValueError as exc:  # an empty vocabulary
        raise DataError(f"the target texts have no words to compare ({exc}).") from exc
    centroid = np.asarray(matrix[rows].mean(axis=0)).ravel()
    centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
    return np.asarray(ids, dtype=np.int64), np.asarray(matrix @ centroid).ravel()
