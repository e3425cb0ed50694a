"""Names never become paths: project names, upload names and export file names with `..`, absolute
paths and NUL bytes stay inside their folders or are refused with a DallmiError."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dallmi_core.app import exporter, importer
from dallmi_core.app.services import open_services
from dallmi_core.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
HOSTILE = ["../../x", "/etc/passwd", "a\x00b", "..", ".", "~/secret", "..\\..\\win", "-rf", "x/../../../y"]


@pytest.fixture()
def svc(tmp_path):
    with open_services(tmp_path / "data", autostart_worker=False) as services:
        yield services


@pytest.mark.parametrize("name", HOSTILE)
def test_project_names_are_never_paths(svc, name):
    project = svc.create_project(name, ["a"])
    run_id = svc.store.enqueue_run(project.id, "score", {})
    svc.store.claim_next_run(1)
    svc.store.finish_run(run_id, "done", metrics={})
    for path in (exporter.export_annotations(svc.store, project.id), exporter.export_run_report(svc.store, run_id)):
        assert path.parent == svc.store.exports_dir and path.is_file()
        assert "\x00" not in path.name and not path.name.startswith((".", "-"))
    sys.path.insert(0, str(REPO))
    from ui import widgets

    stem = widgets.slug(name)  # what the Export page names its downloads
    assert stem and "/" not in stem and "\\" not in stem and "\x00" not in stem and not stem.startswith(".")


@pytest.mark.parametrize("path", ["a\x00b.csv", "../../../no/such/file.csv", "/no/such/abs.csv", "data\x00/../x.tsv"])
def test_import_paths_that_do_not_name_a_file_are_data_errors(svc, path):
    project = svc.create_project("p", ["a"])
    with pytest.raises(DataError, match="not found"):
        importer.import_file(svc.store, project.id, path)
    with pytest.raises(DataError):
        importer.preview_import(path)


def test_model_and_export_paths_with_nul_bytes_are_refused(svc, tmp_path):
    with pytest.raises(ConfigError, match="NUL"):
        svc.create_project("m", [], source_model="model\x00folder")
    project = svc.create_project("p", ["a"])
    with pytest.raises(ConfigError, match="NUL"):
        svc.start_run(project.id, "score", model=str(tmp_path / "m\x00"))
    with pytest.raises(DataError, match="cannot be written"):
        exporter.export_annotations(svc.store, project.id, tmp_path / "out\x00.csv")
    assert svc.store.list_runs(project.id) == [] and [p.name for p in svc.store.list_projects()] == ["p"]


def test_files_over_the_import_cap_are_refused_before_reading(svc, tmp_path, monkeypatch):
    project = svc.create_project("p", ["a"])
    path = tmp_path / "big.csv"
    path.write_text("text\n" + "a document\n" * 20_000)  # 220 kB
    monkeypatch.setenv("DALLMI_MAX_IMPORT_MB", "0.1")
    before = svc.store.content_digest()
    for read in (lambda pid, p: importer.import_file(svc.store, pid, p), lambda _, p: importer.preview_import(p)):
        with pytest.raises(DataError, match=r"big\.csv: is 220,005 bytes, over the import limit of 100,000 bytes"):
            read(project.id, path)
    assert svc.store.content_digest() == before
    monkeypatch.setenv("DALLMI_MAX_IMPORT_MB", "1")
    assert importer.import_file(svc.store, project.id, path).rows_read == 20_000
