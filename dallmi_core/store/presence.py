"""Presence: which processes use a data folder.

Every app process beats into `app_heartbeats` (one row per process: a random token, its pid and
host, when it started and when it was last seen); a worker started by the app reads the newest beat
to know when the app is gone. The worker reports itself into `worker_report` (one row: one worker
per data folder): its pid, state, the run in hand and its resident memory, for the Adapt page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dallmi_core.store.db import StoreBase

APP_ROWS_KEPT_S = 7 * 24 * 3600.0  # app heartbeats older than this are pruned when a new one is written


@dataclass(frozen=True)
class WorkerReport:
    pid: int
    host: str
    started_at: float  # when this worker process started (kept across its fresh interpreters)
    last_seen: float  # when it last reported
    state: str  # idle | running | exited
    run_id: int | None  # the run in hand while running
    rss_bytes: int | None  # resident memory at the report
    app_idle_exit: float | None  # seconds after the last app heartbeat it exits; None: never
    runs_done: int  # runs executed since it started


class PresenceMixin(StoreBase):
    """App heartbeats and the worker's report; composed into Store."""

    def app_heartbeat(self, token: str, pid: int, host: str, *, now: float | None = None) -> None:
        """Record that the app process `token` is alive (now); prunes rows of long-gone processes."""
        now = time.time() if now is None else now
        with self.transaction():
            self.conn.execute(
                "INSERT INTO app_heartbeats (token, pid, host, started_at, last_seen) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (token) DO UPDATE SET last_seen = excluded.last_seen",
                (token, pid, host, now, now),
            )
            self.conn.execute("DELETE FROM app_heartbeats WHERE last_seen < ?", (now - APP_ROWS_KEPT_S,))

    def last_app_heartbeat(self) -> float | None:
        """When any app process last beat for this data folder; None when none ever did."""
        return self._one("SELECT max(last_seen) FROM app_heartbeats")[0]

    def app_heartbeats(self) -> list[dict]:
        """Every app process on record, newest beat first."""
        return [dict(row) for row in self._rows("SELECT * FROM app_heartbeats ORDER BY last_seen DESC")]

    def report_worker(
        self,
        pid: int,
        host: str,
        *,
        started_at: float,
        state: str,
        run_id: int | None = None,
        rss_bytes: int | None = None,
        app_idle_exit: float | None = None,
        runs_done: int = 0,
    ) -> None:
        """The worker's own report (replaces the previous worker's: one worker per data folder)."""
        with self.transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO worker_report (id, pid, host, started_at, last_seen, state, run_id, "
                "rss_bytes, app_idle_exit, runs_done) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (pid, host, started_at, time.time(), state, run_id, rss_bytes, app_idle_exit, runs_done),
            )

    def worker_report(self) -> WorkerReport | None:
        """The last report of this data folder's worker (alive or not: check the lock for that)."""
        row = self._one(
            "SELECT pid, host, started_at, last_seen, state, run_id, rss_bytes, app_idle_exit, runs_done "
            "FROM worker_report WHERE id = 1"
        )
        return None if row is None else WorkerReport(**dict(row))
