"""The schema: numbered forward migrations; PRAGMA user_version is the number applied.

Append only: a migration, once released, never changes (a store opened by a newer app runs the
ones it has not seen, in order, in one transaction).
"""

from __future__ import annotations

import sqlite_utils

RUN_STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")


def _decision_table(table: str, *, by_document: bool) -> str:
    """The DDL of a table of per-(document, label) decisions (the tags, the "reviewed: not" marks):
    soft-deleted, each row linked to the action that made it and the one that removed it, one live
    row per pair."""
    document_index = f"\n    CREATE INDEX {table}_document ON {table}(document_id);" if by_document else ""
    return f"""
    CREATE TABLE {table} (id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        label TEXT NOT NULL, annotator TEXT NOT NULL, created_at REAL NOT NULL, deleted_at REAL,
        action_id INTEGER REFERENCES annotation_actions(id) ON DELETE SET NULL,
        deleted_action_id INTEGER REFERENCES annotation_actions(id) ON DELETE SET NULL);
    CREATE UNIQUE INDEX {table}_live ON {table}(document_id, label) WHERE deleted_at IS NULL;{document_index}
    CREATE INDEX {table}_project ON {table}(project_id, label);
    CREATE INDEX {table}_action ON {table}(action_id);
    CREATE INDEX {table}_deleted_action ON {table}(deleted_action_id);
    """


def _m1_core(db: sqlite_utils.Database) -> None:
    db.executescript("""
    CREATE TABLE projects (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        labels TEXT NOT NULL, source_model TEXT, settings TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL);
    CREATE TABLE documents (id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE, ext_id TEXT NOT NULL,
        domain TEXT NOT NULL CHECK (domain IN ('source', 'target', 'eval')), text TEXT NOT NULL,
        meta TEXT, gold_labels TEXT, content_hash TEXT NOT NULL, UNIQUE (project_id, ext_id));
    CREATE INDEX documents_hash ON documents(project_id, content_hash);
    CREATE INDEX documents_domain ON documents(project_id, domain);
    CREATE TABLE annotation_actions (id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE, annotator TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('tag', 'untag')), created_at REAL NOT NULL, undone_at REAL);
    CREATE INDEX actions_annotator ON annotation_actions(project_id, annotator, id);
    """ + _decision_table("annotations", by_document=True))


def _m2_fts(db: sqlite_utils.Database) -> None:
    db["documents"].enable_fts(["text"], create_triggers=True, tokenize="unicode61 remove_diacritics 2")
    # The insert trigger can be deferred by a bulk load (see Store.deferred_search_index).
    db.executescript("""
    CREATE TABLE fts_deferred (id INTEGER PRIMARY KEY CHECK (id = 1));
    DROP TRIGGER documents_ai;
    CREATE TRIGGER documents_ai AFTER INSERT ON documents WHEN NOT EXISTS (SELECT 1 FROM fts_deferred) BEGIN
      INSERT INTO documents_fts (rowid, text) VALUES (new.rowid, new.text);
    END;
    """)


def _m3_runs(db: sqlite_utils.Database) -> None:
    statuses = ", ".join(f"'{s}'" for s in RUN_STATUSES)
    db.executescript(f"""
    CREATE TABLE runs (id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE, kind TEXT NOT NULL,
        config TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ({statuses})),
        progress TEXT, heartbeat_at REAL, worker_pid INTEGER, cancel_requested INTEGER NOT NULL DEFAULT 0,
        error TEXT, model_path TEXT, checkpoint_dir TEXT, metrics TEXT, labels TEXT,
        attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL, finished_at REAL);
    CREATE INDEX runs_status ON runs(status, id);
    CREATE INDEX runs_project ON runs(project_id, id);
    CREATE TABLE run_metrics (run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        step INTEGER NOT NULL, name TEXT NOT NULL, value REAL);
    CREATE INDEX run_metrics_run ON run_metrics(run_id, name, step);
    CREATE TABLE predictions (run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        scores BLOB NOT NULL, PRIMARY KEY (run_id, document_id)) WITHOUT ROWID;
    CREATE INDEX predictions_document ON predictions(document_id);
    CREATE TABLE mixup_samples (id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE, step INTEGER NOT NULL,
        label TEXT NOT NULL, positive_doc INTEGER, unlabeled_doc INTEGER, mu REAL, prediction REAL,
        target REAL);
    CREATE INDEX mixup_run ON mixup_samples(run_id, step);
    """)


def _m4_run_analysis(db: sqlite_utils.Database) -> None:
    """Cached per-run analyses (insight pages) and per-label thresholds saved for export."""
    db.executescript("""
    CREATE TABLE run_analysis (run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        kind TEXT NOT NULL, params_hash TEXT NOT NULL, params TEXT NOT NULL, meta TEXT NOT NULL,
        arrays BLOB, created_at REAL NOT NULL, PRIMARY KEY (run_id, kind, params_hash)) WITHOUT ROWID;
    CREATE TABLE run_thresholds (run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        label TEXT NOT NULL, threshold REAL NOT NULL CHECK (threshold BETWEEN 0 AND 1), saved_at REAL NOT NULL,
        PRIMARY KEY (run_id, label)) WITHOUT ROWID;
    """)


