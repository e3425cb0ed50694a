"""Reading and validating corpora into a typed, immutable Corpus.

Every user mistake becomes a DataError naming the file, the row or column, and the fix, so the
pages and the CLI can show it as-is. Files are decoded by textfile.py's policy (never by pandas'
guessing) and written atomically, so a failed export never leaves half a file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dallmi_core.data.reader import check_file, check_text_column, read_chunks
from dallmi_core.data.textfile import EncodingFallbackWarning, sniff_encoding
from dallmi_core.errors import DataError

LABEL_SEPARATOR = "|"
DOMAINS = ("source", "target", "eval")
_WRITABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class Corpus:
    """Parallel tuples, one entry per document; immutable so it can be shared and cached."""

    ids: tuple[str, ...]
    texts: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]
    domains: tuple[str, ...]

    def __post_init__(self) -> None:
        sizes = {len(self.ids), len(self.texts), len(self.labels), len(self.domains)}
        if len(sizes) != 1:
            raise ValueError(f"Corpus fields differ in length: {sorted(sizes)}")

    def __len__(self) -> int:
        return len(self.ids)

    def label_names(self) -> list[str]:
        return sorted({name for row in self.labels for name in row})

    def subset(self, indices) -> Corpus:
        """Rows by position (ints or a boolean mask), in the order given."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = [int(i) for i in idx.reshape(-1)]
        fields = (self.ids, self.texts, self.labels, self.domains)
        return Corpus(*(tuple(field[i] for i in idx) for field in fields))

    def where_domain(self, domain: str) -> Corpus:
        if domain not in DOMAINS:
            raise DataError(f"unknown domain {domain!r}; use one of {', '.join(DOMAINS)}")
        return self.subset([i for i, d in enumerate(self.domains) if d == domain])

    def label_matrix(self, label_names: Sequence[str]) -> np.ndarray:
        """0/1 float32 [n, L]; an unknown label is an error, never silently dropped."""
        column = {name: j for j, name in enumerate(label_names)}
        out = np.zeros((len(self), len(column)), dtype=np.float32)
        for i, row in enumerate(self.labels):
            for name in row:
                j = column.get(name)
                if j is None:
                    raise DataError(
                        f"row {i + 1} (id {self.ids[i]!r}): unknown label {name!r}; "
                        f"allowed labels: {', '.join(label_names) or '(none)'}. "
                        "Add it to the label set or fix the row."
                    )
                out[i, j] = 1.0
        return out

    def to_frame(self) -> pd.DataFrame:
        labels = [LABEL_SEPARATOR.join(row) for row in self.labels]
        columns = {"id": self.ids, "text": self.texts, "labels": labels, "domain": self.domains}
        return pd.DataFrame({k: list(v) for k, v in columns.items()}, dtype=object)


def _fail(source: str, message: str) -> DataError:
    return DataError(f"{source}: {message}")


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def _scalar_str(value, source: str, where: str, column: str) -> str | None:
    """A cell as stripped text; None when missing. Numbers become their str()."""
    if _missing(value):
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float | np.integer | np.floating | np.bool_):
        return str(value).strip()
    raise _fail(
        source,
        f"{where}: column {column!r} holds a {type(value).__name__}, expected text. Store plain text in this column.",
    )


def _parse_labels(value, source: str, where: str, column: str) -> tuple[str, ...]:
    """'a|b' or a list; strip names, drop duplicates (keep order), reject empty names."""
    if _missing(value):
        return ()
    if isinstance(value, list | tuple | np.ndarray):
        parts = [str(v) for v in value]
        bad = next((p for p in parts if LABEL_SEPARATOR in p), None)
        if bad is not None:
            raise _fail(
                source, f"{where}: label {bad!r} in column {column!r} contains {LABEL_SEPARATOR!r}. Rename the label."
            )
    else:
        text = _scalar_str(value, source, where, column)
        if not text:
            return ()
        parts = text.split(LABEL_SEPARATOR)
    names = [p.strip() for p in parts]
    if any(not n for n in names):
        raise _fail(
            source,
            f"{where}: column {column!r} has an empty label name in "
            f"{value!r}. Separate labels with a single {LABEL_SEPARATOR!r}, "
            "with nothing empty between or around them.",
        )
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class RowRules:
    """How a row is read, the keyword options of validate_rows and read_corpus: the columns that hold
    the text, the id, the labels and the domain, the domain of a row that names none, and the label
    names allowed (None: any)."""

    text_column: str = "text"
    id_column: str = "id"
    labels_column: str = "labels"
    domain_column: str = "domain"
    default_domain: str = "target"
    label_names: Sequence[str] | None = None


