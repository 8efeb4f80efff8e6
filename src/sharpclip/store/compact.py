"""Compaction: rewrite every vector set with only its live rows, so orphaned rows stop taking space.

A changed or removed file orphans its vector row (rows are append-only and never reused: that is
what makes every commit crash-safe). ``compact`` copies the live rows, in row order, into a *new*
file per set, builds the ANN index for the image set's new file when the collection uses one, and
then swaps them all in with one SQLite transaction that renumbers the items' rows in every set,
records the new files, row counts and checksums, and bumps the generation. A kill before that transaction leaves the old collection (the new files are
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

from sharpclip.store.collection import IMAGE_SET, Collection, Snapshot, transaction
from sharpclip.store.faults import crash_point
from sharpclip.store.local_backend import index_file_for
from sharpclip.store.schema import CHECKSUM_BATCH_ROWS
from sharpclip.store.search_index import AnnIndex, SearchConfig
from sharpclip.store.tuning import DEFAULT_RECALL, add_tuned


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
    """Rewrite every vector set with only its live rows (call under ``coll.writing()``)."""
    start = time.perf_counter()
    config = config or SearchConfig()
    rewritten: list[tuple[Snapshot, object, list]] = []
    for name, *_ in coll.vector_sets():
        snap, vectors = coll.read_vectors(name)
        new_file = snap.file.with_name(f"{name}-{secrets.token_hex(4)}.f32")
        rewritten.append((snap, new_file, _write_rows(vectors, snap.live_rows, new_file)))
    crash_point("compact.vectors_written")
    image = next(snap for snap, _, _ in rewritten if snap.vector_set == IMAGE_SET)
    n = len(image.live_rows)
    image_file = next(file for snap, file, _ in rewritten if snap is image)
    if coll.uses_ann(n, False, config):
        before = coll.index_settings()  # the new index is tuned to the old one's target
        target = (before or {}).get("tuning") or {}
        vectors = np.memmap(image_file, np.float32, "r", shape=(n, image.dim))
        index = AnnIndex(image.dim, config)
        add_tuned(index, vectors, np.arange(n, dtype=np.int64),
                  target.get("target", DEFAULT_RECALL), progress)
        index_file_for(image_file).parent.mkdir(exist_ok=True)
        index.save(index_file_for(image_file))
        crash_point("compact.index_written")
    db = coll._db
    with transaction(db):
        for snap, new_file, batches in rewritten:
            name = snap.vector_set
            if name == IMAGE_SET:
                db.executemany("UPDATE items SET row = ? WHERE id = ?",
                               zip(range(n), snap.live_ids.tolist()))
            else:  # each item's run stays contiguous: its new start is where its first row went
                first = np.flatnonzero(np.r_[True, snap.live_ids[1:] != snap.live_ids[:-1]])
                db.executemany("UPDATE item_vectors SET start = ? WHERE vector_set = ? AND "
                               "item_id = ?", [(int(i), name, int(snap.live_ids[i])) for i in first])
            db.execute("UPDATE vector_sets SET rows = ?, file = ? WHERE name = ?",
                       (len(snap.live_rows), new_file.name, name))
            db.execute("DELETE FROM vector_batches WHERE vector_set = ?", (name,))
            db.executemany("INSERT INTO vector_batches VALUES (?, ?, ?, ?)",
                           [(name, s, c, d) for s, c, d in batches])
        coll._bump_generation()
    crash_point("compact.committed")
    freed = 0
    for snap, new_file, _ in rewritten:
        freed += (snap.file.stat().st_size if snap.file.exists() else 0) - new_file.stat().st_size
        for old in (snap.file, index_file_for(snap.file)):
            old.unlink(missing_ok=True)
    for cached in (coll.path / "cache").glob("*") if (coll.path / "cache").is_dir() else ():
        cached.unlink(missing_ok=True)  # every cache was for the old generation
    return CompactReport(image.rows, n, max(freed, 0), time.perf_counter() - start)


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
