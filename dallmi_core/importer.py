"""Streaming import of a data file into a project: bounded memory, all or nothing.

Files are read in chunks (CSV/TSV by pandas `chunksize`, JSONL by line, Parquet by record
batches) and every chunk goes through data.py's decoding policy and row validation, so an import
and `read_corpus` accept and reject exactly the same rows with the same messages. The whole import
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

import csv
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from dallmi_core.data import (
    DOMAINS,
    SUPPORTED_SUFFIXES,
    _check_text_column,
    _read_json,
    sniff_encoding,
    validate_rows,
)
from dallmi_core.errors import DataError
from dallmi_core.store import Project, Store, content_hash

LABEL_POLICIES = ("auto", "gold", "ignore")
IMPORT_ANNOTATOR = "import"
_ABSENT = "\x00absent"  # a column name no file has: "this mapping has no such column"
MAX_IMPORT_ENV = "DALLMI_MAX_IMPORT_MB"


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
    path: str
    encoding: str
    rows_read: int = 0
    imported: int = 0
    duplicates_in_file: int = 0
    duplicates_in_project: int = 0
    tags_added: int = 0
    gold_rows: int = 0
    by_domain: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DOMAINS, 0))
    warnings: list[str] = field(default_factory=list)

    @property
    def duplicates_skipped(self) -> int:
        return self.duplicates_in_file + self.duplicates_in_project


class ImportPreview(NamedTuple):
    frame: pd.DataFrame
    columns: list[str]
    encoding: str
    warnings: list[str]


def _check_path(path) -> tuple[Path, str]:
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else f"not found at {path}"
        raise DataError(f"{path.name or path}: {what}. Check the path.")
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path.name}: unsupported file type {suffix or '(no suffix)'!r}; supported: "
                        f"{', '.join(SUPPORTED_SUFFIXES)}. Save it in one of these formats.")
    size, limit = path.stat().st_size, max_import_bytes()
    if size == 0:
        raise DataError(f"{path.name}: is empty (0 bytes). Add at least one document.")
    if size > limit:
        raise DataError(f"{path.name}: is {size:,} bytes, over the import limit of {limit:,} bytes "
                        f"(${MAX_IMPORT_ENV}). Split it into smaller files, or raise the limit.")
    return path, suffix[1:]


def _read_chunks(path: Path, fmt: str, encoding: str, mapping: ColumnMapping, size: int, *,
                 require_text: bool = True) -> Iterator[tuple[list, list[str] | None]]:
    """(rows, columns or None) chunks of at most `size` rows; parsing errors become DataErrors."""
    name = path.name
    if fmt in ("csv", "tsv"):
        sep = "\t" if fmt == "tsv" else ","
        with open(path, encoding=encoding, newline="") as handle:
            try:  # the header first: a wrong delimiter otherwise shows as a confusing parse error
                header = [c.strip() for c in next(csv.reader(handle, delimiter=sep), [])]
            except csv.Error:
                header = None
        if header is not None and not any(header):
            raise DataError(f"{name}: is empty. Add a header row and at least one document.")
        if header is not None and require_text:
            _check_text_column(header, mapping.text, name)
        with open(path, encoding=encoding, newline="") as handle:
            reader = None
            while True:
                try:
                    with warnings.catch_warnings():  # only around pandas: the generator yields below
                        warnings.simplefilter("error", pd.errors.ParserWarning)
                        if reader is None:
                            reader = pd.read_csv(handle, sep=sep, dtype=str, keep_default_na=False,
                                                 index_col=False, chunksize=size)
                        frame = next(reader)
                except StopIteration:
                    return
                except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError,
                        pd.errors.ParserWarning) as exc:
                    raise DataError(
                        f"{name}: could not parse as {fmt.upper()}: {exc}. Check the delimiter and quoting "
                        "(a field with the delimiter, quotes or line breaks must be in double quotes; rows "
                        "need as many fields as the header).") from exc
                frame.columns = [str(c).strip() for c in frame.columns]
                if not frame.empty:
                    yield frame.to_dict("records"), list(frame.columns)
    elif fmt == "parquet":
        yield from _parquet_chunks(path, mapping, size, require_text)
    elif fmt == "json":  # a JSON array cannot be streamed without a streaming parser: use JSONL for big files
        rows, _ = _read_json(path.read_text(encoding=encoding), name, allow_array=True)
        for start in range(0, len(rows), size):
            yield rows[start:start + size], None
    else:  # jsonl, txt: one record per line
        rows: list = []
        with open(path, encoding=encoding, newline="") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                if fmt == "txt":
                    rows.append({mapping.id or "id": f"line-{lineno}", mapping.text: line.strip()})
                else:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{name}: invalid JSON on line {lineno} (column {exc.colno}): "
                                        f"{exc.msg}. Each line must be one JSON object.") from exc
                if len(rows) >= size:
                    yield rows, None
                    rows = []
        if rows:
            yield rows, None


def _parquet_chunks(path: Path, mapping: ColumnMapping, size: int, require_text: bool):
    import pyarrow.parquet as pq

    name = path.name
    with open(path, "rb") as handle:
        head = handle.read(4)
        handle.seek(max(path.stat().st_size - 4, 0))  # a file shorter than 4 bytes has no footer
        if not (head == b"PAR1" and handle.read(4) == b"PAR1"):
            raise DataError(f"{name}: is not a Parquet file (no PAR1 magic bytes). Export it again as "
                            "Parquet, or give it the suffix of its real format.")
    try:
        parquet = pq.ParquetFile(path)
        columns = [str(c) for c in parquet.schema_arrow.names]
        if require_text:
            _check_text_column(columns, mapping.text, name)
        for batch in parquet.iter_batches(batch_size=size):  # row group by row group
            yield batch.to_pylist(), columns
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises many types for corrupt files
        raise DataError(f"{name}: is not a readable Parquet file ({exc}). Export it again.") from exc


def preview_import(path, mapping: ColumnMapping | None = None, n: int = 20) -> ImportPreview:
    """The first `n` rows as read (no validation), to choose the column mapping; the encoding is
    sniffed from the first MiB only (the import checks the whole file)."""
    mapping = mapping or ColumnMapping()
    path, fmt = _check_path(path)
    encoding, warning = ("binary", None) if fmt == "parquet" else sniff_encoding(path, limit=1 << 20)
    notes = [warning] if warning else []
    rows, columns = next(_read_chunks(path, fmt, encoding, mapping, n, require_text=False), ([], None))
    rows = rows[:n]
    columns = columns or list(dict.fromkeys(k for row in rows if isinstance(row, dict) for k in row))
    if mapping.text not in columns:
        notes.append(f"no {mapping.text!r} column; columns found: {columns}. Choose the text column.")
    frame = pd.DataFrame([row for row in rows if isinstance(row, dict)], columns=columns)
    return ImportPreview(frame, columns, encoding, notes)


def guess_mapping(columns: list[str], frame: pd.DataFrame | None = None) -> ColumnMapping:
    """A starting mapping for the UI: conventional names, else the column with the longest texts."""
    lower = {c.lower(): c for c in columns}

    def pick(*names: str) -> str | None:
        return next((lower[n] for n in names if n in lower), None)

    text = pick("text", "body", "content", "document", "sentence", "abstract", "review")
    if text is None and frame is not None and len(frame.columns):
        text = max(frame.columns, key=lambda c: frame[c].astype(str).str.len().mean())
    return ColumnMapping(text=text or "text", id=pick("id", "doc_id", "document_id", "uid"),
                         labels=pick("labels", "label", "tags", "categories"), domain=pick("domain", "split"))


def import_file(store: Store, project_id: int, path, *, mapping: ColumnMapping | None = None,
                domain: str | None = None, label_policy: str = "auto", chunk_rows: int = 2000) -> ImportReport:
    """Import a file into a project in one transaction and say what happened.

    `domain` overrides the file's domain column (default for rows without one: target). Duplicates
    (same normalised text, see store.content_hash) within the file or already in the project are
    skipped and counted; tags on a skipped target row are added to the kept target document.
    Duplicate ids in the file, an id the project already uses for other text, unknown labels and
    unparseable rows are DataErrors naming the row; the project is then left unchanged.
    """
    mapping = mapping or ColumnMapping()
    if label_policy not in LABEL_POLICIES:
        raise DataError(f"label_policy {label_policy!r} is not one of {', '.join(LABEL_POLICIES)}.")
    if domain is not None and domain not in DOMAINS:
        raise DataError(f"domain {domain!r} is not one of {', '.join(DOMAINS)}.")
    project = store.get_project(project_id)
    path, fmt = _check_path(path)
    encoding, warning = ("binary", None) if fmt == "parquet" else sniff_encoding(path)
    report = ImportReport(str(path), encoding, warnings=[warning] if warning else [])
    with store.transaction(), store.deferred_search_index():
        store.forget_keys()
        state = {"base": store.max_document_id(), "action": None}
        for rows, columns in _read_chunks(path, fmt, encoding, mapping, chunk_rows):
            _import_chunk(store, project, path.name, fmt, rows, columns, mapping, domain, label_policy, report, state)
        if report.rows_read == 0:
            raise DataError(f"{path.name}: has no data rows. Add at least one document.")
        store.forget_keys()
    return report


def _import_chunk(store: Store, project: Project, name: str, fmt: str, rows: list, columns, mapping: ColumnMapping,
                  domain: str | None, policy: str, report: ImportReport, state: dict) -> None:
    first = report.rows_read + 1
    labels_col = mapping.labels if policy != "ignore" and mapping.labels else _ABSENT
    corpus = validate_rows(
        rows, columns, name, first_row=first, text_column=mapping.text, id_column=mapping.id or _ABSENT,
        labels_column=labels_col, domain_column=_ABSENT if domain else (mapping.domain or _ABSENT),
        default_domain=domain or "target", label_names=None if policy == "ignore" else project.labels)
    report.rows_read += len(corpus)
    numbers = range(first, first + len(corpus))
    seen = store.remember_keys(list(zip(corpus.ids, numbers, strict=True)))
    for ext, n in zip(corpus.ids, numbers, strict=True):
        if ext in seen:
            raise DataError(f"{name}: row {n} (id {ext!r}): duplicate id {ext!r} (first used in row {seen[ext]}). "
                            "Ids must be unique: rename or remove one.")
    hashes = [content_hash(text) for text in corpus.texts]
    known, taken = store.find_hashes(project.id, hashes), store.find_ext_ids(project.id, corpus.ids)
    new_rows, batch, tag_new, tag_dupes, used = [], set(), [], [], mapping.used()
    for i, (ext, text, labels, dom) in enumerate(zip(corpus.ids, corpus.texts, corpus.labels, corpus.domains,
                                                     strict=True)):
        as_tags = policy == "auto" and dom == "target"
        digest = hashes[i]
        if digest in batch or digest in known:
            in_file = digest in batch or known[digest][0] > state["base"]
            report.duplicates_in_file += in_file
            report.duplicates_in_project += not in_file
            if as_tags and labels:
                tag_dupes += [(digest, label) for label in labels]
            continue
        if ext in taken:
            generated = fmt == "txt" or not str(rows[i].get(mapping.id or _ABSENT) or "").strip()
            if not generated:
                raise DataError(f"{name}: row {first + i} (id {ext!r}): the project already has a different "
                                "document with this id. Give the row a new id, or remove it.")
            ext = _free_id(store, project.id, ext)
        gold = list(labels) if labels_col in rows[i] and not as_tags else None
        meta = {k: v for k, v in rows[i].items() if k not in used and v not in (None, "") and fmt != "txt"}
        new_rows.append((ext, dom, text, meta, gold, digest))
        batch.add(digest)
        tag_new += [(ext, label) for label in labels] if as_tags else []
        report.gold_rows += gold is not None
        report.by_domain[dom] += 1
    store.insert_documents(project.id, new_rows)
    report.imported += len(new_rows)
    ids = store.find_ext_ids(project.id, [ext for ext, _ in tag_new])
    kept = store.find_hashes(project.id, [digest for digest, _ in tag_dupes])
    pairs = [(ids[ext], label) for ext, label in tag_new]
    pairs += [(kept[d][0], label) for d, label in tag_dupes if kept[d][1] == "target"]
    created, state["action"] = store.add_tags(project.id, pairs, IMPORT_ANNOTATOR, action_id=state["action"])
    report.tags_added += created


def _free_id(store: Store, project_id: int, ext: str) -> str:
    """A generated id (`row-3`, `line-3`) already used by an earlier import becomes `row-3#2` etc."""
    k = 2
    while f"{ext}#{k}" in store.find_ext_ids(project_id, [f"{ext}#{k}"]):
        k += 1
    return f"{ext}#{k}"
