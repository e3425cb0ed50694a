"""Browsing the documents for annotation: search combined with metadata and tag filters, the
metadata values to filter by, and where a search matched (FTS5's highlight(), so the marks follow the
index's own tokenizer: `cafe` marks "Café")."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence

from dallmi_core.errors import DataError
from dallmi_core.store.db import StoreBase, _marks
from dallmi_core.store.documents import fts_query

# a document's state for one label: tagged, reviewed as not carrying it, or neither
TAG_STATES = ("tagged", "untagged", "reviewed-not", "unreviewed")
_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters: highlight()'s markers
_LIVE = "EXISTS (SELECT 1 FROM {} x WHERE x.document_id = d.id AND x.label = ? AND x.deleted_at IS NULL)"
_STATE_SQL = {
    "tagged": _LIVE.format("annotations"),
    "untagged": "NOT " + _LIVE.format("annotations"),
    "reviewed-not": _LIVE.format("label_reviews"),
    "unreviewed": f"NOT {_LIVE.format('annotations')} AND NOT {_LIVE.format('label_reviews')}",
}


def _spans(marked: str, text: str) -> tuple[tuple[int, int], ...]:
    """(start, end) offsets in `text` of the matches highlight() wrapped in _OPEN ... _CLOSE; none when
    the text holds a marker character itself (it could not be told from a mark)."""
    if _OPEN in text or _CLOSE in text:
        return ()
    spans, position, start = [], 0, None
    for piece in re.split(f"([{_OPEN}{_CLOSE}])", marked):
        if piece == _OPEN:
            start = position
        elif piece == _CLOSE:
            if start is not None and position > start:
                spans.append((start, position))
            start = None
        else:
            position += len(piece)
    return tuple(spans) if position == len(text) else ()


class BrowseMixin(StoreBase):
    """Filtered document ids, metadata values and search highlights; composed into Store."""

    def matching_ids(
        self,
        project_id: int,
        *,
        query: str = "",
        domain: str | None = "target",
        meta: Mapping[str, Sequence] | None = None,
        label: str | None = None,
        state: str | None = None,
    ) -> list[int]:
        """Ids of the documents that match the search `query` (fts_query's syntax; best match first),
        carry one of the given values in every `meta` column, and are in `state` (TAG_STATES) for
        `label`; in id order without a query. Ids only, so any corpus size is cheap to filter."""
        if state is not None and state not in TAG_STATES:
            raise DataError(f"unknown tag state {state!r}; use one of {', '.join(TAG_STATES)}.")
        if state is not None and label is None:
            raise DataError("a tag state filter needs the label it is about.")
        where, params = ["d.project_id = ?"], [project_id]
        if domain:
            where, params = [*where, "d.domain = ?"], [*params, domain]
        for column, values in (meta or {}).items():
            values = list(values)
            where.append(
                "EXISTS (SELECT 1 FROM json_each(d.meta) j WHERE j.key = ? "
                f"AND j.value IN ({_marks(values) or 'NULL'}))"
            )
            params += [column, *values]
        if state is not None:
            where.append(_STATE_SQL[state])
            params += [label] * _STATE_SQL[state].count("?")
        match = fts_query(query) if query.strip() else None
        if query.strip() and match is None:
            return []  # only punctuation: nothing to search for
        if match is None:
            sql = f"SELECT d.id FROM documents d WHERE {' AND '.join(where)} ORDER BY d.id"
        else:
            sql = (
                "SELECT d.id FROM documents_fts JOIN documents d ON d.id = documents_fts.rowid "
                f"WHERE documents_fts MATCH ? AND {' AND '.join(where)} ORDER BY documents_fts.rank, d.id"
            )
            params = [match, *params]
        return [row[0] for row in self._rows(sql, params)]

    def highlights(self, query: str, document_ids: Sequence[int]) -> dict[int, tuple[tuple[int, int], ...]]:
        """document id -> the (start, end) character offsets in its text that `query` matched."""
        match = fts_query(query)
        if match is None or not document_ids:
            return {}
        rows = self._in(
            "SELECT documents_fts.rowid, highlight(documents_fts, 0, ?, ?), d.text FROM documents_fts "
            "JOIN documents d ON d.id = documents_fts.rowid "
            "WHERE documents_fts MATCH ? AND documents_fts.rowid IN ({})",
            [_OPEN, _CLOSE, match],
            document_ids,
        )
        return {row[0]: spans for row in rows if (spans := _spans(row[1], row[2]))}

    def prediction_row(self, run_id: int, document_id: int) -> tuple[float, ...] | None:
        """One document's stored scores of a run, in the run's label order; None when it has none."""
        row = self._one(
            "SELECT p.scores, r.labels FROM predictions p JOIN runs r ON r.id = p.run_id "
            "WHERE p.run_id = ? AND p.document_id = ?",
            (run_id, document_id),
        )
        if row is None:
            return None
        width = len(json.loads(row[1] or "[]"))
        values = struct.unpack(f"<{width}f", row[0]) if width * 4 == len(row[0]) else ()
        return tuple(float(v) for v in values) or None

    def meta_values(
        self, project_id: int, column: str, *, domain: str | None = "target", limit: int = 500
    ) -> list[tuple[object, int]]:
        """The column's distinct scalar values with their document counts, most frequent first."""
        where, params = ("AND d.domain = ?", [domain]) if domain else ("", [])
        return [
            (row[0], row[1])
            for row in self._rows(
                "SELECT j.value, count(*) FROM documents d, json_each(d.meta) j WHERE d.project_id = ? "
                f"{where} AND j.key = ? AND j.type NOT IN ('object', 'array', 'null') "
                "GROUP BY j.value ORDER BY count(*) DESC, j.value LIMIT ?",
                [project_id, *params, column, limit],
            )
        ]
