"""Metadata merged into documents already stored: an eval row whose text is already a target document
gives that document its gold labels (documents.attach_gold) and its extra columns, merged here.

A mixin of its own beside documents.py (the documents table's other writes), so the merge rule reads
in one place: a key the document lacks, or holds empty, takes the row's value; a key it holds keeps
its value, and a different value in the row is counted, never written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from dallmi_core.store.db import StoreBase, _dumps


def empty_value(value) -> bool:
    """No value: None, a blank string, or NaN (what a file's empty cell reads as)."""
    return (
        value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and value != value)
    )


@dataclass(frozen=True)
class MetaMerge:
    """What merge_meta did: metadata values written, and values that differed and were left alone."""

    added: int = 0
    kept: int = 0


class MergeMixin(StoreBase):
    def merge_meta(self, project_id: int, meta_by_hash: Mapping[str, Mapping]) -> MetaMerge:
        """Merge metadata into every target document with that content hash (its existing keys kept
        unless empty); returns the values added and the differing values kept as they were."""
        added = kept = 0
        with self.transaction():
            for digest, meta in meta_by_hash.items():
                incoming = {k: v for k, v in meta.items() if not empty_value(v)}
                if not incoming:
                    continue
                rows = self._rows(
                    "SELECT id, meta FROM documents WHERE project_id = ? AND domain = 'target' AND content_hash = ?",
                    (project_id, digest),
                )
                for row in rows:
                    current = json.loads(row["meta"] or "{}")
                    fresh = {k: v for k, v in incoming.items() if empty_value(current.get(k))}
                    kept += sum(1 for k, v in incoming.items() if k not in fresh and str(current[k]) != str(v))
                    if fresh:
                        self.conn.execute(
                            "UPDATE documents SET meta = ? WHERE id = ?", (_dumps(current | fresh), row["id"])
                        )
                        added += len(fresh)
        return MetaMerge(added, kept)
