"""Streaming import of a data file into a project: bounded memory, all or nothing.

Which row becomes what: rows are distinct documents when their ids differ (the same text under two
ids is two documents); an exact repeat (same id, same text), within the file or of a document already
in the project, is skipped and counted; an eval row whose text is already a target document gives
that document its gold labels (counted as attached), so gold is never lost, and its metadata columns
(merged: the document's own values are kept, an empty one is filled; the values added are counted).
The same id with another text is an error naming both rows. Columns beyond text/id/labels/domain are
kept as the document's metadata and registered in the project's metadata columns, which every export
writes back.

Files are read in chunks by data.reader (the reader read_corpus uses too), decoded by textfile's
policy and validated by data.corpus.validate_rows, so an import and `read_corpus` accept and reject
exactly the same rows with the same messages. The whole import
is one transaction: any error rolls it back, leaving the project exactly as before.

Labels, by `label_policy`:
- "auto" (default): labels on `eval`/`source` rows are gold labels (they measure or train the
  source model); labels on `target` rows are *tagged positives* (annotations by annotator
  "import"), because in DALLMi the target labels a user has are the few positives they tagged;
  a gold-labelled target set belongs in the `eval` domain.
- "gold": every row's labels are stored as gold labels (e.g. benchmark data); no tags.
- "ignore": labels are neither validated nor stored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from dallmi_core.data.corpus import DOMAINS, validate_rows
from dallmi_core.data.reader import check_file, read_chunks
from dallmi_core.data.textfile import file_delimiter, sniff_encoding
from dallmi_core.errors import DataError
from dallmi_core.store import Project, Store, content_hash

LABEL_POLICIES = ("auto", "gold", "ignore")
IMPORT_ANNOTATOR = "import"
_ABSENT = "\x00absent"  # a column name no file has: "this mapping has no such column"
MAX_IMPORT_ENV = "DALLMI_MAX_IMPORT_MB"
_NUMBER = re.compile(r"[-+]?(\d[\d,. ]*)?\d([eE][-+]?\d+)?%?")


def max_import_bytes() -> int:
    """$DALLMI_MAX_IMPORT_MB (default 2,000): a bigger file is refused before it is read. The app's
    uploads are capped lower by Streamlit's server.maxUploadSize (.streamlit/config.toml)."""
    return int(float(os.environ.get(MAX_IMPORT_ENV) or 2000) * 1_000_000)


@dataclass(frozen=True)
class ColumnMapping:
    """Which file columns hold the text, the id, the labels ('a|b' or a list) and the domain;
    None means the file has no such column (ids are then generated, e.g. `row-7`)."""

    text: str = "text"
    id: str | None = "id"
    labels: str | None = "labels"
    domain: str | None = "domain"

    def used(self) -> set[str]:
        return {c for c in (self.text, self.id, self.labels, self.domain) if c}


