"""One chunked reader for every supported format, shared by read_corpus and the streaming import.

Both callers get the same rows and the same parse errors; only what they do with the chunks
differs (read_corpus keeps them all, the importer stores each and lets it go, so memory stays
flat). The encoding is decided beforehand by textfile.sniff_encoding, the one decoding policy.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from dallmi_core.data.textfile import file_delimiter
from dallmi_core.errors import DataError

SUPPORTED_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt")


def check_file(path: Path, max_bytes: int | None, limit_env: str | None = None) -> str:
    """The checks every read starts with (a file, supported, not empty, not too big); its format.

    `limit_env` names the variable that sets the import's size limit, so the message says how to raise it.
    """
    name = path.name or str(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        what = "is a directory, not a file. Choose a data file inside it" if path.is_dir() else f"not found at {path}"
        raise DataError(f"{name}: {what}. Check the path.")
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"{name}: unsupported file type {suffix or '(no suffix)'!r}; supported: "
            f"{', '.join(SUPPORTED_SUFFIXES)}. Save it in one of these formats."
        )
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{name}: is empty (0 bytes). Add at least one document.")
    if max_bytes is not None and size > max_bytes:
        raise DataError(
            f"{name}: is {size:,} bytes, over the {'import ' if limit_env else ''}limit of {max_bytes:,} bytes"
            f"{f' (${limit_env})' if limit_env else ''}. "
            "Split it into smaller files, or raise the limit."
        )
    return suffix[1:]


def _delimiter_hint(columns: Sequence[str]) -> str:
    if len(columns) != 1:
        return ""
    for sep, name in ((";", "';'"), ("\t", "a tab"), (",", "','")):
        if sep in columns[0]:
            return (
                f" The header contains {name}: the file may use another delimiter; save it "
                "comma-separated as .csv or tab-separated as .tsv."
            )
    return ""


def check_text_column(columns: Sequence[str], text_column: str, source: str) -> None:
    """A missing text column, with a hint when the header looks split by another delimiter."""
    if text_column not in columns:
        raise DataError(
            f"{source}: no {text_column!r} column; columns found: {list(columns)}."
            f"{_delimiter_hint(columns)} Add a {text_column!r} column "
            "(one document per row) or pass text_column=... ."
        )


def read_json_text(text: str, name: str, allow_array: bool) -> list:
    """A JSON array (for .json) or one object per line; an array cannot be streamed."""
    stripped = text.strip()
    if allow_array and stripped.startswith("["):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{name}: invalid JSON at line {exc.lineno}, column {exc.colno}: "
                f"{exc.msg}. Fix the JSON or save one object per line."
            ) from exc
    return [row for lineno, line in enumerate(text.split("\n"), start=1) if (row := _json_line(line, lineno, name))]


def _json_line(line: str, lineno: int, name: str):
    """One JSONL record, or None for a blank line."""
    if not line.strip():
        return None
    try:
        return [json.loads(line)]
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{name}: invalid JSON on line {lineno} (column {exc.colno}): {exc.msg}. Each line must be one JSON object."
        ) from exc


def read_chunks(
    path: Path,
    fmt: str,
    encoding: str,
    size: int,
    *,
    text_column: str,
    id_column: str,
    require_text: bool = True,
) -> Iterator[tuple[list, list[str] | None]]:
    """(rows, columns or None) chunks of at most `size` rows; parsing errors become DataErrors.

    `fmt` is the suffix without its dot; `require_text=False` (a preview) skips the text-column
    check so the user can pick the column. TXT rows get ids from physical line numbers.
    """
    if fmt in ("csv", "tsv"):
        yield from _delimited_chunks(path, fmt, encoding, size, text_column, require_text)
    elif fmt == "parquet":
        yield from _parquet_chunks(path, size, text_column, require_text)
    elif fmt == "json":
        rows = read_json_text(path.read_text(encoding=encoding), path.name, allow_array=True)
        for start in range(0, len(rows), size):
            yield rows[start : start + size], None
    else:  # jsonl, txt: one record per line
        rows: list = []
        with open(path, encoding=encoding, newline="") as handle:
            for lineno, line in enumerate(handle, start=1):
                if fmt == "txt":
                    rows += [{id_column: f"line-{lineno}", text_column: line.strip()}] if line.strip() else []
                else:
                    rows += _json_line(line, lineno, path.name) or []
                if len(rows) >= size:
                    yield rows, None
                    rows = []
        if rows:
            yield rows, None


def _delimited_chunks(path: Path, fmt: str, encoding: str, size: int, text_column: str, require_text: bool):
    name = path.name
    sep = file_delimiter(path, encoding, f".{fmt}")
    with open(path, encoding=encoding, newline="") as handle:
        try:  # the header first: a wrong delimiter otherwise shows as a confusing parse error
            header = [c.strip() for c in next(csv.reader(handle, delimiter=sep), [])]
        except csv.Error:
            header = None  # let pandas report it with its line number
    if header is not None and not any(header):
        raise DataError(f"{name}: is empty. Add a header row and at least one document.")
    if header is not None and require_text:
        check_text_column(header, text_column, name)
    with open(path, encoding=encoding, newline="") as handle:
        reader = None
        while True:
            try:
                with warnings.catch_warnings():  # only around pandas: the generator yields below
                    warnings.simplefilter("error", pd.errors.ParserWarning)
                    if reader is None:
                        reader = pd.read_csv(
                            handle, sep=sep, dtype=str, keep_default_na=False, index_col=False, chunksize=size
                        )
                    frame = next(reader)
            except StopIteration:
                return
            except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, pd.errors.ParserWarning) as exc:
                raise DataError(
                    f"{name}: could not parse as {fmt.upper()}: {exc}. Check the delimiter and quoting "
                    "(a field with the delimiter, quotes or line breaks must be in double quotes; rows "
                    "need as many fields as the header)."
                ) from exc
            frame.columns = [str(c).strip() for c in frame.columns]
            if not frame.empty:
                yield frame.to_dict("records"), list(frame.columns)


def _parquet_chunks(path: Path, size: int, text_column: str, require_text: bool):
    import pyarrow.parquet as pq

    name = path.name
    with open(path, "rb") as handle:
        head = handle.read(4)
        handle.seek(max(path.stat().st_size - 4, 0))  # a file shorter than 4 bytes has no footer
        if not (head == b"PAR1" and handle.read(4) == b"PAR1"):
            raise DataError(
                f"{name}: is not a Parquet file (no PAR1 magic bytes). Export it again as "
                "Parquet, or give it the suffix of its real format."
            )
    try:
        parquet = pq.ParquetFile(path)
        columns = [str(c) for c in parquet.schema_arrow.names]
        if require_text:
            check_text_column(columns, text_column, name)
        for batch in parquet.iter_batches(batch_size=size):  # row group by row group
            yield batch.to_pylist(), columns
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises many types for corrupt files
        raise DataError(f"{name}: is not a readable Parquet file ({exc}). Export it again.") from exc
