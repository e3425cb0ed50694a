"""Property tests: whatever file a user's system exports, the import ends in a correct import or in a
DallmiError naming the file, and after an error the store's content is unchanged.

Hypothesis writes odd and malformed files in every import format (random bytes; CSV/TSV with wrong
delimiters, BOMs, UTF-16 with and without BOM, Latin-1, duplicated or missing columns, blank rows,
ragged rows; JSON/JSONL with non-objects and nested values; Parquet with duplicated columns and
list labels; TXT with every line ending; 1 MB documents; label names with separators and markup;
duplicate ids; projects with 2,000 labels) and imports each into a fresh project of one shared
store. "Unchanged" is checked three ways: row counts per table, `PRAGMA integrity_check` (plus the
FTS index check), and a sha256 over every row of every table (Store.content_digest). Bad model
folders (empty, broken or foreign configs, pickle checkpoints, junk safetensors) must be refused
with a ConfigError before anything is unpickled.

The example counts add up to 580 (`python -m pytest tests/reliability/test_bad_input_properties.py`).
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import pickle
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dallmi_core.app.importer import import_file
from dallmi_core.app.services import Services
from dallmi_core.errors import ConfigError, DallmiError, DataError
from dallmi_core.modeling.model import check_model_dir, load_classifier
from dallmi_core.store import Store, content_hash

SMALL_LABELS = ["billing", "login", "<b>bold</b>", "a,b", "x;y", 'say "hi"', "tab\there", "[l](javascript:alert(1))"]
HUGE_LABELS = [f"label-{i}" for i in range(2000)]
ODD_TEXT = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    "a,b;c\td|e",
    '"quoted" and ""doubled""',
    "line\nbreak",
    "carriage\rreturn",
    "crlf\r\ninside",
    "  padded  ",
    "",
    "   ",
    "NA",
    "null",
    "NaN",
    "0",
    "-1e5",
    "True",
    "\u200b",
    "\ufeffbom inside",
    "é ü ß ñ",
    "😀 emoji",
    "\\",
    "|",
    "a||b",
    "=cmd|' /C calc'!A0",
    "\x0b\x0c vertical",
    "next\x85line",
]
FILE_STEMS = ["data", "my file", "ünïcode", "a;b", "<x>", "x" * 100]
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


class Bench:
    """One store shared by all examples of a module: a protected project, and a counter for names."""

    def __init__(self, root):
        self.root = root
        self.store = Store(root / "dallmi.db")
        base = self.store.create_project("protected", SMALL_LABELS)
        path = root / "base.csv"
        path.write_text("id,text,labels,domain\n1,kept one,billing,target\n2,kept two,login,eval\n", encoding="utf-8")
        import_file(self.store, base.id, path)
        self.counter = itertools.count()
        self.imports = self.errors = 0

    def snapshot(self):
        return self.store.table_counts(), self.store.integrity_check(), self.store.content_digest()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    bench = Bench(tmp_path_factory.mktemp("bad-input"))
    yield bench
    print(f"\nbad input: {bench.imports} files imported, {bench.errors} refused with a DallmiError")
    bench.store.close()


def attempt_import(bench: Bench, name: str, data: bytes, labels, expected_texts=None, **options):
    """Import `data` as file `name` into a fresh project; check the outcome; drop the project."""
    n = next(bench.counter)
    folder = bench.root / f"case-{n}"
    folder.mkdir()
    path = folder / name
    path.write_bytes(data)
    project = bench.store.create_project(f"case {n}", labels)
    before = bench.snapshot()
    assert before[1] == "ok"
    try:
        report = import_file(bench.store, project.id, path, chunk_rows=3, **options)
    except DataError as exc:
        bench.errors += 1
        assert path.name in str(exc), f"the message does not name the file: {exc}"
        assert bench.snapshot() == before, "a failed import changed the store"
    else:
        bench.imports += 1
        check_imported(bench.store, project, report, expected_texts)
    bench.store.delete_project(project.id)
    path.unlink()
    folder.rmdir()


def check_imported(store: Store, project, report, expected_texts) -> None:
    """A correct import: counts agree, texts are non-empty, tags use the project's labels."""
    assert report.rows_read == report.imported + report.repeated + report.attached
    counts = store.count_documents(project.id)
    assert sum(counts.values()) == report.imported == sum(report.by_domain.values())
    docs = [doc for page in store.iter_documents(project.id) for doc in page]
    texts = [doc.text for doc in docs]
    assert all(text and text == text.strip() for text in texts)
    assert len({doc.ext_id for doc in docs}) == len(docs)  # exact repeats were skipped, distinct ids kept
    live = store.annotations(project.id)
    assert len(live) == report.tags_added and {a.label for a in live} <= set(project.labels)
    if expected_texts is not None:  # the file was written faithfully: exactly its texts arrived
        # (U+FEFF opening a file is its byte-order mark, whether or not the writer meant one)
        assert {content_hash(t.lstrip("\ufeff")) for t in texts} == {
            content_hash(t.lstrip("\ufeff")) for t in expected_texts
        }
    assert store.integrity_check() == "ok"