@dataclass
class ImportReport:
    """Where every row of an import went: each row read became a new document (counted by domain),
    an exact repeat (within the file or of the project) or an eval row attached to a target document."""

    path: str
    encoding: str
    delimiter: str | None = None
    rows_read: int = 0
    by_domain: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DOMAINS, 0))  # the new documents
    repeated_in_file: int = 0
    repeated_in_project: int = 0
    attached: int = 0
    meta_added: int = 0  # metadata values an attached eval row gave its target document
    meta_kept: int = 0  # metadata values of attached eval rows that differed from the document's: not written
    tags_added: int = 0
    gold_rows: int = 0
    meta_columns: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def imported(self) -> int:
        """New documents, of every domain."""
        return sum(self.by_domain.values())

    @property
    def repeated(self) -> int:
        return self.repeated_in_file + self.repeated_in_project

    def summary(self) -> str:
        """Where every row went and why, in one message (the page's and the CLI's main line)."""
        added = ", ".join(f"{n:,} {d}" for d, n in self.by_domain.items() if n)
        parts = [f"{self.imported:,} new documents" + (f" ({added})" if added else "")]
        if self.attached:
            merged = f", and {self.meta_added:,} metadata values they lacked," if self.meta_added else ""
            parts.append(
                f"{self.attached:,} eval rows gave their gold labels{merged} to the target documents "
                "with the same text (no second copy)"
            )
        if self.repeated:
            where = [
                f"{n:,} {w}"
                for n, w in (
                    (self.repeated_in_file, "within the file"),
                    (self.repeated_in_project, "already in the project"),
                )
                if n
            ]
            parts.append(f"{self.repeated:,} exact repeats (same id and text) skipped: {', '.join(where)}")
        line = f"Read {self.rows_read:,} rows: " + "; ".join(parts) + "."
        if self.tags_added:
            line += f" Tags added: {self.tags_added:,}."
        if self.meta_columns:
            line += f" Kept as metadata: {', '.join(self.meta_columns)}."
        if self.meta_kept:
            line += (
                f" {self.meta_kept:,} metadata values of those eval rows differed from the target documents' "
                "own and were left as they were."
            )
        return line

    def to_dict(self) -> dict:
        """The counts a script reads (`dallmi import --json`)."""
        return {
            "file": Path(self.path).name,
            "encoding": self.encoding,
            "delimiter": self.delimiter,
            "rows_read": self.rows_read,
            "imported": self.imported,
            "repeated": self.repeated,
            "repeated_in_file": self.repeated_in_file,
            "repeated_in_project": self.repeated_in_project,
            "attached": self.attached,
            "meta_added": self.meta_added,
            "meta_kept": self.meta_kept,
            "tags_added": self.tags_added,
            "gold_rows": self.gold_rows,
            "by_domain": self.by_domain,
            "meta_columns": self.meta_columns,
            "warnings": self.warnings,
        }


class ImportPreview(NamedTuple):
    frame: pd.DataFrame
    columns: list[str]
    encoding: str
    warnings: list[str]
    delimiter: str | None = None


def numeric_text_warning(texts, column: str) -> str | None:
    """A warning when most non-empty values of the chosen text column are numbers (a wrong pick)."""
    values = [str(t).strip() for t in texts if str(t).strip()]
    numeric = sum(bool(_NUMBER.fullmatch(v)) for v in values)
    if values and numeric >= 0.8 * len(values):
        return (
            f"the text column {column!r} holds numbers ({numeric} of the first {len(values)} values), not "
            "document text. Choose the column with the text if this is not what you meant."
        )
    return None


def preview_import(path, mapping: ColumnMapping | None = None, n: int = 20) -> ImportPreview:
    """The first `n` rows as read (no validation), to choose the column mapping; the encoding is
    sniffed from the first MiB only (the import checks the whole file)."""
    mapping = mapping or ColumnMapping()
    path = Path(path)
    fmt = check_file(path, max_import_bytes(), MAX_IMPORT_ENV)
    encoding, warning = ("binary", None) if fmt == "parquet" else sniff_encoding(path, limit=1 << 20)
    notes = [warning] if warning else []
    chunks = read_chunks(
        path, fmt, encoding, n, text_column=mapping.text, id_column=mapping.id or "id", require_text=False
    )
    rows, columns = next(chunks, ([], None))
    rows = rows[:n]
    columns = columns or list(dict.fromkeys(k for row in rows if isinstance(row, dict) for k in row))
    if mapping.text not in columns:
        notes.append(f"no {mapping.text!r} column; columns found: {columns}. Choose the text column.")
    frame = pd.DataFrame([row for row in rows if isinstance(row, dict)], columns=columns)
    delimiter = file_delimiter(path, encoding, f".{fmt}") if fmt in ("csv", "tsv") else None
    return ImportPreview(frame, columns, encoding, notes, delimiter)


