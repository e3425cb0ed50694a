"""Annotations: positive tags only; every change is an action that `undo_last` can revert.

A tag is never deleted: untagging sets `deleted_at` (the history stays), and a live (document,
label) pair is unique, so tagging twice is a no-op even from two processes at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dallmi_core.errors import DataError
from dallmi_core.store.db import StoreBase


@dataclass(frozen=True)
class Annotation:
    id: int
    project_id: int
    document_id: int
    label: str
    annotator: str
    created_at: float
    deleted_at: float | None


class AnnotationsMixin(StoreBase):
    """The annotation rows and their undo log; composed into Store (uses its get_project)."""

    def _check_pairs(self, project_id: int, pairs: Sequence[tuple[int, str]]) -> None:
        project = self.get_project(project_id)
        unknown = next((label for _, label in pairs if label not in project.labels), None)
        if unknown is not None:
            raise DataError(
                f"unknown label {unknown!r} for project {project.name!r}; its labels: {', '.join(project.labels)}."
            )
        ids = sorted({doc for doc, _ in pairs})
        found = {
            r[0] for r in self._in("SELECT id FROM documents WHERE project_id = ? AND id IN ({})", [project_id], ids)
        }
        missing = [doc for doc in ids if doc not in found]
        if missing:
            raise DataError(f"document {missing[0]} is not in project {project.name!r}.")

    def _new_action(self, project_id: int, annotator: str, kind: str) -> int:
        return self.conn.execute(
            "INSERT INTO annotation_actions (project_id, annotator, kind, created_at) VALUES (?, ?, ?, ?)",
            (project_id, annotator, kind, time.time()),
        ).lastrowid

    def add_tags(
        self,
        project_id: int,
        pairs: Iterable[tuple[int, str]],
        annotator: str = "user",
        *,
        action_id: int | None = None,
    ) -> tuple[int, int | None]:
        """Tag (document id, label) pairs as one undoable action (or extend `action_id`); already-live
        tags are left alone. Returns (tags created, the action id or None when nothing changed)."""
        pairs = list(pairs)
        if not pairs:
            return 0, action_id
        with self.transaction():
            self._check_pairs(project_id, pairs)
            own = action_id is None
            action_id = self._new_action(project_id, annotator, "tag") if own else action_id
            now = time.time()
            created = self.conn.executemany(
                "INSERT INTO annotations (project_id, document_id, label, annotator, created_at, action_id) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (document_id, label) WHERE deleted_at IS NULL DO NOTHING",
                [(project_id, doc, label, annotator, now, action_id) for doc, label in pairs],
            ).rowcount
            if own and created == 0:
                self.conn.execute("DELETE FROM annotation_actions WHERE id = ?", (action_id,))
                action_id = None
        return created, action_id

    def tag(self, project_id: int, document_id: int, label: str, annotator: str = "user") -> bool:
        """True when a new tag was made; tagging an already-tagged (document, label) is a no-op."""
        return self.add_tags(project_id, [(document_id, label)], annotator)[0] == 1

    def tag_many(self, project_id: int, document_ids: Iterable[int], label: str, annotator: str = "user") -> int:
        """Bulk tagging: one action, so one undo reverts it all."""
        return self.add_tags(project_id, [(doc, label) for doc in document_ids], annotator)[0]

    def untag(self, project_id: int, document_id: int, label: str, annotator: str = "user") -> bool:
        """Soft-delete the live tag (kept for the history); False when there was none."""
        with self.transaction():
            self._check_pairs(project_id, [(document_id, label)])
            row = self._one(
                "SELECT id FROM annotations WHERE document_id = ? AND label = ? AND deleted_at IS NULL",
                (document_id, label),
            )
            if row is None:
                return False
            action = self._new_action(project_id, annotator, "untag")
            self.conn.execute(
                "UPDATE annotations SET deleted_at = ?, deleted_action_id = ? WHERE id = ?",
                (time.time(), action, row[0]),
            )
        return True

    def undo_last(self, project_id: int, annotator: str = "user") -> list[tuple[int, str]]:
        """Revert the annotator's latest action still in effect (a tag, bulk tag or untag);
        returns the (document id, label) pairs it changed, [] when there is nothing to undo."""
        with self.transaction():
            for action in self._rows(
                "SELECT id, kind FROM annotation_actions WHERE project_id = ? AND "
                "annotator = ? AND undone_at IS NULL ORDER BY id DESC",
                (project_id, annotator),
            ):
                now = time.time()
                self.conn.execute("UPDATE annotation_actions SET undone_at = ? WHERE id = ?", (now, action["id"]))
                if action["kind"] == "tag":
                    changed = self._rows(
                        "UPDATE annotations SET deleted_at = ? WHERE action_id = ? AND "
                        "deleted_at IS NULL RETURNING document_id, label",
                        (now, action["id"]),
                    )
                else:  # restore, unless the same tag was made again meanwhile
                    changed = self._rows(
                        "UPDATE annotations SET deleted_at = NULL, deleted_action_id = NULL "
                        "WHERE deleted_action_id = ? AND NOT EXISTS (SELECT 1 FROM annotations a "
                        "WHERE a.document_id = annotations.document_id AND a.label = annotations.label "
                        "AND a.deleted_at IS NULL) RETURNING document_id, label",
                        (action["id"],),
                    )
                if changed:
                    return [(row[0], row[1]) for row in changed]
        return []

    def tags_by_label(self, project_id: int, *, domain: str | None = None) -> dict[str, list[int]]:
        """Every project label (possibly with no tags) -> tagged document ids, in id order; with
        `domain`, only tags on documents of that domain (e.g. "target": what adaptation trains on)."""
        out: dict[str, list[int]] = {label: [] for label in self.get_project(project_id).labels}
        join, where, params = (
            ("JOIN documents d ON d.id = a.document_id", "AND d.domain = ?", [domain]) if domain else ("", "", [])
        )
        for row in self._rows(
            f"SELECT a.label, a.document_id FROM annotations a {join} WHERE a.project_id = ? AND "
            f"a.deleted_at IS NULL {where} ORDER BY a.document_id",
            [project_id, *params],
        ):
            out.setdefault(row[0], []).append(row[1])
        return out

    def tags_for(self, document_ids: Sequence[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for row in self._in(
            "SELECT document_id, label FROM annotations WHERE deleted_at IS NULL AND document_id IN ({}) ORDER BY id",
            [],
            document_ids,
        ):
            out.setdefault(row[0], []).append(row[1])
        return out

    def annotations(self, project_id: int, *, include_deleted: bool = False) -> list[Annotation]:
        live = "" if include_deleted else "AND deleted_at IS NULL"
        return [
            Annotation(*row)
            for row in self._rows(
                "SELECT id, project_id, document_id, label, annotator, created_at, deleted_at FROM annotations "
                f"WHERE project_id = ? {live} ORDER BY id",
                (project_id,),
            )
        ]
