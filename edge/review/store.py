"""The review records kept in a session's queue.sqlite: archives exported and the label audit.

The audit trail is append-only: SQLite triggers refuse any UPDATE or DELETE on
it, so a label is changed only by appending a row with its before and after.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from edge.review import ReviewError
from edge.counting.review_queue import SCHEMA_VERSION, QueueVersionError, ReviewQueue

SCHEMA = """
CREATE TABLE IF NOT EXISTS review_exports (
    archive_id      TEXT PRIMARY KEY,
    manifest_sha256 TEXT NOT NULL,
    created         REAL NOT NULL,
    archive_path    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS review_export_cells (
    archive_id  TEXT NOT NULL REFERENCES review_exports(archive_id),
    cell_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    PRIMARY KEY (archive_id, cell_id)
);
CREATE TABLE IF NOT EXISTS label_imports (
    import_id     TEXT PRIMARY KEY,
    archive_id    TEXT NOT NULL,
    labels_sha256 TEXT NOT NULL,
    reviewer      TEXT NOT NULL,
    imported      REAL NOT NULL,
    changed       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS label_audit (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    cell_id       TEXT NOT NULL,
    kind          TEXT NOT NULL,
    machine_class TEXT NOT NULL,
    before        TEXT,
    after         TEXT NOT NULL,
    reviewer      TEXT NOT NULL,
    labelled_at   TEXT,
    imported      REAL NOT NULL,
    import_id     TEXT NOT NULL REFERENCES label_imports(import_id)
);
"""
_APPEND_ONLY = ("label_audit", "label_imports", "review_exports", "review_export_cells")


def open_store(session_dir: Path, write: bool = True) -> sqlite3.Connection:
    """The session's queue database; for writing, with the review tables (created when missing)."""
    path = Path(session_dir) / "review" / "queue.sqlite"
    if not path.is_file():
        raise ReviewError(f"{session_dir} has no review queue (review/queue.sqlite)")
    if not write:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            db.close()
            raise ReviewError(f"{path} has schema version {version}; this edge reads up to {SCHEMA_VERSION}")
        db.row_factory = sqlite3.Row
        return db
    try:
        ReviewQueue(path.parent).close()  # version check, and migration of an older queue
    except QueueVersionError as exc:
        raise ReviewError(str(exc)) from None
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA foreign_keys=ON")
    db.executescript(SCHEMA + "".join(
        f"CREATE TRIGGER IF NOT EXISTS {t}_no_{op.lower()} BEFORE {op} ON {t} "
        f"BEGIN SELECT RAISE(ABORT, '{t} is append-only'); END;\n"
        for t in _APPEND_ONLY for op in ("UPDATE", "DELETE")))
    return db


def has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def current_labels(db: sqlite3.Connection) -> dict[str, sqlite3.Row]:
    """The latest audit row of every labelled cell."""
    if not has_table(db, "label_audit"):
        return {}
    rows = db.execute("SELECT * FROM label_audit WHERE seq IN "
                      "(SELECT MAX(seq) FROM label_audit GROUP BY cell_id)").fetchall()
    return {r["cell_id"]: r for r in rows}
