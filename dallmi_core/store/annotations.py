"""Annotations: positive tags and "reviewed: not <label>" marks; every change is an action that
`undo_last` can revert.

A tag or mark is never deleted: removing one sets `deleted_at` (the history stays), and a live
(document, label) pair is unique in each table, so tagging twice is a no-op even from two processes
at once. A pair is tagged, marked reviewed-not, or neither, never both: tagging clears a mark and
marking clears a tag, in the same action. Marks never reach training (PU adaptation reads
`tags_by_label` alone: the tags and the unlabeled rest); they measure.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from dallmi_core.errors import DataError
from dallmi_core.store.db import StoreBase

STATES = ("tag", "not", None)  # a (document, label) pair: tagged, reviewed not, or neither
_TABLES = {"tag": "annotations", "not": "label_reviews"}


@dataclass(frozen=True)
class Annotation:
    id: int
    project_id: int
    document_id: int
    label: str
    annotator: str
    created_at: float
    deleted_at: float | None


class Changes(NamedTuple):
    """What one action did: tags made and removed, reviewed-not marks made and removed."""

    tagged: int = 0
    untagged: int = 0
    marked: int = 0
    unmarked: int = 0
    action_id: int | None = None

    @property
    def any(self) -> bool:
        return bool(self.tagged or self.untagged or self.marked or self.unmarked)


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

    def set_states(
        self,
        project_id: int,
        states: Iterable[tuple[int, str, str | None]],
        annotator: str = "user",
        *,
        action_id: int | None = None,
    ) -> Changes:
        """Bring each (document id, label) to its state ('tag', 'not' or None: neither) as one undoable
        action (or extend `action_id`); pairs already in their state are left alone. The action is
        dropped when nothing changed."""
        states = list(dict(((doc, label), state) for doc, label, state in states).items())
        if not states:
            return Changes(action_id=action_id)
        bad = next((state for _, state in states if state not in STATES), "ok")
        if bad != "ok":
            raise DataError(f"unknown annotation state {bad!r}; use 'tag', 'not' or None.")
        with self.transaction():
            self._check_pairs(project_id, [pair for pair, _ in states])
            own = action_id is None
            action_id = self._new_action(project_id, annotator, "tag") if own else action_id
            now, counts = time.time(), {}
            for state, table in _TABLES.items():  # removals first: a pair is never tagged and marked
                counts[f"-{state}"] = self.conn.executemany(
                    f"UPDATE {table} SET deleted_at = ?, deleted_action_id = ? "
                    "WHERE document_id = ? AND label = ? AND deleted_at IS NULL",
                    [(now, action_id, doc, label) for (doc, label), want in states if want != state],
                ).rowcount
            for state, table in _TABLES.items():
                counts[state] = self.conn.executemany(
                    f"INSERT INTO {table} (project_id, document_id, label, annotator, created_at, action_id) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (document_id, label) WHERE deleted_at IS NULL DO NOTHING",
                    [
                        (project_id, doc, label, annotator, now, action_id)
                        for (doc, label), want in states
                        if want == state
                    ],
                ).rowcount
            changes = Changes(counts["tag"], counts["-tag"], counts["not"], counts["-not"], action_id)
            if own and not changes.any:
                self.conn.execute("DELETE FROM annotation_actions WHERE id = ?", (action_id,))
                changes = changes._replace(action_id=None)
            elif own and not (changes.tagged or changes.marked):
                self.conn.execute("UPDATE annotation_actions SET kind = 'untag' WHERE id = ?", (action_id,))
        return changes

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
        changes = self.set_states(
            project_id, [(doc, label, "tag") for doc, label in pairs], annotator, action_id=action_id
        )
        return changes.tagged, changes.action_id

    def tag(self, project_id: int, document_id: int, label: str, annotator: str = "user") -> bool:
        """True when a new tag was made; tagging an already-tagged (document, label) is a no-op."""
        return self.add_tags(project_id, [(document_id, label)], annotator)[0] == 1

    def tag_many(self, project_id: int, document_ids: Iterable[int], label: str, annotator: str = "user") -> int:
        """Bulk tagging: one action, so one undo reverts it all."""
        return self.add_tags(project_id, [(doc, label) for doc in document_ids], annotator)[0]

    def untag(self, project_id: int, document_id: int, label: str, annotator: str = "user") -> bool:
        """Soft-delete the live tag (kept for the history); False when there was none."""
        return self._clear(project_id, document_id, label, "tag", annotator)

    def mark_not(self, project_id: int, document_id: int, label: str, annotator: str = "user") -> bool:
        """Record "reviewed: not <label>" (a tag on the pair goes, in the same action); False when it was."""
        return self.set_states(project_id, [(document_id, label, "not")], annotator).marked == 1

    def mark_not_many(self, project_id: int, document_ids: Iterable[int], label: str, annotator: str = "user") -> int:
        return self.set_states(project_id, [(doc, label, "not") for doc in document_ids], annotator).marked

    def unmark_not(self, project_id: int, document_id: int, label: str, annotator: str = "user") -> bool:
        """Remove the live reviewed-not mark (back to unreviewed); False when there was none."""
        return self._clear(project_id, document_id, label, "not", annotator)

    def _clear(self, project_id: int, document_id: int, label: str, state: str, annotator: str) -> bool:
        with self.transaction():
            self._check_pairs(project_id, [(document_id, label)])
            live = self._one(
                f"SELECT 1 FROM {_TABLES[state]} WHERE document_id = ? AND label = ? AND deleted_at IS NULL",
                (document_id, label),
            )
            return live is not None and self.set_states(project_id, [(document_id, label, None)], annotator).any

    def undo_last(self, project_id: int, annotator: str = "user") -> list[tuple[int, str]]:
        """Revert the annotator's latest action still in effect (a tag, bulk tag, untag, reviewed-not
        mark, or a document's set of decisions): what it made goes, what it removed comes back unless the
        pair was decided again meanwhile. Returns the (document id, label) pairs it changed, [] when
        there is nothing to undo."""
        with self.transaction():
            for action in self._rows(
                "SELECT id FROM annotation_actions WHERE project_id = ? AND "
                "annotator = ? AND undone_at IS NULL ORDER BY id DESC",
                (project_id, annotator),
            ):
                now = time.time()
                self.conn.execute("UPDATE annotation_actions SET undone_at = ? WHERE id = ?", (now, action["id"]))
                changed = []
                for table in _TABLES.values():
                    changed += self._rows(
                        f"UPDATE {table} SET deleted_at = ? WHERE action_id = ? AND "
                        "deleted_at IS NULL RETURNING document_id, label",
                        (now, action["id"]),
                    )
                for table in _TABLES.values():
                    live = " AND ".join(
                        f"NOT EXISTS (SELECT 1 FROM {other} x WHERE x.document_id = {table}.document_id "
                        f"AND x.label = {table}.label AND x.deleted_at IS NULL)"
                        for other in _TABLES.values()
                    )
                    changed += self._rows(
                        f"UPDATE {table} SET deleted_at = NULL, deleted_action_id = NULL "
                        f"WHERE deleted_action_id = ? AND {live} RETURNING document_id, label",
                        (action["id"],),
                    )
                if changed:
                    return list(dict.fromkeys((row[0], row[1]) for row in changed))
        return []

    def tags_by_label(self, project_id: int, *, domain: str | None = None) -> dict[str, list[int]]:
        """Every project label (possibly with no tags) -> tagged document ids, in id order; with
        `domain`, only tags on documents of that domain (e.g. "target": what adaptation trains on)."""
        return self._by_label("annotations", project_id, domain)

    def reviews_by_label(self, project_id: int, *, domain: str | None = None) -> dict[str, list[int]]:
        """Every project label -> the document ids marked "reviewed: not <label>", in id order."""
        return self._by_label("label_reviews", project_id, domain)

    def _by_label(self, table: str, project_id: int, domain: str | None) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {label: [] for label in self.get_project(project_id).labels}
        join, where, params = (
            ("JOIN documents d ON d.id = a.document_id", "AND d.domain = ?", [domain]) if domain else ("", "", [])
        )
        for row in self._rows(
            f"SELECT a.label, a.document_id FROM {table} a {join} WHERE a.project_id = ? AND "
            f"a.deleted_at IS NULL {where} ORDER BY a.document_id",
            [project_id, *params],
        ):
            out.setdefault(row[0], []).append(row[1])
        return out

    def count_tags_since(self, project_id: int, since: float) -> int:
        """Live tags made after `since` (a time.time() stamp)."""
        return self._rows(
            "SELECT count(*) FROM annotations WHERE project_id = ? AND deleted_at IS NULL AND created_at > ?",
            (project_id, since),
        )[0][0]

    def tags_for(self, document_ids: Sequence[int]) -> dict[int, list[str]]:
        return self._for("annotations", document_ids)

    def reviews_for(self, document_ids: Sequence[int]) -> dict[int, list[str]]:
        """document id -> the labels it was reviewed as not carrying (documents with none are absent)."""
        return self._for("label_reviews", document_ids)

    def _for(self, table: str, document_ids: Sequence[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for row in self._in(
            f"SELECT document_id, label FROM {table} WHERE deleted_at IS NULL AND document_id IN ({{}}) ORDER BY id",
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
