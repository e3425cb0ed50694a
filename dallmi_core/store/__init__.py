"""The project store: one SQLite file (WAL) through sqlite-utils; every SQL statement lives in this package.

One package owns the schema, its migrations and the transaction rules (BEGIN IMMEDIATE for every
write, a busy timeout for concurrent processes), so pages, services, the importer and the worker
share one typed API. Model weights and exports are files under the data directory, never rows.

    db.py           the connection: pragmas, migrations, transactions, reads, errors
    schema.py       the numbered migrations
    projects.py     documents.py     merge.py     browse.py     annotations.py     runs.py
    analysis.py     presence.py:
                    the tables, as Store mixins
"""

from __future__ import annotations

import os
from pathlib import Path

from dallmi_core.errors import StoreError
from dallmi_core.store.analysis import AnalysisMixin
from dallmi_core.store.annotations import Annotation, AnnotationsMixin, Changes
from dallmi_core.store.browse import TAG_STATES, BrowseMixin
from dallmi_core.store.db import StoreBase
from dallmi_core.store.documents import Document, DocumentsMixin, content_hash, fts_query
from dallmi_core.store.merge import MergeMixin, MetaMerge
from dallmi_core.store.presence import PresenceMixin, WorkerReport
from dallmi_core.store.projects import Project, ProjectsMixin
from dallmi_core.store.runs import FINISH_STATUSES, Run, RunsMixin
from dallmi_core.store.schema import MIGRATIONS, RUN_STATUSES

__all__ = [
    "FINISH_STATUSES",
    "MIGRATIONS",
    "RUN_STATUSES",
    "TAG_STATES",
    "Annotation",
    "Changes",
    "Document",
    "MetaMerge",
    "Project",
    "Run",
    "Store",
    "WorkerReport",
    "content_hash",
    "data_dir",
    "fts_query",
    "open_store",
]


class Store(
    ProjectsMixin,
    DocumentsMixin,
    MergeMixin,
    BrowseMixin,
    AnnotationsMixin,
    RunsMixin,
    AnalysisMixin,
    PresenceMixin,
    StoreBase,
):
    """A handle on one store file: its own connection, safe to share between threads (a lock)."""


def data_dir() -> Path:
    """$DALLMI_DATA_DIR, else ./dallmi_data: holds dallmi.db, models/ and exports/."""
    return Path(os.environ.get("DALLMI_DATA_DIR") or "dallmi_data")


def open_store(directory: str | os.PathLike | None = None) -> Store:
    """Create the data directory layout if needed and open its store."""
    root = Path(directory) if directory is not None else data_dir()
    try:
        for sub in ("models", "exports"):
            (root / sub).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the data folder {root} ({exc.strerror or exc}). Set DALLMI_DATA_DIR to a writable folder."
        ) from exc
    return Store(root / "dallmi.db")