# ---- strategies -------------------------------------------------------------------------------------

text_value = st.one_of(
    st.sampled_from(ODD_TEXT),
    st.text(max_size=30),
    st.text(alphabet=st.characters(codec="latin-1"), max_size=20),
)
id_value = st.one_of(st.none(), st.sampled_from(["1", "2", "a", " 1 ", "", "row-1", "line-2"]), st.integers(-2, 3))


@st.composite
def label_value(draw, labels, clean=False):
    pool = st.sampled_from(labels)
    if not clean:
        pool = st.one_of(pool, st.sampled_from(["sports", "BILLING", " billing ", "", "<i>x</i>"]))
    names = draw(st.lists(pool, max_size=6))
    if len(labels) > 100 and draw(st.integers(0, 4)) == 0:
        names = list(labels)[: draw(st.integers(100, len(labels)))]  # a huge label set on one row
    if draw(st.booleans()):
        return names  # a list: JSON and Parquet keep it; CSV writes its repr
    return draw(st.sampled_from(["|", " | ", "||", ","])).join(names)


@st.composite
def table(draw):
    """(labels, columns, rows): rows are dicts that may miss any column. Half the tables are "clean"
    (known labels, valid domains, non-blank texts) so that many files import and are checked."""
    labels = HUGE_LABELS if draw(st.integers(0, 7)) == 0 else SMALL_LABELS
    clean = draw(st.booleans())
    columns = draw(
        st.lists(st.sampled_from(["text", "id", "labels", "domain", "extra", "Text", " text "]), min_size=1, max_size=5)
    )
    columns = list(dict.fromkeys(["text", *columns] if draw(st.integers(0, 5)) else columns))
    value = {
        "id": id_value,
        "labels": label_value(labels, clean),
        "domain": st.sampled_from(["target", "source", "eval", "TARGET", " eval ", "prod", "", None]),
    }
    if clean:
        value.update(id=st.none(), domain=st.sampled_from(["target", "source", "eval", " eval ", None]))
        value["text"] = text_value.filter(lambda t: t.strip() and t.strip() == t)
    n = draw(st.integers(0, 8))
    rows = []
    for _ in range(n):
        row = {}
        for c in columns:
            if draw(st.integers(0, 6)) or (clean and c == "text"):
                row[c] = draw(value.get(c, text_value))
        rows.append(row)
    if rows and "text" in columns and draw(st.integers(0, 9)) == 0:
        rows[0]["text"] = "word " * 210_000  # a 1 MB single document
    return labels, columns, rows


def cell(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, list) else str(value)


ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "latin-1", "cp1252"]
FAITHFUL = {"utf-8", "utf-8-sig", "utf-16"}  # encodings the reader recognises without guessing


def expected(rows):
    """The texts a faithful import of these rows holds, if it succeeds (rows without one fail it)."""
    return [cell(r["text"]).strip() for r in rows if "text" in r]