def guess_mapping(columns: list[str], frame: pd.DataFrame | None = None) -> ColumnMapping:
    """A starting mapping for the UI: conventional names, else the column with the longest texts."""
    lower = {c.lower(): c for c in columns}

    def pick(*names: str) -> str | None:
        return next((lower[n] for n in names if n in lower), None)

    text = pick("text", "body", "content", "document", "sentence", "abstract", "review")
    if text is None and frame is not None and len(frame.columns):
        text = max(frame.columns, key=lambda c: frame[c].astype(str).str.len().mean())
    return ColumnMapping(
        text=text or "text",
        id=pick("id", "doc_id", "document_id", "uid"),
        labels=pick("labels", "label", "tags", "categories"),
        domain=pick("domain", "split"),
    )


def import_file(
    store: Store,
    project_id: int,
    path,
    *,
    mapping: ColumnMapping | None = None,
    domain: str | None = None,
    label_policy: str = "auto",
    chunk_rows: int = 2000,
) -> ImportReport:
    """Import a file into a project in one transaction and say where every row went (the module
    docstring has the rules; report.summary() says it in words).

    `domain` overrides the file's domain column (default for rows without one: target). Tags on an
    exact repeat of a target row are added to the kept document. The same id with another text (in
    the file, or already in the project), unknown labels and unparseable rows are DataErrors naming
    the row; the project is then left unchanged.
    """
    mapping = mapping or ColumnMapping()
    if label_policy not in LABEL_POLICIES:
        raise DataError(f"label_policy {label_policy!r} is not one of {', '.join(LABEL_POLICIES)}.")
    if domain is not None and domain not in DOMAINS:
        raise DataError(f"domain {domain!r} is not one of {', '.join(DOMAINS)}.")
    project = store.get_project(project_id)
    path = Path(path)
    fmt = check_file(path, max_import_bytes(), MAX_IMPORT_ENV)
    encoding, warning = ("binary", None) if fmt == "parquet" else sniff_encoding(path)
    delimiter = file_delimiter(path, encoding, f".{fmt}") if fmt in ("csv", "tsv") else None
    report = ImportReport(str(path), encoding, delimiter, warnings=[warning] if warning else [])
    with store.transaction(), store.deferred_search_index():
        store.forget_keys()
        state: dict = {"action": None}
        chunks = read_chunks(path, fmt, encoding, chunk_rows, text_column=mapping.text, id_column=mapping.id or "id")
        for rows, columns in chunks:
            _import_chunk(store, project, path.name, fmt, rows, columns, mapping, domain, label_policy, report, state)
        if report.rows_read == 0:
            raise DataError(f"{path.name}: has no data rows. Add at least one document.")
        store.forget_keys()
    return report


def _missing(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and value != value)