def validate_rows(
    rows: Iterable,
    columns: Sequence[str] | None = None,
    source: str = "<records>",
    *,
    first_row: int = 1,
    unique_ids: bool = True,
    **rules,
) -> Corpus:
    """The one validation path: every file format, every import chunk and in-memory records.

    `columns` None (records, JSON) means the union of the rows' keys; `rules` are RowRules' fields.
    `first_row` numbers the rows of a chunk of a larger file (streaming imports), so messages
    and generated ids (`row-<n>`) use the row's position in the whole file. `unique_ids=False`
    leaves repeated ids to the caller (the importer skips exact repeats across the whole file).
    """
    r = RowRules(**rules)
    rows = list(rows)
    if not rows:
        raise _fail(source, "has no data rows. Add at least one document.")
    if r.default_domain not in DOMAINS:
        raise _fail(source, f"default domain {r.default_domain!r} is not one of {', '.join(DOMAINS)}.")
    for n, row in enumerate(rows, start=first_row):
        if not isinstance(row, Mapping):
            raise _fail(
                source,
                f"row {n} is a {type(row).__name__}, not an object with "
                f"a {r.text_column!r} field. Give one object per document.",
            )
    if columns is None:  # records and JSON: the union of keys, in first-seen order
        columns = list(dict.fromkeys(k for row in rows for k in row))
    check_text_column(columns, r.text_column, source)
    twice = next((c for i, c in enumerate(columns) if c in columns[:i]), None)
    if twice is not None:  # one of them would be dropped without a word
        raise _fail(
            source,
            f"column {twice!r} appears more than once (after trimming spaces); columns "
            f"found: {list(columns)}. Rename or remove one of them.",
        )
    allowed = None if r.label_names is None else set(r.label_names)
    out: list[tuple] = []
    seen: dict[str, int] = {}
    for n, row in enumerate(rows, start=first_row):
        given_id = _scalar_str(row.get(r.id_column), source, f"row {n}", r.id_column)
        where = f"row {n} (id {given_id!r})" if given_id else f"row {n}"
        doc_id = given_id or f"row-{n}"
        text = _scalar_str(row.get(r.text_column), source, where, r.text_column)
        if not text:
            raise _fail(source, f"{where}: column {r.text_column!r} is empty. Fill in the text or remove the row.")
        if unique_ids and doc_id in seen:
            raise _fail(
                source,
                f"{where}: duplicate id {doc_id!r} (first used in row "
                f"{seen[doc_id]}). Ids must be unique: rename or remove one.",
            )
        seen[doc_id] = n
        domain = _scalar_str(row.get(r.domain_column), source, where, r.domain_column) or ""
        domain = domain.lower() or r.default_domain
        if domain not in DOMAINS:
            raise _fail(
                source,
                f"{where}: column {r.domain_column!r} has {domain!r}, not one "
                f"of {', '.join(DOMAINS)}. Fix it or leave it empty "
                f"for the default ({r.default_domain!r}).",
            )
        row_labels = _parse_labels(row.get(r.labels_column), source, where, r.labels_column)
        if allowed is not None:
            unknown = next((name for name in row_labels if name not in allowed), None)
            if unknown is not None:
                raise _fail(
                    source,
                    f"{where}: unknown label {unknown!r}; allowed labels: "
                    f"{', '.join(r.label_names) or '(none)'}. Fix the label "
                    "or add it to the project's label set.",
                )
        out.append((doc_id, text, row_labels, domain))
    ids, texts, labels, domains = zip(*out, strict=True)
    return Corpus(ids, texts, labels, domains)


def read_corpus(path, *, max_bytes: int | None = 2_000_000_000, **rules) -> Corpus:
    """Read a corpus file by its suffix; pure (reads only), every bad input a DataError. `rules` are
    RowRules' fields (which columns hold what, the default domain, the allowed label names)."""
    r = RowRules(**rules)
    path = Path(path)
    name = path.name or str(path)
    try:
        fmt = check_file(path, max_bytes)
        rows: list = []
        columns = None
        encoding, warning = ("binary", None) if fmt == "parquet" else sniff_encoding(path)
        if warning:
            warnings.warn(warning, EncodingFallbackWarning, stacklevel=2)
        for chunk, chunk_columns in read_chunks(
            path, fmt, encoding, 10_000, text_column=r.text_column, id_column=r.id_column
        ):
            rows += chunk
            columns = columns or chunk_columns
    except OSError as exc:
        raise _fail(name, f"cannot be read ({exc.strerror or exc}). Check permissions.") from exc
    if not rows and fmt not in ("csv", "tsv", "parquet"):  # blank; a header alone has "no data rows"
        raise _fail(name, "is empty. Add at least one document.")
    return validate_rows(rows, columns, name, **rules)


def _json_records(corpus: Corpus) -> list[dict]:
    """JSON is typed, so labels go out as a list (the reader takes lists or 'a|b')."""
    return [
        {"id": i, "text": t, "labels": list(ls), "domain": d}
        for i, t, ls, d in zip(corpus.ids, corpus.texts, corpus.labels, corpus.domains, strict=True)
    ]


_WRITERS = {  # suffix -> writer(corpus, text handle)
    ".csv": lambda c, h: c.to_frame().to_csv(h, index=False, lineterminator="\n"),
    ".tsv": lambda c, h: c.to_frame().to_csv(h, sep="\t", index=False, lineterminator="\n"),
    ".jsonl": lambda c, h: h.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in _json_records(c)),
    ".json": lambda c, h: json.dump(_json_records(c), h, ensure_ascii=False, indent=1),
}


def write_corpus(corpus: Corpus, path) -> None:
    """Write by suffix to a temp file beside the target, then os.replace: all or nothing."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _WRITABLE_SUFFIXES:
        raise _fail(
            path.name, f"cannot write {suffix or '(no suffix)'!r} files; use one of {', '.join(_WRITABLE_SUFFIXES)}."
        )
    if not path.parent.is_dir():
        raise _fail(path.name, f"folder {path.parent} does not exist. Create it first.")
    # mkstemp files are 0600; keep the old file's mode, else the usual 0644.
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if suffix == ".parquet":
            os.close(fd)
            corpus.to_frame().astype(str).to_parquet(tmp, index=False)
        else:
            with open(fd, "w", encoding="utf-8", newline="") as handle:
                _WRITERS[suffix](corpus, handle)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _fail(path.name, f"cannot be written ({exc.strerror or exc}).") from exc
        raise