@given(data=st.data(), spec=table(), fmt=st.sampled_from(["csv", "tsv", "jsonl", "json", "parquet", "txt"]))
@settings(max_examples=330, **SETTINGS)
def test_structured_files_import_correctly_or_fail_cleanly(bench, data, spec, fmt):
    labels, columns, rows = spec
    stem = data.draw(st.sampled_from(FILE_STEMS))
    faithful = True
    if fmt in ("csv", "tsv"):
        sep = "\t" if fmt == "tsv" else ","
        if data.draw(st.integers(0, 5)) == 0:
            sep, faithful = (";" if sep == "," else ","), False  # the wrong delimiter
        out = io.StringIO()
        ending = data.draw(st.sampled_from(["\n", "\r\n"]))
        writer = csv.writer(out, delimiter=sep, lineterminator=ending)
        if ending == "\n" and any("\r" in cell(row.get(c)) for row in rows for c in columns):
            faithful = False  # csv quotes only the terminator's characters: a bare CR ends the record for any reader
        header = list(columns)
        if data.draw(st.integers(0, 6)) == 0:
            header, faithful = header + header[:1], False  # a duplicated column
        writer.writerow(header)
        for row in rows:
            fields = [cell(row.get(c)) for c in header]
            if data.draw(st.integers(0, 12)) == 0:
                fields, faithful = fields[:-1] or ["", ""], False  # a ragged row
            writer.writerow(fields)
            if data.draw(st.integers(0, 6)) == 0:
                out.write("\n")  # an empty row
        text = out.getvalue()
        encoding = data.draw(st.sampled_from(ENCODINGS))
        faithful &= encoding in FAITHFUL
        payload = text.encode(encoding, errors="replace")
        want = expected(rows) if faithful and "text" in columns else None
    elif fmt in ("jsonl", "json"):
        records: list = list(rows)
        if data.draw(st.integers(0, 8)) == 0:
            records.append(data.draw(st.sampled_from([[1, 2], "just text", 7, None, {"text": {"nested": 1}}])))
            faithful = False
        if fmt == "json":
            payload = json.dumps(records, ensure_ascii=data.draw(st.booleans())).encode()
        else:
            lines = [json.dumps(r, ensure_ascii=data.draw(st.booleans())) for r in records]
            if data.draw(st.integers(0, 5)) == 0:
                lines.insert(data.draw(st.integers(0, len(lines))), "")
            payload = ("\n".join(lines) + "\n").encode(data.draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16"])))
        want = expected(rows) if faithful else None
    elif fmt == "parquet":
        names = list(columns)
        if data.draw(st.integers(0, 6)) == 0:
            names, faithful = names + names[:1], False
        arrays = []
        for c in names:
            values = [row.get(c) for row in rows]
            as_lists = c == "labels" and all(isinstance(v, list) or v is None for v in values)
            arrays.append(
                pa.array(
                    values if as_lists else [None if v is None else cell(v) for v in values],
                    type=pa.list_(pa.string()) if as_lists else pa.string(),
                )
            )
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_arrays(arrays, names=names), buffer)
        payload = buffer.getvalue()
        want = expected(rows) if faithful else None
    else:  # txt: one document per line, every line ending
        ending = data.draw(st.sampled_from(["\n", "\r\n", "\r"]))
        docs = [cell(row.get("text")) for row in rows]
        payload = ending.join(docs).encode(data.draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16"])))
        want = [line.strip() for doc in docs for line in re.split(r"\r\n|\r|\n", doc)]
    if want is not None:
        want = [t for t in want if t]
    attempt_import(bench, f"{stem}.{fmt}", payload, labels, want)


@given(
    payload=st.binary(max_size=3000),
    fmt=st.sampled_from(["csv", "tsv", "jsonl", "json", "parquet", "txt"]),
    prefix=st.sampled_from([b"", codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, b"PAR1", b"text\n"]),
)
@settings(max_examples=150, **SETTINGS)
def test_random_bytes_import_or_fail_cleanly(bench, payload, fmt, prefix):
    attempt_import(bench, f"random.{fmt}", prefix + payload, SMALL_LABELS)


GOOD_ROWS = [
    {"id": "1", "text": "invoice charged twice", "labels": "billing", "domain": "target"},
    {"id": "2", "text": "cannot sign in", "labels": "login", "domain": "eval"},
    {"id": "3", "text": "é accents and 😀", "labels": "", "domain": "source"},
]


def good_file(fmt: str) -> bytes:
    if fmt == "parquet":
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(GOOD_ROWS), buffer)
        return buffer.getvalue()
    if fmt in ("jsonl", "json"):
        return (json.dumps(GOOD_ROWS) if fmt == "json" else "".join(json.dumps(r) + "\n" for r in GOOD_ROWS)).encode()
    if fmt == "txt":
        return "\n".join(r["text"] for r in GOOD_ROWS).encode()
    out = io.StringIO()
    writer = csv.DictWriter(out, list(GOOD_ROWS[0]), delimiter="\t" if fmt == "tsv" else ",")
    writer.writeheader()
    writer.writerows(GOOD_ROWS)
    return out.getvalue().encode()


