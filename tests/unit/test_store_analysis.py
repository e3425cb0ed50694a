"""The per-run analysis cache and the saved thresholds (store/analysis.py, migration 4)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from dallmi_core.errors import DataError
from dallmi_core.store import MIGRATIONS, Store


@pytest.fixture()
def store(tmp_path):
    with Store(tmp_path / "s.db") as store:
        yield store


def _run(store) -> int:
    project = store.create_project("p", ["a", "b"])
    return store.enqueue_run(project.id, "adapt", {})


def test_analysis_round_trips_by_kind_and_parameters(store):
    run_id = _run(store)
    coords = np.arange(6, dtype=np.float32).reshape(3, 2)
    store.save_analysis(run_id, "shift", {"projection": "pca", "limit": 2}, {"n": 3}, {"coords": coords})
    meta, arrays = store.load_analysis(run_id, "shift", {"limit": 2, "projection": "pca"})  # key order is free
    assert meta == {"n": 3} and np.array_equal(arrays["coords"], coords) and arrays["coords"].dtype == np.float32
    assert store.load_analysis(run_id, "shift", {"projection": "tsne", "limit": 2}) is None
    store.save_analysis(run_id, "shift", {"projection": "pca", "limit": 2}, {"n": 4})  # replaces
    assert store.load_analysis(run_id, "shift", {"projection": "pca", "limit": 2}) == ({"n": 4}, {})
    assert store.drop_analysis(run_id) == 1


def test_a_pickled_blob_is_refused_not_run(store):
    run_id = _run(store)
    store.save_analysis(run_id, "x", {}, {})
    buffer = io.BytesIO()
    np.savez(buffer, bad=np.array([object()], dtype=object))
    store.conn.execute("UPDATE run_analysis SET arrays = ?", (buffer.getvalue(),))
    with pytest.raises(ValueError, match="allow_pickle"):
        store.load_analysis(run_id, "x", {})


def test_thresholds_are_validated_and_go_with_their_run(store):
    run_id = _run(store)
    assert store.set_thresholds(run_id, {"a": 0.25}) == {"a": 0.25}
    assert store.set_thresholds(run_id, {"b": 1.0, "a": 0.3}) == {"a": 0.3, "b": 1.0}
    with pytest.raises(DataError, match="between 0 and 1"):
        store.set_thresholds(run_id, {"a": float("nan")})
    with pytest.raises(DataError, match="no label 'c'"):
        store.set_thresholds(run_id, {"c": 0.5})
    store.save_analysis(run_id, "x", {}, {})
    store.delete_project(store.get_run(run_id).project_id)
    assert store.table_counts()["run_thresholds"] == 0 and store.table_counts()["run_analysis"] == 0


def test_a_store_from_before_the_analysis_tables_gains_them(tmp_path):
    with Store(tmp_path / "old.db", migrate_to=3) as old:
        assert "run_analysis" not in old.table_counts()
    with Store(tmp_path / "old.db") as new:
        assert new.schema_version == len(MIGRATIONS) and new.table_counts()["run_thresholds"] == 0


def test_a_resumed_run_drops_the_mixup_rows_it_trains_again(store):
    run_id = _run(store)
    for step in (1, 2, 3, 4):
        store.log_mixup_samples(run_id, step, [{"label": "a", "mu": 0.5, "prediction": 0.4, "target": 0.7}])
    assert store.drop_mixup_samples_after(run_id, 2) == 2
    assert [r["step"] for r in store.mixup_samples(run_id)] == [2, 1]
