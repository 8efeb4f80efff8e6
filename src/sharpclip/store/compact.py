"""Compaction: rewrite a vector set with only its live rows, so orphaned rows stop taking space.

A changed or removed file orphans its vector row (rows are append-only and never reused: that is
what makes every commit crash-safe). ``compact`` copies the live rows, in row order, into a *new*
file, builds the ANN index for that file when the collection uses one, and then swaps both in with
one SQLite transaction that renumbers the items, records the new file, row count and checksums, and
bumps the generation. A kill before that transaction leaves the old collection (the new files are
leftovers the next writer deletes); a kill after it leaves the new one (the old files are the
leftovers). Readers never see a mix: they read the file name and the rows in one snapshot.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from dataclasses import dataclass

import numpy as np

from sharpclip.store.collection import IMAGE_SET, Collection, index_file_for, transaction
from sharpclip.store.faults import crash_point
from sharpclip.store.schema import CHECKSUM_BATCH_ROWS
from sharpclip.store.search_index import AnnIndex, SearchConfig


@dataclass(frozen=True)
class CompactReport:
    """What one ``compact`` did."""

    rows_before: int
    rows_after: int
    bytes_freed: int
    seconds: float

    def summary(self) -> str:
        """One line for the end of a run."""
        return (f"compacted {self.rows_before} vector rows to {self.rows_after} live ones, "
                f"freed {self.bytes_freed / 2**20:.1f} MiB in {self.seconds:.1f}s")


def compact(coll: Collection, config: SearchConfig | None = None,
            progress: bool = False) -> CompactReport:
    """Rewrite the image vector set with only its live rows (call under ``coll.writing()``)."""
    start = time.perf_counter()
    config = config or SearchConfig()
    snap, vectors = coll.read_vectors(IMAGE_SET)
    live_rows, live_ids = snap.live_rows, snap.live_ids
    new_file = snap.file.with_name(f"{IMAGE_SET}-{secrets.token_hex(4)}.f32")
    batches = _write_rows(vectors, live_rows, new_file)
    crash_point("compact.vectors_written")
    n = len(live_rows)
    new_index = index_file_for(new_file)
    if coll.uses_ann(n, False, config):
        index = AnnIndex.build(np.asarray(np.memmap(new_file, np.float32, "r", shape=(n, snap.dim))),
                               np.arange(n, dtype=np.int64), config, progress=progress)
        new_index.parent.mkdir(exist_ok=True)
        index.save(new_index)
        crash_point("compact.index_written")
    db = coll._db
    with transaction(db):
        db.executemany("UPDATE items SET row = ? WHERE id = ?",
                       zip(range(n), live_ids.tolist()))
        db.execute("UPDATE vector_sets SET rows = ?, file = ? WHERE name = ?",
                   (n, new_file.name, IMAGE_SET))
        db.execute("DELETE FROM vector_batches WHERE vector_set = ?", (IMAGE_SET,))
        db.executemany("INSERT INTO vector_batches VALUES (?, ?, ?, ?)",
                       [(IMAGE_SET, s, c, d) for s, c, d in batches])
        coll._bump_generation()
    crash_point("compact.committed")
    freed = snap.file.stat().st_size if snap.file.exists() else 0
    freed -= new_file.stat().st_size
    for old in (snap.file, index_file_for(snap.file)):
        old.unlink(missing_ok=True)
    for cached in (coll.path / "cache").glob("*") if (coll.path / "cache").is_dir() else ():
        cached.unlink(missing_ok=True)  # every cache was for the old generation
    return CompactReport(snap.rows, n, max(freed, 0), time.perf_counter() - start)


def _write_rows(vectors: np.ndarray, rows: np.ndarray, file) -> list[tuple[int, int, str]]:
    """Copy ``vectors[rows]`` into a new ``file`` (flushed to disk with its directory entry);
    returns the checksum batches (start, count, sha256) of the copy."""
    batches = []
    with open(file, "xb") as handle:
        for start in range(0, len(rows), CHECKSUM_BATCH_ROWS):
            part = rows[start:start + CHECKSUM_BATCH_ROWS]
            chunk = np.ascontiguousarray(vectors[part], np.float32)
            data = chunk.tobytes()
            handle.write(data)
            batches.append((start, len(chunk), hashlib.sha256(data).hexdigest()))
        handle.flush()
        os.fsync(handle.fileno())
    directory = os.open(file.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return batches
