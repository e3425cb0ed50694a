"""Projects: a name, its label set (labels can be added, never removed or renamed) and settings."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dallmi_core.data.corpus import LABEL_SEPARATOR
from dallmi_core.errors import DataError, StoreError
from dallmi_core.store.db import StoreBase, _dumps


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
        """Change what is given (None: unchanged). Labels can be added, never removed or renamed."""
        with self.transaction():
            project = self.get_project(project_id)
            labels = _check_labels(project.labels + tuple(add_labels))
            self.conn.execute(
                "UPDATE projects SET labels = ?, source_model = coalesce(?, source_model), "
                "settings = coalesce(?, settings) WHERE id = ?",
                (_dumps(list(labels)), source_model, _dumps(None if settings is None else dict(settings)), project_id),
            )
        return self.get_project(project_id)

    def delete_project(self, project_id: int) -> None:
        """Deletes its documents, annotations and runs too (foreign-key cascade)."""
        with self.transaction():
            self.get_project(project_id)
            self.conn.execute("DELETE FROM projects WHERE id = ?", (project_id,))
