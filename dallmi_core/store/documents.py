"""Documents: import (one transaction, deferred search index for bulk loads), paging and search.

Full-text search is SQLite FTS5 over the text; `fts_query` turns any user text into a safe query.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from dallmi_core.data.corpus import DOMAINS, Corpus
from dallmi_core.errors import DataError, StoreError
from dallmi_core.store.db import StoreBase, _dumps


def content_hash(text: str) -> str:
    """sha1 of NFKC, case-folded, whitespace-collapsed text: what counts as the same document."""
    normal = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return hashlib.sha1(normal.encode("utf-8")).hexdigest()


def fts_query(text: str) -> str | None:
    """User text -> a safe FTS5 query: words and "quoted phrases" (all must match), `word*` prefix, and
    `OR` between two terms (either may match; it binds the terms beside it, as in web search:
    `refund chargeback OR dispute` is refund AND (chargeback OR dispute)).

    Only word characters ever reach FTS5, inside double quotes, and the operators are ours, so no
    input is a syntax error. An `OR` without a term on both sides is ignored; "OR" in quotes and a
    lower-case `or` are words. None when nothing searchable is left (e.g. only punctuation).
    """
    groups: list[list[str]] = []  # an AND of groups, each an OR of its terms
    pending_or = False
    for phrase, word in re.findall(r'"([^"]*)"?|([^\s"]+)', text):
        tokens = re.findall(r"\w+", phrase or word)
        if word == "OR":
            pending_or = bool(groups)
        elif tokens:
            term = '"' + " ".join(tokens) + '"' + ("*" if word.endswith("*") else "")
            if pending_or:
                groups[-1].append(term)
            else:
                groups.append([term])
            pending_or = False
    if all(len(group) == 1 for group in groups):
        return " ".join(group[0] for group in groups) or None
    return " AND ".join(group[0] if len(group) == 1 else "(" + " OR ".join(group) + ")" for group in groups)


@dataclass(frozen=True)
class Document:
    id: int
    project_id: int
    ext_id: str
    domain: str
    text: str
    meta: dict
    gold_labels: tuple[str, ...] | None
    content_hash: str


def _document(row) -> Document:
    gold = row["gold_labels"]
    return Document(
        row["id"],
        row["project_id"],
        row["ext_id"],
        row["domain"],
        row["text"],
        json.loads(row["meta"] or "{}"),
        None if gold is None else tuple(json.loads(gold)),
        row["content_hash"],
    )


class DocumentsMixin(StoreBase):
    """The document rows and their search index; composed into Store (uses its get_project)."""

    def add_documents(
        self, project_id: int, corpus: Corpus, *, domain: str | None = None, gold: bool | None = None
    ) -> list[int]:
        """Insert a whole corpus in one transaction; its labels become gold labels when `gold`
        (default: when any row has labels). Ids already in the project are a DataError."""
        if domain is not None and domain not in DOMAINS:
            raise DataError(f"unknown domain {domain!r}; use one of {', '.join(DOMAINS)}.")
        gold = any(corpus.labels) if gold is None else gold
        with self.transaction(), self.deferred_search_index():
            project = self.get_project(project_id)
            if gold:
                corpus.label_matrix(project.labels)  # raises DataError naming an unknown label and row
            self.insert_documents(
                project_id,
                [
                    (ext, domain or dom, text, None, list(labels) if gold else None, content_hash(text))
                    for ext, text, labels, dom in zip(
                        corpus.ids, corpus.texts, corpus.labels, corpus.domains, strict=True
                    )
                ],
            )
            found = self.find_ext_ids(project_id, corpus.ids)
        return [found[ext] for ext in corpus.ids]

    @contextmanager
    def deferred_search_index(self) -> Iterator[None]:
        """Bulk loads: index the text of all new documents in one statement at the end (about 2.5x
        faster than the per-row trigger). One transaction, so no reader ever sees it half done."""
        with self.transaction():
            base = self.max_document_id()
            self.conn.execute("INSERT OR IGNORE INTO fts_deferred VALUES (1)")
            yield  # an error rolls back the flag with everything else
            self.conn.execute("DELETE FROM fts_deferred")
            self.conn.execute(
                "INSERT INTO documents_fts (rowid, text) SELECT id, text FROM documents WHERE id > ?", (base,)
            )

    def insert_documents(self, project_id: int, rows: Sequence[tuple]) -> None:
        """Low-level batch insert of (ext_id, domain, text, meta, gold_labels, content_hash)."""
        with self.transaction():
            try:
                self.conn.executemany(
                    "INSERT INTO documents (project_id, ext_id, domain, text, meta, gold_labels, content_hash) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        (project_id, ext, dom, text, _dumps(meta or None), _dumps(gold), digest)
                        for ext, dom, text, meta, gold, digest in rows
                    ),
                )
            except sqlite3.IntegrityError as exc:
                taken = self.find_ext_ids(project_id, [row[0] for row in rows])
                which = f"id {next(iter(taken))!r}" if taken else "a document"
                raise DataError(
                    f"{which} is already in the project (or twice in the input): {exc}. "
                    "Ids must be unique within a project."
                ) from exc

    def find_ext_ids(self, project_id: int, ext_ids: Sequence[str]) -> dict[str, int]:
        rows = self._in(
            "SELECT ext_id, id FROM documents WHERE project_id = ? AND ext_id IN ({})", [project_id], ext_ids
        )
        return {row[0]: row[1] for row in rows}

    def find_ext_docs(self, project_id: int, ext_ids: Sequence[str]) -> dict[str, tuple[int, str, str]]:
        """external id -> (document id, content hash, domain), to tell a repeat from a clash."""
        rows = self._in(
            "SELECT ext_id, id, content_hash, domain FROM documents WHERE project_id = ? AND ext_id IN ({})",
            [project_id],
            ext_ids,
        )
        return {row[0]: (row[1], row[2], row[3]) for row in rows}

    def target_hashes(self, project_id: int, hashes: Sequence[str]) -> set[str]:
        """The content hashes among `hashes` that some target document of the project has."""
        rows = self._in(
            "SELECT DISTINCT content_hash FROM documents WHERE project_id = ? AND domain = 'target' "
            "AND content_hash IN ({})",
            [project_id],
            hashes,
        )
        return {row[0] for row in rows}

    def attach_gold(self, project_id: int, gold_by_hash: dict[str, list[str]]) -> int:
        """Gold labels onto every target document with that content (an eval row of a text already
        imported as target); returns the documents updated."""
        with self.transaction():
            return sum(
                self.conn.execute(
                    "UPDATE documents SET gold_labels = ? WHERE project_id = ? AND domain = 'target' "
                    "AND content_hash = ?",
                    (_dumps(labels), project_id, digest),
                ).rowcount
                for digest, labels in gold_by_hash.items()
            )

    def add_meta_columns(self, project_id: int, names: Sequence[str]) -> None:
        """Record metadata column names in first-seen order, so every export writes them back in it."""
        with self.transaction():
            known = set(self.meta_columns(project_id))
            start = self._one("SELECT count(*) FROM meta_columns WHERE project_id = ?", (project_id,))[0]
            fresh = [name for name in dict.fromkeys(names) if name not in known]
            self.conn.executemany(
                "INSERT INTO meta_columns (project_id, name, position) VALUES (?, ?, ?)",
                [(project_id, name, start + i) for i, name in enumerate(fresh)],
            )

    def meta_columns(self, project_id: int) -> list[str]:
        return [
            r[0]
            for r in self._rows("SELECT name FROM meta_columns WHERE project_id = ? ORDER BY position", (project_id,))
        ]

    def max_document_id(self) -> int:
        return self._one("SELECT coalesce(max(id), 0) FROM documents")[0]

    def remember_keys(self, keys: Sequence[tuple[str, int, str, str]]) -> dict[str, tuple[int, str, str]]:
        """Streaming imports: record (key, row, content hash, domain) in a connection-local TEMP table
        (bounded memory); return {key: (earlier row, hash, domain)} for keys recorded before.
        forget_keys() starts over."""
        with self.transaction():
            self.conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS import_keys "
                "(key TEXT PRIMARY KEY, row INTEGER, hash TEXT, domain TEXT)"
            )
            seen = {
                r[0]: (r[1], r[2], r[3])
                for r in self._in(
                    "SELECT key, row, hash, domain FROM temp.import_keys WHERE key IN ({})", [], [k[0] for k in keys]
                )
            }
            self.conn.executemany("INSERT OR IGNORE INTO temp.import_keys VALUES (?, ?, ?, ?)", keys)
        return seen

    def forget_keys(self) -> None:
        with self.transaction():
            self.conn.execute("DROP TABLE IF EXISTS temp.import_keys")

    def count_documents(self, project_id: int) -> dict[str, int]:
        counts = dict.fromkeys(DOMAINS, 0)
        for row in self._rows(
            "SELECT domain, count(*) FROM documents WHERE project_id = ? GROUP BY domain", (project_id,)
        ):
            counts[row[0]] = row[1]
        return counts

    def get_document(self, document_id: int) -> Document:
        row = self._one("SELECT * FROM documents WHERE id = ?", (document_id,))
        if row is None:
            raise StoreError(f"document {document_id} does not exist.")
        return _document(row)

    def get_documents(
        self,
        project_id: int,
        *,
        ids: Sequence[int] | None = None,
        domain: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Document]:
        """By ids (in the order given), else by domain/all in id order, paged by limit/offset."""
        if ids is not None:
            found = {
                row["id"]: _document(row)
                for row in self._in("SELECT * FROM documents WHERE project_id = ? AND id IN ({})", [project_id], ids)
            }
            return [found[i] for i in ids if i in found]
        where, params = ("AND domain = ?", [domain]) if domain else ("", [])
        rows = self._rows(
            f"SELECT * FROM documents WHERE project_id = ? {where} ORDER BY id LIMIT ? OFFSET ?",
            [project_id, *params, -1 if limit is None else limit, offset],
        )
        return [_document(row) for row in rows]

    def iter_documents(
        self, project_id: int, *, domain: str | None = None, batch_size: int = 1000
    ) -> Iterator[list[Document]]:
        """Pages of documents in id order (keyset paging: bounded memory for any corpus size)."""
        last, where, params = 0, ("AND domain = ?" if domain else ""), ([domain] if domain else [])
        while True:
            rows = self._rows(
                f"SELECT * FROM documents WHERE project_id = ? {where} AND id > ? ORDER BY id LIMIT ?",
                [project_id, *params, last, batch_size],
            )
            if not rows:
                return
            last = rows[-1]["id"]
            yield [_document(row) for row in rows]

    def gold_documents(self, project_id: int) -> list[Document]:
        """The documents that measure: eval documents with gold labels, and target documents that got
        gold labels from an evaluation file (the same text), in id order."""
        rows = self._rows(
            "SELECT * FROM documents WHERE project_id = ? AND gold_labels IS NOT NULL "
            "AND domain IN ('eval', 'target') ORDER BY id",
            (project_id,),
        )
        return [_document(row) for row in rows]

    def document_ids(self, project_id: int, domain: str | None = None) -> list[int]:
        where, params = ("AND domain = ?", [domain]) if domain else ("", [])
        return [
            r[0]
            for r in self._rows(
                f"SELECT id FROM documents WHERE project_id = ? {where} ORDER BY id", [project_id, *params]
            )
        ]

    def ext_ids(self, document_ids: Sequence[int]) -> dict[int, str]:
        return {r[0]: r[1] for r in self._in("SELECT id, ext_id FROM documents WHERE id IN ({})", [], document_ids)}

    def document_meta(self, document_ids: Sequence[int]) -> dict[int, dict]:
        """document id -> its metadata, for the documents that have any (no texts are read)."""
        rows = self._in("SELECT id, meta FROM documents WHERE meta IS NOT NULL AND id IN ({})", [], document_ids)
        return {r[0]: json.loads(r[1]) for r in rows}

    def search(self, project_id: int, query: str, *, domain: str | None = None, limit: int = 50) -> list[Document]:
        """Full-text search (FTS5, best match first); see fts_query for the accepted syntax."""
        match = fts_query(query)
        if match is None:
            return []
        where, params = ("AND d.domain = ?", [domain]) if domain else ("", [])
        rows = self._rows(
            "SELECT d.* FROM documents_fts JOIN documents d ON d.id = documents_fts.rowid "
            f"WHERE documents_fts MATCH ? AND d.project_id = ? {where} ORDER BY documents_fts.rank LIMIT ?",
            [match, project_id, *params, limit],
        )
        return [_document(row) for row in rows]
