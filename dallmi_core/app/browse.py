"""The Annotate page's document lists: search, metadata, tag-state and score filters combined, each
row with where the search matched, its tags and reviewed-not marks, and the latest model's score.

Scores come from the newest finished score or adapt run that stored predictions
(candidates.latest_predictions_run); a score filter leaves out the documents that run did not score.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dallmi_core.app.candidates import latest_predictions_run
from dallmi_core.errors import DataError, RunStateError
from dallmi_core.store import TAG_STATES, Document, Store

FULL_RANGE = (0.0, 1.0)


@dataclass(frozen=True)
class Filters:
    """What the list shows: `query` (fts_query's syntax), documents carrying one of the chosen values
    in each metadata column, the `state` for the page's label (TAG_STATES; None: any) and the latest
    model's score for that label within `score_range` (None or (0, 1): no score filter)."""

    query: str = ""
    meta: Mapping[str, tuple] = field(default_factory=dict)
    state: str | None = None
    score_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in TAG_STATES:
            raise DataError(f"unknown tag state {self.state!r}; use one of {', '.join(TAG_STATES)}.")
        if self.score_range is not None:
            low, high = self.score_range
            if not 0.0 <= low <= high <= 1.0:
                raise DataError(f"a score range is 0 <= low <= high <= 1, got {low!r} to {high!r}.")

    @property
    def scored(self) -> bool:
        return self.score_range is not None and tuple(self.score_range) != FULL_RANGE

    @property
    def active(self) -> bool:
        """Whether anything narrows the list (else it is every target document)."""
        return bool(self.query.strip() or any(self.meta.values()) or self.state or self.scored)


@dataclass(frozen=True)
class Row:
    document: Document
    spans: tuple[tuple[int, int], ...]  # where the search matched, as character offsets in the text
    score: float | None  # the latest model's score for the label; None where the run did not score it
    tags: tuple[str, ...]
    reviewed_not: tuple[str, ...]


@dataclass(frozen=True)
class Listing:
    rows: list[Row]
    total: int  # documents that pass every filter (rows holds the first `limit`)
    run_id: int | None  # the run the scores come from
    unscored: int = 0  # documents a score filter left out because the run has no score for them


def label_scores(store: Store, project_id: int, label: str) -> tuple[int | None, dict[int, float]]:
    """(the run, document id -> the latest model's score for `label`); (None, {}) without such a run."""
    run = latest_predictions_run(store, project_id)
    if run is None or label not in (run.prediction_labels or ()):
        return None, {}
    ids, scores = store.load_predictions(run.id)
    column = scores[:, run.prediction_labels.index(label)]
    return run.id, dict(zip(ids.tolist(), column.tolist(), strict=True))


def document_scores(store: Store, project_id: int, document_id: int) -> tuple[int | None, dict[str, float]]:
    """(the run, label -> the latest model's score for one document); labels the run predates are absent."""
    run = latest_predictions_run(store, project_id)
    if run is None:
        return None, {}
    row = store.prediction_row(run.id, document_id)
    if row is None:
        return run.id, {}
    return run.id, {label: float(s) for label, s in zip(run.prediction_labels, row, strict=True)}


def browse(store: Store, project_id: int, label: str, filters: Filters, *, limit: int = 200) -> Listing:
    """The target documents that pass `filters` for `label`: best search match first (id order
    without a search), the first `limit` as rows."""
    project = store.get_project(project_id)
    if label not in project.labels:
        raise DataError(f"unknown label {label!r}; the project's labels are {', '.join(project.labels)}.")
    ids = store.matching_ids(
        project_id,
        query=filters.query,
        meta={column: values for column, values in filters.meta.items() if values},
        label=label,
        state=filters.state,
    )
    run_id, scores = label_scores(store, project_id, label)
    unscored = 0
    if filters.scored:
        if run_id is None:
            raise RunStateError(f"no model has scored {label!r} yet: start a 'score' run to filter by score.")
        low, high = filters.score_range
        unscored = sum(doc not in scores for doc in ids)
        ids = [doc for doc in ids if doc in scores and low <= scores[doc] <= high]
    shown = ids[:limit]
    docs = store.get_documents(project_id, ids=shown)
    spans = store.highlights(filters.query, shown) if filters.query.strip() else {}
    tags, marks = store.tags_for(shown), store.reviews_for(shown)
    rows = [
        Row(d, spans.get(d.id, ()), scores.get(d.id), tuple(tags.get(d.id, ())), tuple(marks.get(d.id, ())))
        for d in docs
    ]
    return Listing(rows, len(ids), run_id, unscored)