def _import_chunk(
    store: Store,
    project: Project,
    name: str,
    fmt: str,
    rows: list,
    columns,
    mapping: ColumnMapping,
    domain: str | None,
    policy: str,
    report: ImportReport,
    state: dict,
) -> None:
    first = report.rows_read + 1
    labels_col = mapping.labels if policy != "ignore" and mapping.labels else _ABSENT
    corpus = validate_rows(
        rows,
        columns,
        name,
        first_row=first,
        text_column=mapping.text,
        id_column=mapping.id or _ABSENT,
        labels_column=labels_col,
        domain_column=_ABSENT if domain else (mapping.domain or _ABSENT),
        default_domain=domain or "target",
        label_names=None if policy == "ignore" else project.labels,
        unique_ids=False,
    )
    if report.rows_read == 0 and (warning := numeric_text_warning(corpus.texts, mapping.text)):
        report.warnings.append(f"{name}: {warning}")
    report.rows_read += len(corpus)
    used = mapping.used()
    if fmt != "txt":
        extra = [c for c in (columns or dict.fromkeys(k for row in rows for k in row)) if c not in used]
        store.add_meta_columns(project.id, extra)
        report.meta_columns += [c for c in extra if c not in report.meta_columns]
    hashes = [content_hash(text) for text in corpus.texts]
    numbers = range(first, first + len(corpus))
    seen = store.remember_keys(list(zip(corpus.ids, numbers, hashes, corpus.domains, strict=True)))
    existing = store.find_ext_docs(project.id, corpus.ids)
    targets = store.target_hashes(project.id, [h for h, d in zip(hashes, corpus.domains, strict=True) if d == "eval"])
    in_chunk: dict[str, tuple[int, str, str]] = {}
    new_rows, attach, attach_meta, tag_ext, tag_ids = [], {}, {}, [], []

    def meta_of(i: int) -> dict:
        return {} if fmt == "txt" else {k: v for k, v in rows[i].items() if k not in used and not _missing(v)}

    def attach_row(i: int, digest: str, gold: list[str]) -> None:
        """Gold labels and metadata for the target documents with this text (merged after the inserts)."""
        attach[digest] = gold
        merged = attach_meta.setdefault(digest, {})
        merged |= {k: v for k, v in meta_of(i).items() if k not in merged}
        report.attached += 1

    for i, (ext, text, labels, dom) in enumerate(
        zip(corpus.ids, corpus.texts, corpus.labels, corpus.domains, strict=True)
    ):
        n, digest, as_tags = first + i, hashes[i], policy == "auto" and dom == "target"
        gold = list(labels) if labels_col in rows[i] and not as_tags else None
        earlier = in_chunk.get(ext) or seen.get(ext)
        if earlier is not None:  # the id appeared before in this file
            if earlier[1] != digest:
                raise DataError(
                    f"{name}: row {n} (id {ext!r}): duplicate id {ext!r} with another text (first used "
                    f"in row {earlier[0]}). Ids must be unique: rename or remove one."
                )
            if dom == "eval" and earlier[2] == "target" and gold is not None:  # an export's gold row
                attach_row(i, digest, gold)
                continue
            report.repeated_in_file += 1
            tag_ext += [(ext, label) for label in labels] if as_tags else []
            continue
        in_chunk[ext] = (n, digest, dom)
        if ext in existing:
            doc_id, digest_there, dom_there = existing[ext]
            if digest_there == digest and dom == "eval" and dom_there == "target" and gold is not None:
                attach_row(i, digest, gold)
                continue
            if digest_there == digest:
                report.repeated_in_project += 1
                tag_ids += [(doc_id, label) for label in labels] if as_tags and dom_there == "target" else []
                continue
            generated = fmt == "txt" or not str(rows[i].get(mapping.id or _ABSENT) or "").strip()
            if not generated:
                raise DataError(
                    f"{name}: row {n} (id {ext!r}): the project already has a different "
                    "document with this id. Give the row a new id, or remove it."
                )
            ext = _free_id(store, project.id, ext)
        if dom == "eval" and gold is not None and digest in targets:
            attach_row(i, digest, gold)
            continue
        new_rows.append((ext, dom, text, meta_of(i), gold, digest))
        if dom == "target":
            targets.add(digest)
        tag_ext += [(ext, label) for label in labels] if as_tags else []
        report.gold_rows += gold is not None
        report.by_domain[dom] += 1
    store.insert_documents(project.id, new_rows)
    store.attach_gold(project.id, attach)
    merged = store.merge_meta(project.id, attach_meta)
    report.meta_added, report.meta_kept = report.meta_added + merged.added, report.meta_kept + merged.kept
    docs = store.find_ext_docs(project.id, [ext for ext, _ in tag_ext])
    tag_ids += [(docs[ext][0], label) for ext, label in tag_ext if docs.get(ext, "??")[2] == "target"]
    created, state["action"] = store.add_tags(project.id, tag_ids, IMPORT_ANNOTATOR, action_id=state["action"])
    report.tags_added += created


def _free_id(store: Store, project_id: int, ext: str) -> str:
    """A generated id (`row-3`, `line-3`) already used by an earlier import becomes `row-3#2` etc."""
    k = 2
    while f"{ext}#{k}" in store.find_ext_ids(project_id, [f"{ext}#{k}"]):
        k += 1
    return f"{ext}#{k}"
