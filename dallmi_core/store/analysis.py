"""Per-run analysis results (a cache keyed by kind and parameters) and per-label decision thresholds.

An analysis is JSON metadata plus named numpy arrays (an .npz blob read with allow_pickle=False, so
a crafted store cannot run code); recomputing it gives the same answer, so it may be dropped at any
time. Thresholds are a user's decision, kept apart, and read by the exporter.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Mapping

import numpy as np

from dallmi_core.errors import DataError
from dallmi_core.store.db import StoreBase, _dumps


def params_hash(params: Mapping) -> str:
    """A stable key for an analysis' parameters (sorted JSON, sha1)."""
    return hashlib.sha1(json.dumps(dict(params), sort_keys=True, default=str).encode()).hexdigest()


def _pack(arrays: Mapping[str, np.ndarray] | None) -> bytes | None:
    if not arrays:
        return None
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return buffer.getvalue()


def _unpack(blob: bytes | None) -> dict[str, np.ndarray]:
    if not blob:
        return {}
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class AnalysisMixin(StoreBase):
    def save_analysis(
        self, run_id: int, kind: str, params: Mapping, meta: Mapping, arrays: Mapping[str, np.ndarray] | None = None
    ) -> None:
        """Store (replace) the analysis `kind` of a run for these parameters."""
        with self.transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO run_analysis (run_id, kind, params_hash, params, meta, arrays, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    kind,
                    params_hash(params),
                    _dumps(dict(params)),
                    _dumps(dict(meta)),
                    _pack(arrays),
                    time.time(),
                ),
            )

    def load_analysis(self, run_id: int, kind: str, params: Mapping) -> tuple[dict, dict[str, np.ndarray]] | None:
        """(meta, arrays) as saved, or None when this analysis was not computed for these parameters."""
        row = self._one(
            "SELECT meta, arrays FROM run_analysis WHERE run_id = ? AND kind = ? AND params_hash = ?",
            (run_id, kind, params_hash(params)),
        )
        return None if row is None else (json.loads(row[0] or "{}"), _unpack(row[1]))

    def drop_analysis(self, run_id: int, kind: str | None = None) -> int:
        """Forget a run's cached analyses (of one kind); returns how many went."""
        where, params = ("AND kind = ?", [kind]) if kind else ("", [])
        with self.transaction():
            return self.conn.execute(f"DELETE FROM run_analysis WHERE run_id = ? {where}", [run_id, *params]).rowcount

    def set_thresholds(self, run_id: int, thresholds: Mapping[str, float]) -> dict[str, float]:
        """Save per-label decision thresholds (in [0, 1]) for a run's exports; returns all saved ones."""
        labels = set(self.get_run(run_id).prediction_labels or self.get_project(self.get_run(run_id).project_id).labels)
        rows = []
        for label, value in thresholds.items():
            if label not in labels:
                raise DataError(f"run {run_id} has no label {label!r}; its labels are {', '.join(sorted(labels))}.")
            value = float(value)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise DataError(f"the threshold of {label!r} must be between 0 and 1, got {value!r}.")
            rows.append((run_id, label, value, time.time()))
        with self.transaction():
            self.conn.executemany("INSERT OR REPLACE INTO run_thresholds VALUES (?, ?, ?, ?)", rows)
        return self.thresholds(run_id)

    def clear_threshold(self, run_id: int, label: str) -> None:
        """Forget a label's saved threshold: its exports go back to the calibration's default."""
        with self.transaction():
            self.conn.execute("DELETE FROM run_thresholds WHERE run_id = ? AND label = ?", (run_id, label))

    def thresholds(self, run_id: int) -> dict[str, float]:
        """The saved per-label thresholds of a run (labels never saved are absent)."""
        rows = self._rows("SELECT label, threshold FROM run_thresholds WHERE run_id = ? ORDER BY label", (run_id,))
        return {r[0]: float(r[1]) for r in rows}
