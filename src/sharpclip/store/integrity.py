"""``sharpclip check``: verify a collection against its catalog, and say what each problem affects.

What is checked, in order, each cheap enough to run after every crash (timed in
``benchmarks/check.py``):

1. the catalog: SQLite ``PRAGMA integrity_check``;
2. each vector set's file length against its committed rows (short or missing: vectors lost);
3. the SHA-256 of every committed batch of rows (stored at commit), reading each file once;
4. the items' rows: every live item points at a committed row, no two at the same one;
5. the derived caches: each stamp readable and its checksum matching the array;
6. the ANN index: readable, built from this vector file, its stored vectors equal to the set's
   (on a sample) and how far it lags the live rows.

Severities: ``error`` (a vector or the catalog is wrong or lost: results would be wrong or
incomplete), ``warning`` (degraded but never wrong, e.g. a damaged cache or index, which searches
skip), ``notice`` (worth knowing, e.g. orphaned rows that ``compact`` reclaims). This module only
reads; ``sharpclip.repair`` acts on what it finds.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sharpclip.store.caches import file_sha256
from sharpclip.store.collection import (
    DB_NAME,
    VECTORS_LOST,
    Collection,
    CollectionError,
    DamagedCollectionError,
    surviving_rows,
)
from sharpclip.store.local_backend import index_file_for, load_index_for

INDEX_SAMPLE = 1000  # indexed rows whose stored vectors are compared with the set's


@dataclass(frozen=True)
class Problem:
    """One finding: what kind, which file, what is wrong, the fix, and the items it affects."""

    kind: str  # catalog | vectors | checksum | rows | cache | index | orphans
    severity: str  # error | warning | notice
    file: str
    message: str
    fix: str
    item_ids: tuple[int, ...] = ()
    paths: tuple[str, ...] = ()


@dataclass
class CheckReport:
    """Every problem found, and what was looked at."""

    collection: str
    problems: list[Problem] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        """No error and no warning (notices are information)."""
        return not any(p.severity in ("error", "warning") for p in self.problems)

    def to_json(self) -> dict:
        """The ``sharpclip check --json`` document."""
        return {"collection": self.collection, "clean": self.clean,
                "problems": [{**asdict(p), "item_ids": list(p.item_ids), "paths": list(p.paths)}
                             for p in self.problems],
                "stats": self.stats, "seconds": round(self.seconds, 3)}


def check_collection(path: str | Path) -> CheckReport:
    """Verify the collection at ``path`` (see the module docstring); never modifies it."""
    start = time.perf_counter()
    path = Path(path).expanduser()
    report = CheckReport(str(path))
    try:
        coll = Collection.open(path)
    except DamagedCollectionError as error:
        message = str(error).removeprefix(f"{path / DB_NAME}: ")
        report.problems.append(Problem("catalog", "error", str(path / DB_NAME), message,
                                       "restore collection.sqlite from a backup, or index the "
                                       "folders again into a new collection"))
        report.seconds = time.perf_counter() - start
        return report
    with coll:
        try:
            _check_catalog(coll, report)
            live = _check_items(coll, report)
            for name, dim, rows, file in coll.vector_sets():
                _check_vector_set(coll, report, name, dim, rows, file,
                                  live if name == "image" else coll.live_row_map(name))
            _check_caches(coll, report)
            _check_index(coll, report, live)
        except sqlite3.DatabaseError as error:
            report.problems.append(Problem("catalog", "error", str(path / DB_NAME),
                                           f"the catalog cannot be read ({error})",
                                           "restore collection.sqlite from a backup, or index "
                                           "the folders again into a new collection"))
    report.seconds = time.perf_counter() - start
    return report


def _check_catalog(coll: Collection, report: CheckReport) -> None:
    result = [row[0] for row in coll._db.execute("PRAGMA integrity_check")]
    if result != ["ok"]:
        report.problems.append(Problem(
            "catalog", "error", str(coll.path / DB_NAME),
            f"SQLite integrity_check failed: {'; '.join(result[:3])}",
            "restore collection.sqlite from a backup, or index the folders again into a new "
            "collection"))


def _check_items(coll: Collection, report: CheckReport) -> dict[int, tuple[int, str]]:
    """Live items by row; flags rows out of range and rows shared by two items."""
    _, rows, file = coll._vector_set("image")
    by_row: dict[int, tuple[int, str]] = {}
    bad: list[tuple[int, str]] = []
    for item_id, path, row in coll._db.execute(
            "SELECT id, path, row FROM items WHERE status = 'ok' ORDER BY row"):
        if row is None or row < 0 or row >= rows or row in by_row:
            bad.append((item_id, path))
            if row in by_row:
                bad.append(by_row.pop(row))
        else:
            by_row[row] = (item_id, path)
    if bad:
        report.problems.append(Problem(
            "rows", "error", str(coll.path / DB_NAME),
            f"{len(bad)} items point at no committed vector row or share one",
            f"`sharpclip check -c {coll.path} --repair` re-embeds them", *_affected(bad)))
    lost = coll._db.execute("SELECT id, path FROM items WHERE status = 'error' AND reason = ?",
                            (VECTORS_LOST,)).fetchall()
    if lost:
        report.problems.append(Problem(
            "vectors", "error", str(file),
            f"{len(lost)} items lost their vectors and wait to be re-embedded",
            f"`sharpclip check -c {coll.path} --repair` (or `index`) re-embeds them",
            *_affected(lost)))
    counts = coll.counts()
    report.stats.update(items=counts["ok"], failed=counts["error"], rows=rows,
                        orphaned_rows=rows - len(by_row))
    if rows > len(by_row):
        report.problems.append(Problem(
            "orphans", "notice", str(file),
            f"{rows - len(by_row)} of {rows} vector rows belong to no item (changed or removed "
            f"files, {(rows - len(by_row)) * coll.info.dim * 4 / 2**20:.1f} MiB)",
            f"`sharpclip compact -c {coll.path}` reclaims them"))
    return by_row


def _check_vector_set(coll: Collection, report: CheckReport, name: str, dim: int, rows: int,
                      file: Path, live: dict[int, tuple[int, str]]) -> None:
    size = file.stat().st_size if file.exists() else None
    row_bytes = dim * 4
    if size is not None and size > rows * row_bytes:
        report.problems.append(Problem(
            "vectors", "notice", str(file),
            f"{(size - rows * row_bytes) // row_bytes} uncommitted rows past the committed end "
            "(an interrupted run)", "the next `index` trims them"))
    present = 0 if size is None else min(rows, size // row_bytes)
    batches = coll._db.execute("SELECT start, count, sha256 FROM vector_batches WHERE "
                               "vector_set = ? ORDER BY start", (name,)).fetchall()
    if present < rows:
        cut = surviving_rows([s + c for s, c, _ in batches], present)
        hit = [v for r, v in live.items() if r >= cut]
        what = "is missing" if size is None else f"holds {present} of its {rows} committed rows"
        report.problems.append(Problem(
            "vectors", "error", str(file), f"the vector file {what}: those vectors are lost",
            f"`sharpclip check -c {coll.path} --repair` (or `index`) re-embeds the affected items",
            *_affected(hit)))
    damaged_live, damaged_orphan, hashed = [], 0, 0
    if size is not None:
        with open(file, "rb") as handle:
            for start, count, digest in batches:
                if start + count > present:
                    break
                handle.seek(start * row_bytes)
                data = handle.read(count * row_bytes)
                hashed += len(data)
                if hashlib.sha256(data).hexdigest() != digest:
                    hit = [live[r] for r in range(start, start + count) if r in live]
                    damaged_live.extend(hit)
                    damaged_orphan += not hit
    if damaged_live:
        report.problems.append(Problem(
            "checksum", "error", str(file),
            f"{len(damaged_live)} live vectors changed on disk since they were committed "
            "(checksum mismatch)",
            f"`sharpclip check -c {coll.path} --repair` re-embeds the affected items",
            *_affected(damaged_live)))
    if damaged_orphan:
        report.problems.append(Problem(
            "checksum", "notice", str(file),
            f"{damaged_orphan} damaged batches hold only orphaned rows (no item uses them)",
            f"`sharpclip compact -c {coll.path}` drops them"))
    covered = sum(count for start, count, _ in batches if start + count <= rows)
    if covered < rows:
        report.problems.append(Problem(
            "checksum", "notice", str(file),
            f"{rows - covered} rows have no checksum (written before checksums existed and "
            "unreadable at migration)", f"`sharpclip compact -c {coll.path}` checksums them"))
    report.stats.setdefault("bytes_hashed", 0)
    report.stats["bytes_hashed"] += hashed
    report.stats.setdefault("batches", 0)
    report.stats["batches"] += len(batches)


def _check_caches(coll: Collection, report: CheckReport) -> None:
    folder = coll.path / "cache"
    for file in sorted(folder.glob("*.npy")) if folder.is_dir() else ():
        try:
            stamp = json.loads(file.with_suffix(".json").read_text())
            ok = file_sha256(file) == stamp.get("sha256")
            np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            report.problems.append(Problem(
                "cache", "warning", str(file),
                "a derived cache is damaged (unreadable, or its checksum does not match); "
                "searches ignore it and recompute it",
                f"`sharpclip check -c {coll.path} --repair` deletes it"))


def _check_index(coll: Collection, report: CheckReport, live: dict[int, tuple[int, str]]) -> None:
    try:
        snap, vectors = coll.read_vectors()
    except CollectionError:
        return  # the vector file itself is reported above
    file = index_file_for(snap.file)
    if not file.exists():
        if coll.uses_ann(len(live), False):
            report.problems.append(Problem(
                "index", "warning", str(file),
                f"no ANN index for {len(live)} items: searches scan exactly (slower)",
                f"`sharpclip check -c {coll.path} --repair` (or `index`) builds it"))
        return
    try:
        index = load_index_for(file, vectors, sample=INDEX_SAMPLE)
    except (OSError, ValueError, RuntimeError) as error:
        report.problems.append(Problem(
            "index", "warning", str(file),
            f"the ANN index is unusable ({error}); searches scan exactly instead",
            f"`sharpclip check -c {coll.path} --repair` rebuilds it"))
        return
    kept = ~index.deleted_
    indexed = set(index.rows_[kept].tolist())
    lag = len(indexed ^ set(live))
    if lag:
        report.problems.append(Problem(
            "index", "notice", str(file),
            f"the ANN index lags the items by {lag} rows (searches make up for it exactly)",
            "the next `index` updates it"))


def _affected(pairs: list[tuple[int, str]]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    return tuple(i for i, _ in pairs), tuple(p for _, p in pairs)
