"""Projects: a name, its label set (labels can be added and renamed, never removed) and settings.

A rename carries everything the store keeps under the label's name: tags, "reviewed: not" marks, gold
labels, every run's prediction columns (the label order kept on the run), saved thresholds, MixUp
samples, metrics and the analyses a job wrote (calibration, PU split); a cached analysis that names
the label is dropped (it is recomputed on request). Model folders on disk are app/labels.py's part.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dallmi_core.data.corpus import LABEL_SEPARATOR
from dallmi_core.errors import DataError, StoreError
from dallmi_core.store.analysis import params_hash
from dallmi_core.store.db import StoreBase, _dumps

KEPT_ANALYSES = ("calibration", "pu_split")  # written by a run's job, not caches: renamed, never dropped


@dataclass(frozen=True)
class Project:
    id: int
    name: str
    labels: tuple[str, ...]
    source_model: str | None
    settings: dict
    created_at: float


def _project(row) -> Project:
    return Project(
        row["id"],
        row["name"],
        tuple(json.loads(row["labels"])),
        row["source_model"],
        json.loads(row["settings"]),
        row["created_at"],
    )


def _check_labels(labels: Iterable[str]) -> tuple[str, ...]:
    names = tuple(str(label).strip() for label in labels)
    if not names or any(not n for n in names):
        raise DataError("a project needs at least one label, and label names cannot be empty.")
    bad = next((n for n in names if LABEL_SEPARATOR in n), None)
    if bad is not None:
        raise DataError(
            f"label {bad!r} contains {LABEL_SEPARATOR!r}, the separator of label lists in files. Rename the label."
        )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"duplicate label names: {', '.join(dupes)}. Give every label a distinct name.")
    return names


def renamed(value: Any, old: str, new: str) -> Any:
    """JSON with the label renamed: as a dict key, as the value of a "label" key, and as an item of a
    list of strings (a label list)."""
    if isinstance(value, dict):
        return {
            (new if k == old else k): (new if k == "label" and v == old else renamed(v, old, new))
            for k, v in value.items()
        }
    if isinstance(value, list):
        if value and all(isinstance(item, str) for item in value):
            return [new if item == old else item for item in value]
        return [renamed(item, old, new) for item in value]
    return value


class ProjectsMixin(StoreBase):
    """The project rows; composed into Store."""

    def create_project(
        self, name: str, labels: Iterable[str], *, source_model: str | None = None, settings: Mapping | None = None
    ) -> Project:
        name, labels = name.strip(), _check_labels(labels)
        if not name:
            raise DataError("the project name is empty. Give the project a name.")
        with self.transaction():
            if self.find_project(name) is not None:
                raise DataError(f"a project named {name!r} already exists. Choose another name.")
            cursor = self.conn.execute(
                "INSERT INTO projects (name, labels, source_model, settings, created_at) VALUES (?, ?, ?, ?, ?)",
                (name, _dumps(list(labels)), source_model, _dumps(dict(settings or {})), time.time()),
            )
        return self.get_project(cursor.lastrowid)

    def get_project(self, project_id: int) -> Project:
        row = self._one("SELECT * FROM projects WHERE id = ?", (project_id,))
        if row is None:
            raise StoreError(f"project {project_id} does not exist (it may have been deleted).")
        return _project(row)

    def find_project(self, name: str) -> Project | None:
        row = self._one("SELECT * FROM projects WHERE name = ?", (name.strip(),))
        return None if row is None else _project(row)

    def list_projects(self) -> list[Project]:
        return [_project(row) for row in self._rows("SELECT * FROM projects ORDER BY name")]

    def rename_project(self, project_id: int, name: str) -> Project:
        name = name.strip()
        with self.transaction():
            other = self.find_project(name)
            if not name or (other is not None and other.id != project_id):
                raise DataError(f"cannot rename to {name!r}: the name is empty or taken. Choose another.")
            self.get_project(project_id)
            self.conn.execute("UPDATE projects SET name = ? WHERE id = ?", (name, project_id))
        return self.get_project(project_id)

    def update_project(
        self,
        project_id: int,
        *,
        source_model: str | None = None,
        settings: Mapping | None = None,
        add_labels: Iterable[str] = (),
    ) -> Project:
        """Change what is given (None: unchanged). Labels can be added (rename_label renames one), never
        removed."""
        with self.transaction():
            project = self.get_project(project_id)
            labels = _check_labels(project.labels + tuple(add_labels))
            self.conn.execute(
                "UPDATE projects SET labels = ?, source_model = coalesce(?, source_model), "
                "settings = coalesce(?, settings) WHERE id = ?",
                (_dumps(list(labels)), source_model, _dumps(None if settings is None else dict(settings)), project_id),
            )
        return self.get_project(project_id)

    def rename_label(self, project_id: int, old: str, new: str) -> Project:
        """Rename a label and everything stored under its name, in one transaction (see the module)."""
        new = str(new).strip()
        with self.transaction():
            project = self.get_project(project_id)
            if old not in project.labels:
                raise DataError(
                    f"project {project.name!r} has no label {old!r}; its labels: {', '.join(project.labels)}."
                )
            if new == old:
                return project
            labels = _check_labels([new if label == old else label for label in project.labels])
            self.conn.execute("UPDATE projects SET labels = ? WHERE id = ?", (_dumps(list(labels)), project_id))
            of_runs = "run_id IN (SELECT id FROM runs WHERE project_id = ?)"
            for table, where in (
                ("annotations", "project_id = ?"),
                ("label_reviews", "project_id = ?"),
                ("run_thresholds", of_runs),
                ("mixup_samples", of_runs),
            ):
                self.conn.execute(f"UPDATE {table} SET label = ? WHERE {where} AND label = ?", (new, project_id, old))
            rows = self._rows(
                "SELECT id, gold_labels FROM documents WHERE project_id = ? AND gold_labels IS NOT NULL "
                "AND EXISTS (SELECT 1 FROM json_each(gold_labels) WHERE value = ?)",
                (project_id, old),
            )
            self.conn.executemany(
                "UPDATE documents SET gold_labels = ? WHERE id = ?",
                [(_dumps(renamed(json.loads(r[1]), old, new)), r[0]) for r in rows],
            )
            for r in self._rows("SELECT id, labels, metrics FROM runs WHERE project_id = ?", (project_id,)):
                self.conn.execute(
                    "UPDATE runs SET labels = ?, metrics = ? WHERE id = ?",
                    tuple(None if v is None else _dumps(renamed(json.loads(v), old, new)) for v in r[1:]) + (r[0],),
                )
            self._rename_in_analyses(project_id, old, new)
        return self.get_project(project_id)

    def _rename_in_analyses(self, project_id: int, old: str, new: str) -> None:
        mention = json.dumps(old, ensure_ascii=False)
        rows = self._rows(
            "SELECT a.run_id, a.kind, a.params_hash, a.params, a.meta FROM run_analysis a "
            "JOIN runs r ON r.id = a.run_id WHERE r.project_id = ?",
            (project_id,),
        )
        for r in rows:
            if mention not in r["params"] and mention not in r["meta"]:
                continue
            key = (r["run_id"], r["kind"], r["params_hash"])
            if r["kind"] not in KEPT_ANALYSES:
                self.conn.execute("DELETE FROM run_analysis WHERE run_id = ? AND kind = ? AND params_hash = ?", key)
                continue
            params, meta = (renamed(json.loads(r[k]), old, new) for k in ("params", "meta"))
            self.conn.execute(
                "UPDATE run_analysis SET params = ?, meta = ?, params_hash = ? "
                "WHERE run_id = ? AND kind = ? AND params_hash = ?",
                (_dumps(params), _dumps(meta), params_hash(params), *key),
            )

    def delete_project(self, project_id: int) -> None:
        """Deletes its documents, annotations and runs too (foreign-key cascade)."""
        with self.transaction():
            self.get_project(project_id)
            self.conn.execute("DELETE FROM projects WHERE id = ?", (project_id,))
