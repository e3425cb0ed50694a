"""Corpus reading/writing: formats round-trip, encodings decode, every bad input says where."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dallmi_core.data import corpus as data
from dallmi_core.data.corpus import (
    DOMAINS,
    Corpus,
    read_corpus,
    validate_rows,
    write_corpus,
)
from dallmi_core.data.textfile import EncodingFallbackWarning
from dallmi_core.errors import DataError

SAMPLE = Corpus(
    ids=("a1", "007", "x y", "NA"),
    texts=(
        'Commas, "quotes" and a\nline break',
        "NA",
        "Ünïcødé — 日本語 | pipe\ttab",
        "12.50",
    ),
    labels=(("cs.LG", "cs.AI"), (), ("cs.CV",), ("NA",)),
    domains=("source", "target", "eval", "target"),
)


def write_text(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def error_of(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        read_corpus(path, **kwargs)
    return str(info.value)


# ---- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_each_format_round_trips(tmp_path, suffix):
    path = tmp_path / f"corpus{suffix}"
    write_corpus(SAMPLE, path)
    assert read_corpus(path) == SAMPLE
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_txt_one_document_per_line(tmp_path):
    path = write_text(tmp_path / "docs.txt", "first doc\n\n  second doc  \r\n   \nthird\n")
    corpus = read_corpus(path, default_domain="source")
    assert corpus.ids == ("line-1", "line-3", "line-5")
    assert corpus.texts == ("first doc", "second doc", "third")
    assert corpus.labels == ((), (), ())
    assert corpus.domains == ("source",) * 3


def test_only_text_column_is_required(tmp_path):
    path = write_text(tmp_path / "t.csv", "text\nhello\nworld\n")
    corpus = read_corpus(path)
    assert corpus.ids == ("row-1", "row-2")
    assert corpus.domains == ("target", "target")
    assert corpus.labels == ((), ())


def test_labels_are_stripped_and_deduplicated_and_na_stays_text(tmp_path):
    path = write_text(
        tmp_path / "t.csv",
        "id,text,labels,domain\n1, NA ,  b | a |b ,\n2,N/A,,eval\n3,x,,\n",
    )
    corpus = read_corpus(path)
    assert corpus.texts == ("NA", "N/A", "x")
    assert corpus.labels == (("b", "a"), (), ())
    assert corpus.domains == ("target", "eval", "target")


def test_custom_columns_and_missing_cells(tmp_path):
    path = write_text(tmp_path / "c.csv", "doc,body,tags\nd1,hello,a|b\nd2,world\n")
    corpus = read_corpus(path, id_column="doc", text_column="body", labels_column="tags")
    assert corpus.ids == ("d1", "d2")
    assert corpus.labels == (("a", "b"), ())


def test_jsonl_numbers_lists_and_nulls(tmp_path):
    lines = [
        {"id": 7, "text": "seven", "labels": ["a", " b ", "a"], "domain": "source"},
        {"id": 8, "text": "eight", "labels": None},
        {"text": "no id", "labels": "c|d"},
    ]
    path = write_text(tmp_path / "d.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    corpus = read_corpus(path)
    assert corpus.ids == ("7", "8", "row-3")
    assert corpus.labels == (("a", "b"), (), ("c", "d"))
    assert corpus.domains == ("source", "target", "target")


def test_json_array(tmp_path):
    path = write_text(tmp_path / "d.json", json.dumps([{"text": "one"}, {"text": "two"}], indent=2))
    assert read_corpus(path).texts == ("one", "two")


def test_parquet_with_list_labels_and_int_ids(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"id": [1, 2], "text": ["a", "b"], "labels": [["x", "y"], []]}).to_parquet(path)
    corpus = read_corpus(path)
    assert corpus.ids == ("1", "2")
    assert corpus.labels == (("x", "y"), ())


def test_label_names_filter_accepts_known_labels(tmp_path):
    path = write_text(tmp_path / "k.csv", "text,labels\nhi,a|b\n")
    assert read_corpus(path, label_names=["a", "b", "c"]).labels == (("a", "b"),)


def test_validate_rows_validates_records_like_files():
    corpus = validate_rows([{"text": "x", "labels": "a"}, {"text": "y"}])
    assert corpus.ids == ("row-1", "row-2")
    with pytest.raises(DataError, match=r"mine: row 2 \(id 'row-1'\): duplicate id 'row-1'.*row 1"):
        validate_rows([{"text": "x"}, {"id": "row-1", "text": "y"}], source="mine")
    with pytest.raises(DataError, match="<records>: has no data rows"):
        validate_rows([])


def test_write_is_atomic_when_the_writer_fails(tmp_path, monkeypatch):
    path = tmp_path / "out.csv"
    write_corpus(SAMPLE, path)
    before = path.read_bytes()

    def boom(corpus, handle):
        handle.write("half a file")
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(data._WRITERS, ".csv", boom)
    with pytest.raises(RuntimeError):
        write_corpus(SAMPLE.subset([0]), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_write_rejects_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match=r"out\.xlsx.*\.csv"):
        write_corpus(SAMPLE, tmp_path / "out.xlsx")
    assert list(tmp_path.iterdir()) == []


# ---- encodings -------------------------------------------------------------------------------

TEXT = "id,text,labels\nd1,Café crème,a\n"


def test_utf8_with_bom(tmp_path):
    path = write_text(tmp_path / "bom.csv", TEXT, "utf-8-sig")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        corpus = read_corpus(path)
    assert corpus.ids == ("d1",)  # the BOM is not glued to the first column name
    assert corpus.texts == ("Café crème",)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_with_bom(tmp_path, encoding):
    raw = TEXT.encode(encoding)
    if encoding != "utf-16":  # the explicit-endian codecs write no BOM: add the matching one
        raw = "\ufeff".encode(encoding) + raw
    path = tmp_path / "u16.csv"
    path.write_bytes(raw)
    assert read_corpus(path).texts == ("Café crème",)


def test_latin1_falls_back_with_warning(tmp_path):
    path = write_text(tmp_path / "legacy.csv", TEXT, "latin-1")
    with pytest.warns(EncodingFallbackWarning, match=r"legacy\.csv"):
        corpus = read_corpus(path)
    assert corpus.texts == ("Café crème",)


def test_utf16_without_bom_is_an_error(tmp_path):
    path = write_text(tmp_path / "nobom.csv", TEXT, "utf-16-le")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clear error, not a Latin-1 guess first
        msg = error_of(path)
    assert "nobom.csv" in msg and "NUL" in msg


def test_utf8_bom_with_invalid_bytes(tmp_path):
    (tmp_path / "liar.csv").write_bytes(b"\xef\xbb\xbftext\nbad \xff byte\n")
    msg = error_of(tmp_path / "liar.csv")
    assert "liar.csv" in msg and "byte-order mark" in msg


# ---- bad inputs: each names the file and where ------------------------------------------------


def test_missing_file(tmp_path):
    msg = error_of(tmp_path / "nowhere.csv")
    assert "nowhere.csv" in msg and "not found" in msg


def test_directory(tmp_path):
    (tmp_path / "folder.csv").mkdir()
    assert "folder.csv: is a directory" in error_of(tmp_path / "folder.csv")


def test_unsupported_suffix(tmp_path):
    msg = error_of(write_text(tmp_path / "book.xlsx", "x"))
    assert "book.xlsx" in msg and "'.xlsx'" in msg and ".parquet" in msg


def test_too_large(tmp_path):
    msg = error_of(write_text(tmp_path / "big.csv", TEXT), max_bytes=10)
    assert "big.csv" in msg and "over the limit" in msg


@pytest.mark.parametrize("content", ["", "  \n\t\n"])
@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".txt"])
def test_empty_file(tmp_path, content, suffix):
    msg = error_of(write_text(tmp_path / f"empty{suffix}", content))
    assert f"empty{suffix}: is empty" in msg


def test_header_without_rows(tmp_path):
    msg = error_of(write_text(tmp_path / "head.csv", "id,text,labels\n"))
    assert "head.csv" in msg and "no data rows" in msg


def test_a_file_of_many_chunks_is_read_whole_and_errors_name_the_file_line(tmp_path):
    rows = "".join(f"{i},text {i}\n" for i in range(25_000))  # read_corpus reads 10,000 rows a chunk
    assert len(read_corpus(write_text(tmp_path / "many.csv", "id,text\n" + rows))) == 25_000
    msg = error_of(write_text(tmp_path / "late.csv", "id,text\n" + rows + "x,too,many\n"))
    assert "late.csv" in msg and "line 25002" in msg


def test_unparseable_csv(tmp_path):
    msg = error_of(write_text(tmp_path / "bad.csv", "id,text\n1,ok\n2,too,many\n"))
    assert "bad.csv" in msg and "could not parse as CSV" in msg and "line 3" in msg


def test_extra_fields_on_every_row_are_not_silently_dropped(tmp_path):
    msg = error_of(write_text(tmp_path / "shift.csv", "id,text\n1,a,b\n2,c,d\n"))
    assert "shift.csv" in msg and "could not parse" in msg


def test_unclosed_quote(tmp_path):
    msg = error_of(write_text(tmp_path / "quote.csv", 'id,text\n1,"never closed\n'))
    assert "quote.csv" in msg and "EOF inside string" in msg


def test_unparseable_jsonl(tmp_path):
    path = write_text(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"text": oops}\n')
    msg = error_of(path)
    assert "bad.jsonl" in msg and "line 2" in msg and "Expecting value" in msg


def test_unparseable_json_array(tmp_path):
    msg = error_of(write_text(tmp_path / "bad.json", '[\n {"text": "a"},\n {"text": }\n]'))
    assert "bad.json" in msg and "line 3" in msg


def test_jsonl_row_that_is_not_an_object(tmp_path):
    msg = error_of(write_text(tmp_path / "list.jsonl", '{"text": "a"}\n[1, 2]\n'))
    assert "list.jsonl: row 2 is a list" in msg


def test_missing_text_column_lists_columns(tmp_path):
    msg = error_of(write_text(tmp_path / "cols.csv", "id,body\n1,hello\n"))
    assert "cols.csv" in msg and "'text'" in msg and "['id', 'body']" in msg


def test_missing_text_column_hints_at_delimiter(tmp_path):
    msg = error_of(write_text(tmp_path / "commas.tsv", "id,text\n1,hello\n"))
    assert "commas.tsv" in msg and "delimiter" in msg and "','" in msg


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("semi.csv", "id;text;labels\n1;hello, world;a\n"),
        ("tabs.csv", "id\ttext\tlabels\n1\thello, world\ta\n"),
        ("pipes.csv", "id|text|labels\n1|hello, world|a\n"),
    ],
)
def test_a_csv_file_s_delimiter_is_sniffed(tmp_path, name, content):
    corpus = read_corpus(write_text(tmp_path / name, content))
    assert (corpus.ids, corpus.texts, corpus.labels) == (("1",), ("hello, world",), (("a",),))


@pytest.mark.parametrize("cell", ["", "   ", '""'])
def test_blank_text(tmp_path, cell):
    path = write_text(tmp_path / "blank.csv", f"id,text\nok,fine\nd2,{cell}\n")
    assert "blank.csv: row 2 (id 'd2'): column 'text' is empty" in error_of(path)


def test_null_text_in_jsonl_is_blank(tmp_path):
    path = write_text(tmp_path / "null.jsonl", '{"text": "a"}\n{"text": null}\n{"id": "z"}\n')
    assert "null.jsonl: row 2: column 'text' is empty" in error_of(path)


def test_nan_text_in_parquet_is_blank(tmp_path):
    path = tmp_path / "nan.parquet"
    pd.DataFrame({"id": ["p", "q"], "text": ["fine", np.nan]}).to_parquet(path)
    assert "nan.parquet: row 2 (id 'q'): column 'text' is empty" in error_of(path)


def test_duplicate_ids(tmp_path):
    path = write_text(tmp_path / "dup.csv", "id,text\nx,one\ny,two\nx,three\n")
    msg = error_of(path)
    assert "dup.csv: row 3 (id 'x'): duplicate id 'x' (first used in row 1)" in msg


def test_bad_domain(tmp_path):
    path = write_text(tmp_path / "dom.csv", "id,text,domain\na,one,target\nb,two,test\n")
    msg = error_of(path)
    assert "dom.csv: row 2 (id 'b')" in msg and "'test'" in msg and "source, target, eval" in msg


def test_domain_is_case_insensitive(tmp_path):
    path = write_text(tmp_path / "dom.csv", "text,domain\none, Source \n")
    assert read_corpus(path).domains == ("source",)


@pytest.mark.parametrize("cell", ["a||b", "a|", "|", " | a"])
def test_empty_label_name(tmp_path, cell):
    path = write_text(tmp_path / "lab.csv", f"id,text,labels\nfine,one,a\nd2,two,{cell}\n")
    msg = error_of(path)
    assert "lab.csv: row 2 (id 'd2')" in msg and "empty label name" in msg


def test_unknown_label_with_label_names(tmp_path):
    path = write_text(tmp_path / "unk.csv", "id,text,labels\na,one,x\nb,two,x|zzz\n")
    msg = error_of(path, label_names=["x", "y"])
    assert "unk.csv: row 2 (id 'b'): unknown label 'zzz'" in msg and "x, y" in msg


def test_not_parquet(tmp_path):
    msg = error_of(write_text(tmp_path / "fake.parquet", TEXT))
    assert "fake.parquet: is not a Parquet file" in msg


def test_corrupt_parquet(tmp_path):
    msg = error_of(write_text(tmp_path / "corrupt.parquet", "PAR1garbagePAR1"))
    assert "corrupt.parquet" in msg and "Parquet" in msg


def test_empty_parquet(tmp_path):
    (tmp_path / "zero.parquet").write_bytes(b"")
    assert "zero.parquet: is empty" in error_of(tmp_path / "zero.parquet")


def test_non_text_cell_in_json(tmp_path):
    path = write_text(tmp_path / "obj.jsonl", '{"id": "q", "text": {"nested": 1}}\n')
    assert "obj.jsonl: row 1 (id 'q'): column 'text'" in error_of(path)


# ---- Corpus ----------------------------------------------------------------------------------


def test_label_matrix_values():
    m = SAMPLE.label_matrix(["cs.AI", "cs.CV", "cs.LG", "NA", "unused"])
    assert m.dtype == np.float32
    expected = [[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0]]
    np.testing.assert_array_equal(m, np.array(expected, dtype=np.float32))


def test_label_matrix_unknown_label():
    with pytest.raises(DataError) as info:
        SAMPLE.label_matrix(["cs.AI", "cs.LG", "NA"])
    assert "row 3 (id 'x y'): unknown label 'cs.CV'" in str(info.value)


def test_corpus_helpers():
    assert len(SAMPLE) == 4
    assert SAMPLE.label_names() == ["NA", "cs.AI", "cs.CV", "cs.LG"]
    assert SAMPLE.subset([2, 0]).ids == ("x y", "a1")
    assert SAMPLE.subset(np.array([False, True, False, True])).ids == ("007", "NA")
    assert SAMPLE.where_domain("target").ids == ("007", "NA")
    assert len(SAMPLE.where_domain("eval")) == 1
    with pytest.raises(DataError, match="unknown domain"):
        SAMPLE.where_domain("test")
    frame = SAMPLE.to_frame()
    assert list(frame.columns) == ["id", "text", "labels", "domain"]
    assert frame["labels"].tolist() == ["cs.LG|cs.AI", "", "cs.CV", "NA"]
    assert set(SAMPLE.domains) <= set(DOMAINS)


def test_corpus_rejects_ragged_fields():
    with pytest.raises(ValueError):
        Corpus(ids=("a",), texts=(), labels=(), domains=())


# ---- property: arbitrary printable texts and label sets round-trip ---------------------------

printable = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp"))
texts = st.text(printable, min_size=1, max_size=40).map(str.strip).filter(bool)
label = st.text(printable, min_size=1, max_size=8).map(str.strip).filter(lambda s: s and "|" not in s)
row = st.tuples(texts, st.lists(label, max_size=4, unique=True).map(tuple), st.sampled_from(DOMAINS))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row, min_size=1, max_size=8))
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_random_corpora_round_trip(tmp_path, suffix, rows):
    corpus = Corpus(
        ids=tuple(f"doc-{i}" for i in range(len(rows))),
        texts=tuple(t for t, _, _ in rows),
        labels=tuple(ls for _, ls, _ in rows),
        domains=tuple(d for _, _, d in rows),
    )
    path = tmp_path / f"random{suffix}"
    write_corpus(corpus, path)
    assert read_corpus(path) == corpus
