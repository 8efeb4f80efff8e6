"""The catalog's SQLite schema, its version, and the stepwise migrations from older versions.

Version history:

1. ``meta``, ``items`` (one vector ``row`` per item), ``vector_sets (name, dim, rows)``.
2. ``vector_sets.file`` (the set's current vector file, so ``compact`` can swap files in one
   transaction), ``vector_batches`` (a SHA-256 per committed batch of rows, checked by
   ``sharpclip check``) and an index on ``items.row``.
3. Vector sets with several vectors per item: ``vector_sets.params`` (JSON: how the set's
   vectors are made, e.g. a region grid) and ``item_vectors (vector_set, item_id, start, count)``,
   the contiguous rows each item has in a set other than ``image`` (whose row stays
   ``items.row``); a row's part index is ``row - start``.

A collection written by an older version is migrated when it is opened (one transaction); one
written by a newer version is refused with the fix.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

SCHEMA_VERSION = 3
# Rows per checksum batch where no commit batch defines one (rows migrated from version 1, a
# compacted file): small, because a search hashes the batch of each hit it returns.
CHECKSUM_BATCH_ROWS = 256

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    hash TEXT,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    width INTEGER,
    height INTEGER,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    reason TEXT,
    error TEXT,
    row INTEGER,
    added_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_hash ON items (hash);
CREATE INDEX IF NOT EXISTS items_row ON items (row);
CREATE TABLE IF NOT EXISTS vector_sets (
    name TEXT PRIMARY KEY,
    dim INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    file TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS vector_batches (
    vector_set TEXT NOT NULL,
    start INTEGER NOT NULL,
    count INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (vector_set, start)
);
CREATE TABLE IF NOT EXISTS item_vectors (
    vector_set TEXT NOT NULL,
    item_id INTEGER NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    start INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (vector_set, item_id)
);
CREATE INDEX IF NOT EXISTS item_vectors_item ON item_vectors (item_id);
CREATE INDEX IF NOT EXISTS item_vectors_start ON item_vectors (vector_set, start);
"""


class SchemaError(ValueError):
    """The catalog's schema cannot be read by this version; the message says what to do."""


def create_tables(db: sqlite3.Connection) -> None:
    """Create every table of the current schema (inside the caller's transaction)."""
    for statement in SCHEMA.strip().split(";"):
        if statement.strip():
            db.execute(statement)


def stored_version(db: sqlite3.Connection) -> int | None:
    """The catalog's ``schema_version``, or None when it has none."""
    found = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return None if found is None else int(json.loads(found[0]))


def migrate(db: sqlite3.Connection, collection: Path) -> int:
    """Bring the catalog of ``collection`` to :data:`SCHEMA_VERSION`; returns the version found.

    Each step runs in the same ``BEGIN IMMEDIATE`` transaction, so a migration killed half way
    leaves the old version, and two processes opening an old collection migrate it once.
    """
    version = stored_version(db)
    if version == SCHEMA_VERSION:
        return version
    db.execute("BEGIN IMMEDIATE")
    try:
        found = version = stored_version(db)
        if version is None:
            raise SchemaError(f"{collection}: the catalog records no schema version; it is not a "
                              "sharpclip collection, or it is damaged: re-index into a new one")
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{collection} was written by a newer sharpclip (collection schema {version}; "
                f"this one reads up to {SCHEMA_VERSION}): upgrade it with "
                "`pip install --upgrade sharpclip`"
            )
        while version < SCHEMA_VERSION:
            _STEPS[version](db, collection)
            version += 1
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (json.dumps(version),))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return found


def _v1_to_v2(db: sqlite3.Connection, collection: Path) -> None:
    """Name each set's file, checksum the committed rows as they are now, index ``items.row``."""
    db.execute("ALTER TABLE vector_sets ADD COLUMN file TEXT NOT NULL DEFAULT ''")
    db.execute("UPDATE vector_sets SET file = name || '.f32'")
    create_tables(db)
    for name, dim, rows in db.execute("SELECT name, dim, rows FROM vector_sets").fetchall():
        path = collection / "vectors" / f"{name}.f32"
        if rows == 0 or not path.is_file() or path.stat().st_size < rows * dim * 4:
            continue  # nothing to vouch for: a short file is reported and repaired on open
        with open(path, "rb") as handle:
            for start in range(0, rows, CHECKSUM_BATCH_ROWS):
                count = min(CHECKSUM_BATCH_ROWS, rows - start)
                digest = hashlib.sha256(handle.read(count * dim * 4)).hexdigest()
                db.execute("INSERT INTO vector_batches VALUES (?, ?, ?, ?)",
                           (name, start, count, digest))


def _v2_to_v3(db: sqlite3.Connection, collection: Path) -> None:
    """Give vector sets their parameters and create the per-item rows of multi-vector sets
    (a schema-2 collection has only the ``image`` set, whose rows stay in ``items.row``)."""
    db.execute("ALTER TABLE vector_sets ADD COLUMN params TEXT NOT NULL DEFAULT '{}'")
    create_tables(db)


_STEPS = {1: _v1_to_v2, 2: _v2_to_v3}