@given(
    fmt=st.sampled_from(["csv", "tsv", "jsonl", "json", "parquet", "txt"]),
    edits=st.lists(
        st.tuples(st.sampled_from(["flip", "cut", "nul", "dup"]), st.integers(0, 10_000), st.integers(0, 255)),
        min_size=1,
        max_size=4,
    ),
)
@settings(max_examples=70, **SETTINGS)
def test_corrupted_valid_files_import_or_fail_cleanly(bench, fmt, edits):
    data = bytearray(good_file(fmt))
    for op, where, byte in edits:
        at = where % max(len(data), 1)
        if op == "flip" and data:
            data[at] = byte
        elif op == "cut":
            del data[at:]
        elif op == "nul":
            data[at:at] = b"\x00"
        else:
            data[at:at] = data[at : at + 40]
    attempt_import(bench, f"corrupt.{fmt}", bytes(data), SMALL_LABELS)


# ---- model folders ------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates a marker file: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


CONFIGS = {
    "missing": None,
    "not json": "{not json",
    "latin-1 bytes": b"\xff\xfe\x00garbage",
    "a list": "[1, 2]",
    "no model_type": json.dumps({"hidden_size": 32}),
    "unknown model_type": json.dumps({"model_type": "no-such-architecture", "id2label": {"0": "a", "1": "b"}}),
    "bert, wrong sizes": json.dumps(
        {"model_type": "bert", "hidden_size": 7, "num_attention_heads": 3, "id2label": {"0": "a", "1": "b"}}
    ),
}
WEIGHTS = ["none", "pickle", "pickle+junk safetensors", "junk safetensors", "empty safetensors", "a folder"]


@given(config=st.sampled_from(list(CONFIGS)), weights=st.sampled_from(WEIGHTS), extra=st.booleans())
@settings(max_examples=30, **SETTINGS)
def test_bad_model_folders_are_refused_without_unpickling(tmp_path_factory, config, weights, extra):
    root = tmp_path_factory.mktemp("model")
    folder, marker = root / "model", root / "PWNED"
    folder.mkdir()
    content = CONFIGS[config]
    if content is not None:
        (folder / "config.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    if "pickle" in weights:
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    if "junk safetensors" in weights:
        (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{junk..}")
    if weights == "empty safetensors":
        (folder / "model.safetensors").write_bytes(b"")
    if weights == "a folder":
        (folder / "model.safetensors").mkdir()
    if extra:
        (folder / "tokenizer_config.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        check_model_dir(folder)
        load_classifier(folder)  # reached only when the cheap checks pass: the load must refuse
    assert str(info.value)
    # The app process checks without torch: config readable and safetensors present. Folders that pass
    # that cheap check (junk weights, unknown architectures) are refused by the load above, in the worker.
    cheap_refusal = config in ("missing", "not json", "latin-1 bytes") or weights in ("none", "pickle")
    store = Store(root / "dallmi.db")
    try:
        services = Services(store, autostart_worker=False)
        if cheap_refusal:
            with pytest.raises(DallmiError):
                services.create_project("p", ["a", "b"], source_model=str(folder))
            assert store.list_projects() == []
    finally:
        store.close()
    assert not marker.exists(), "a pickle checkpoint was unpickled"
