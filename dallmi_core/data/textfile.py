"""How a text file is read: its encoding and, for delimited files, its delimiter.

One policy for every read (read_corpus and the streamed import both call sniff_encoding): UTF-8 (with
or without a BOM) and UTF-16 by its BOM are taken as they are; any other file is a legacy
8-bit export, most often from Windows or Excel, so Windows-1252 is tried before Latin-1 (Latin-1
decodes every byte, so it would turn smart quotes, dashes and the euro sign into control
characters). charset-normalizer is asked only when Windows-1252 reads as gibberish (a Cyrillic,
Greek or Japanese file): it guesses well across scripts, poorly between Western code pages.
"""

from __future__ import annotations

import codecs
import csv
from pathlib import Path

from dallmi_core.errors import DataError

SAMPLE_BYTES = 1 << 20  # what charset-normalizer and the delimiter sniffer look at
DELIMITERS = ",;\t|"
_NAMES = {"cp1252": "Windows-1252 (cp1252)", "latin-1": "Latin-1"}
_MESS_SLACK = 0.1  # cp1252 wins unless it reads this much messier than charset-normalizer's guess


class EncodingFallbackWarning(UserWarning):
    """A file was not valid UTF-8 and was read in a legacy encoding: characters may look wrong."""


def _fail(name: str, message: str) -> DataError:
    return DataError(f"{name}: {message}")


def _bom_error(name: str, exc: UnicodeDecodeError) -> DataError:
    return _fail(
        name,
        f"its byte-order mark promises {exc.encoding} but the bytes are not ({exc.reason}). Save it again as UTF-8.",
    )


def _nul_error(name: str) -> DataError:
    return _fail(
        name, "contains NUL characters: it is binary, or UTF-16 without a byte-order mark. Save it as UTF-8 text."
    )


def legacy_codec(sample: bytes) -> str:
    """The codec for bytes that are not UTF-8: cp1252 unless it reads as gibberish where
    charset-normalizer finds a coherent text in another code page; Latin-1 as the last resort."""
    from charset_normalizer import from_bytes
    from charset_normalizer.md import mess_ratio

    best = from_bytes(sample).best()
    try:
        mess = mess_ratio(sample.decode("cp1252"), maximum_threshold=1.0)
    except UnicodeDecodeError:  # one of the five bytes cp1252 leaves undefined
        mess = None
    if mess is not None and (best is None or mess <= best.chaos + _MESS_SLACK):
        return "cp1252"
    if best is not None and best.encoding not in ("ascii", "utf_8"):
        return codecs.lookup(best.encoding).name
    return "latin-1"


def fallback_message(name: str, reason: str, at: int, codec: str) -> str:
    return (
        f"{name} is not valid UTF-8 ({reason} at byte {at}); read it as {_NAMES.get(codec, codec)}. "
        "Save it as UTF-8 if characters look wrong."
    )


def _decodes(handle, codec: str, block: int) -> bool:
    handle.seek(0)
    decoder = codecs.getincrementaldecoder(codec)()
    try:
        while chunk := handle.read(block):
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def sniff_encoding(path, *, limit: int | None = None, block: int = 1 << 20) -> tuple[str, str | None]:
    """(codec for open(), warning or None), found by streaming the file (bounded memory). `limit`
    stops after that many bytes (a preview); an import checks the whole file."""
    name = Path(path).name
    with open(path, "rb") as handle:
        chunk = handle.read(block)
        utf16 = chunk.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
        bom = chunk.startswith(codecs.BOM_UTF8)
        codec = "utf-16" if utf16 else "utf-8-sig" if bom else "utf-8"
        decoder, offset = codecs.getincrementaldecoder(codec)(), 0
        while True:
            if not utf16 and b"\x00" in chunk:
                raise _nul_error(name)
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                if utf16 or bom:
                    raise _bom_error(name, exc) from exc
                handle.seek(0)
                legacy = legacy_codec(handle.read(SAMPLE_BYTES))
                if limit is None and not _decodes(handle, legacy, block):
                    legacy = "latin-1"
                return legacy, fallback_message(name, exc.reason, offset + exc.start - pending, legacy)
            offset += len(chunk)
            if not chunk or (limit is not None and offset >= limit):
                return codec, None
            chunk = handle.read(block)


def sniff_delimiter(sample: str, default: str = ",") -> str:
    """The delimiter of a CSV file from its first lines: the only one of , ; tab | in the header,
    else csv.Sniffer's choice among those the header has; `default` when there is none."""
    lines = sample.splitlines()
    header = lines[0] if lines else ""
    found = "".join(d for d in DELIMITERS if d in header)
    if len(found) <= 1:
        return found or default
    if len(lines) > 2 and not sample.endswith(("\n", "\r")):
        lines = lines[:-1]  # a sample cut mid-line would confuse the sniffer
    try:
        return csv.Sniffer().sniff("\n".join(lines[:50]), delimiters=found).delimiter
    except csv.Error:
        return default if default in found else found[0]


def file_delimiter(path, encoding: str, suffix: str) -> str:
    """Tab for .tsv; for .csv whatever sniff_delimiter finds in the first 64 KiB."""
    if suffix == ".tsv":
        return "\t"
    with open(path, encoding=encoding, errors="replace", newline="") as handle:
        return sniff_delimiter(handle.read(SAMPLE_BYTES // 16))
