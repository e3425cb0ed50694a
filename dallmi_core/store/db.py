"""The connection under every Store: opening (pragmas, migrations), transactions, reads and errors.

The transaction rules live here: BEGIN IMMEDIATE for every write (the write lock up front, so
read-then-write cannot race), a busy timeout for concurrent processes, and every sqlite3 error
turned into a StoreError that says what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import sqlite_utils

from dallmi_core.errors import StoreError
from dallmi_core.store import schema

_IN_CHUNK = 500  # parameters per IN (...) list


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


def _chunks(items: Sequence, size: int = _IN_CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(items: Sequence) -> str:
    return ",".join("?" * len(items))


class StoreBase:
    """One store file's connection, shared by the table mixins that `Store` composes on top of it."""

    def __init__(self, path: str | os.PathLike, *, migrate_to: int | None = None):
        self.path = Path(path)
        self._lock = threading.RLock()
        if not self.path.parent.is_dir():
            what = "is a file, not a folder" if self.path.parent.exists() else "does not exist"
            raise StoreError(
                f"cannot open the store {self.path}: {self.path.parent} {what}. "
                "Create the folder, or set DALLMI_DATA_DIR to an existing writable folder."
            )
        if self.path.is_dir():
            raise StoreError(f"cannot open the store {self.path}: it is a folder, not a database file.")
        try:
            self.conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(self._explain(exc)) from exc
        try:
            for pragma in ("busy_timeout=30000", "journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL"):
                self.conn.execute(f"PRAGMA {pragma}").fetchall()
            self.db = sqlite_utils.Database(self.conn)
            self._migrate(len(schema.MIGRATIONS) if migrate_to is None else migrate_to)
        except BaseException as exc:
            self.conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(self._explain(exc)) from exc
            raise

    def _explain(self, exc: sqlite3.Error) -> str:
        text = str(exc)
        if "not a database" in text or "malformed" in text:
            return (
                f"{self.path} is not a DALLMi store or is corrupt ({text}). Restore it from a backup, "
                "or move it away to start a fresh store."
            )
        if "readonly" in text or "unable to open" in text or "disk I/O" in text:
            return (
                f"cannot write the store {self.path} ({text}). Check that its folder is writable and "
                "has free space, or set DALLMI_DATA_DIR to another folder."
            )
        if "full" in text:  # SQLITE_FULL: "database or disk is full"
            return (
                f"the disk holding the store {self.path} is full ({text}); nothing was written. Free some space, "
                "or set DALLMI_DATA_DIR to a folder on a disk with room."
            )
        if "locked" in text or "busy" in text:
            return f"the store {self.path} stayed locked by another process for 30 s ({text}). Try again."
        return f"store {self.path}: {text}"

    def _migrate(self, target: int) -> None:
        migrations = schema.MIGRATIONS  # looked up at call time, so a test can swap them
        with self.transaction():
            version = self.schema_version
            if version > len(migrations):
                raise StoreError(
                    f"{self.path} has schema version {version}, newer than this DALLMi Studio "
                    f"understands ({len(migrations)}). Upgrade the app."
                )
            for migration in migrations[version:target]:
                migration(self.db)
            if target > version:
                self.conn.execute(f"PRAGMA user_version = {int(target)}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def data_dir(self) -> Path:
        return self.path.parent

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def schema_version(self) -> int:
        return self._one("PRAGMA user_version")[0]

    # ---- transactions and reads --------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Self]:
        """BEGIN IMMEDIATE (the write lock up front, so read-then-write cannot race) ... COMMIT;
        any error rolls everything back. Nested blocks are savepoints."""
        with self._lock:
            if self.conn.in_transaction:
                with self.db.atomic():
                    yield self
                return
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(self._explain(exc)) from exc
            try:
                yield self
                self.conn.execute("COMMIT")
            except BaseException as exc:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(self._explain(exc)) from exc
                raise

    def _rows(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                cursor = self.conn.cursor()
                cursor.row_factory = sqlite3.Row
                return cursor.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(self._explain(exc)) from exc

    def _one(self, sql: str, params: Sequence = ()) -> sqlite3.Row | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _in(self, sql: str, first: Sequence, items: Sequence) -> list[sqlite3.Row]:
        """Run `sql` (with one `{}` for the IN list) over `items` in chunks."""
        out: list[sqlite3.Row] = []
        for part in _chunks(list(items)):
            out += self._rows(sql.format(_marks(part)), [*first, *part])
        return out

    def table_counts(self) -> dict[str, int]:
        return {name: self.db[name].count for name in self.db.table_names()}

    def integrity_check(self) -> str:
        """'ok', or what is wrong: SQLite's integrity check plus the FTS index against the documents."""
        result = ", ".join(row[0] for row in self._rows("PRAGMA integrity_check"))
        try:
            with self._lock:
                self.conn.execute("INSERT INTO documents_fts (documents_fts, rank) VALUES ('integrity-check', 1)")
        except sqlite3.Error as exc:
            result = f"{'' if result == 'ok' else result + ', '}full-text index: {exc}"
        return result

    def content_digest(self) -> str:
        """sha256 over every stored row of every table (FTS shadow tables included, virtual tables
        skipped), in a fixed order: equal digests mean equal content, whatever the file's pages hold.
        Reliability tests use it to prove a failed write changed nothing."""
        digest = hashlib.sha256()
        tables = self._rows("SELECT name FROM sqlite_master WHERE type = 'table' AND sql NOT LIKE 'CREATE VIRTUAL%'")
        for name in sorted(r[0] for r in tables):
            digest.update(name.encode())
            for row in sorted(repr(tuple(r)) for r in self._rows(f'SELECT * FROM "{name}"')):
                digest.update(row.encode())
        return digest.hexdigest()