def _m5_presence(db: sqlite_utils.Database) -> None:
    """Who uses the data folder: one heartbeat row per app process, and the report of its worker
    (one row: one worker per data folder), so a worker started by the app can exit once the app is gone."""
    db.executescript("""
    CREATE TABLE app_heartbeats (token TEXT PRIMARY KEY, pid INTEGER NOT NULL, host TEXT NOT NULL,
        started_at REAL NOT NULL, last_seen REAL NOT NULL) WITHOUT ROWID;
    CREATE INDEX app_heartbeats_seen ON app_heartbeats(last_seen);
    CREATE TABLE worker_report (id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER NOT NULL,
        host TEXT NOT NULL, started_at REAL NOT NULL, last_seen REAL NOT NULL, state TEXT NOT NULL,
        run_id INTEGER, rss_bytes INTEGER, app_idle_exit REAL, runs_done INTEGER NOT NULL DEFAULT 0);
    """)


def _m6_meta_columns(db: sqlite_utils.Database) -> None:
    """A project's metadata column names (a file's extra columns, kept in documents.meta) in the order
    first imported, so exports write them back as columns; filled from the documents already stored.
    The search index follows the text only: an update of gold labels or meta (an eval file attaching
    gold to a target document, perhaps while the index of a bulk load is deferred) leaves it alone."""
    db.executescript("""
    DROP TRIGGER documents_au;
    CREATE TRIGGER documents_au AFTER UPDATE OF text ON documents BEGIN
      INSERT INTO documents_fts (documents_fts, rowid, text) VALUES ('delete', old.rowid, old.text);
      INSERT INTO documents_fts (rowid, text) VALUES (new.rowid, new.text);
    END;
    CREATE TABLE meta_columns (project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        name TEXT NOT NULL, position INTEGER NOT NULL, PRIMARY KEY (project_id, name)) WITHOUT ROWID;
    INSERT INTO meta_columns (project_id, name, position)
        SELECT project_id, key, row_number() OVER (PARTITION BY project_id ORDER BY first_doc, first_node) - 1
        FROM (SELECT d.project_id, j.key AS key, min(d.id) AS first_doc, min(j.id) AS first_node
              FROM documents d, json_each(d.meta) j WHERE json_type(d.meta) = 'object'
              GROUP BY d.project_id, j.key);
    """)


def _m7_run_traceback(db: sqlite_utils.Database) -> None:
    """A crashed run's full traceback beside its one-line error, so a bug can be found from the store."""
    db.executescript("ALTER TABLE runs ADD COLUMN traceback TEXT;")


def _m8_run_active_time(db: sqlite_utils.Database) -> None:
    """A run's active time: the seconds its finished attempts ran (active_s) and when the current one began
    (attempt_started_at, while it runs), so the time it sat paused or queued between attempts is not
    counted. A run of one attempt ran from started_at to its last report (heartbeat_at); what earlier
    attempts of a resumed run took was never stored: NULL, unknown."""
    db.executescript("""
    ALTER TABLE runs ADD COLUMN active_s REAL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN attempt_started_at REAL;
    UPDATE runs SET
        active_s = CASE WHEN attempts = 0 THEN 0
            WHEN attempts = 1 AND status = 'running' THEN 0
            WHEN attempts = 1 THEN max(coalesce(heartbeat_at, started_at) - started_at, 0) END,
        attempt_started_at = CASE WHEN attempts = 1 AND status = 'running' THEN started_at END;
    """)


def _m9_metric_stage(db: sqlite_utils.Database) -> None:
    """The training stage each series row was logged in (a fine-tuning's head warm-up, then the
    fine-tuning, both counting steps from 1), so a chart draws each stage on its own step axis and a
    resumed stage drops only its own rows. Older rows: the warm-up's probe_loss, else the run's kind
    (the name of its one training stage)."""
    db.executescript("""
    ALTER TABLE run_metrics ADD COLUMN stage TEXT;
    UPDATE run_metrics SET stage = CASE WHEN name = 'probe_loss' THEN 'probe-head'
        ELSE (SELECT kind FROM runs WHERE runs.id = run_metrics.run_id) END;
    """)


def _m10_label_reviews(db: sqlite_utils.Database) -> None:
    """The "reviewed: not <label>" decisions, kept apart from the tags: a document a user looked at and
    said does not carry the label. Never a training negative (PU adaptation trains on the tags and the
    unlabeled rest); they measure. Soft-deleted and undone like tags: `action_id` is the action that
    made the mark, `deleted_action_id` the one that removed it, and a live (document, label) pair is
    unique. An action may now change tags and marks together (kind 'tag' when it adds anything)."""
    db.executescript(_decision_table("label_reviews", by_document=False))


# append only: the index + 1 is the schema version
MIGRATIONS = (
    _m1_core,
    _m2_fts,
    _m3_runs,
    _m4_run_analysis,
    _m5_presence,
    _m6_meta_columns,
    _m7_run_traceback,
    _m8_run_active_time,
    _m9_metric_stage,
    _m10_label_reviews,
)
