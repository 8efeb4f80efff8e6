"""A collection: one directory holding SQLite metadata, vector sets on disk and a search index.

Layout of ``COLL/``::

    collection.sqlite      items (one row per file), meta (model, preprocessing), vector_sets
    vectors/<set>.f32      append-only float32 rows, memory-mapped on read
    cache/<name>.npy       derived arrays (e.g. a condition's gallery projection), keyed and
                           stamped with the collection generation, so any add/remove invalidates them
    index/<set>.faiss      the ANN index over a vector set, when the collection is large
    lock                   held (flock) by the one writer

Crash safety: a batch's vectors are appended and flushed first, then one SQLite transaction records
the items and the vector set's new row count. Rows past the recorded count are a torn tail from an
interrupted run and are truncated by the next writer, so a kill at any point loses no committed item
and never duplicates one.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sharpclip.data.imagefiles import COLLECTION_MARKER
from sharpclip.store.search_index import AnnIndex, SearchConfig, exact_topk, needs_ann

SCHEMA_VERSION = 1
DB_NAME = COLLECTION_MARKER  # find_images skips folders holding it
IMAGE_SET = "image"

_SCHEMA = """
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
CREATE TABLE IF NOT EXISTS vector_sets (
    name TEXT PRIMARY KEY,
    dim INTEGER NOT NULL,
    rows INTEGER NOT NULL
);
"""


class CollectionError(ValueError):
    """A collection cannot be created or opened as asked; the message says what to do."""


class ModelMismatchError(CollectionError):
    """The collection was indexed with another model than the one passed."""


@dataclass(frozen=True)
class Item:
    """One file known to the collection (``status`` ok: embedded; error: recorded with a reason)."""

    id: int
    path: str
    hash: str | None
    size: int
    mtime_ns: int
    width: int | None
    height: int | None
    status: str
    reason: str | None
    error: str | None
    row: int | None


@dataclass(frozen=True)
class ItemUpdate:
    """What one indexed (or failed) file contributes to a batch commit.

    ``vector_index`` points into the batch's vector array for embedded files; None for failures
    and for files whose stored vector stays valid (a move or a touched but unchanged file).
    """

    path: str
    hash: str | None
    size: int
    mtime_ns: int
    width: int | None = None
    height: int | None = None
    status: str = "ok"
    reason: str | None = None
    error: str | None = None
    vector_index: int | None = None
    previous_path: str | None = None  # set for a move: the stored item is re-pointed, not re-added


@dataclass(frozen=True)
class CollectionInfo:
    """What a collection records about its model at creation."""

    model: str
    fingerprint: str
    model_type: str
    dim: int
    preprocess: dict
    created_at: float


_ITEM_COLUMNS = "id, path, hash, size, mtime_ns, width, height, status, reason, error, row"


def _model_spec(model) -> str:
    """The string that reloads ``model`` later (local directories are stored absolute)."""
    name = model.name
    path = Path(name).expanduser()
    return str(path.resolve()) if name != "bundled" and path.is_dir() else name


class Collection:
    """A directory-backed image collection (see the module docstring for the layout)."""

    def __init__(self, path: Path, info: CollectionInfo, model=None):
        self.path = Path(path)
        self.info = info
        self._model = model
        # Derived from the database, kept per generation: reused while nothing was committed.
        self._live: tuple[int, np.ndarray, np.ndarray] | None = None
        self._ann: tuple[int, AnnIndex] | None = None
        self._db = sqlite3.connect(self.path / DB_NAME, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")

    # -- creating and opening -------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, model="bundled") -> Collection:
        """Create an empty collection at ``path`` for ``model`` (a spec string or a loaded model)."""
        from sharpclip.models import load_model

        path = Path(path).expanduser()
        if (path / DB_NAME).exists():
            raise CollectionError(f"{path} is already a collection; open it instead")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise CollectionError(f"{path} exists and is not an empty directory; choose a new path")
        loaded = load_model(model) if isinstance(model, str) else model
        info = CollectionInfo(
            model=_model_spec(loaded), fingerprint=loaded.fingerprint, model_type=loaded.model_type,
            dim=loaded.dim, preprocess=_preprocess_dict(loaded), created_at=time.time(),
        )
        # Built beside the target and renamed into place, so a killed create leaves no half collection.
        staging = path.parent / f".{path.name}.creating-{os.getpid()}"
        (staging / "vectors").mkdir(parents=True)
        db = sqlite3.connect(staging / DB_NAME, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN")
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    db.execute(statement)
            rows = {"schema_version": SCHEMA_VERSION, "generation": 0, **info.__dict__}
            db.executemany("INSERT INTO meta VALUES (?, ?)",
                           [(k, json.dumps(v)) for k, v in rows.items()])
            db.execute("INSERT INTO vector_sets VALUES (?, ?, 0)", (IMAGE_SET, info.dim))
            db.execute("COMMIT")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()
        if path.exists():
            path.rmdir()
        os.rename(staging, path)
        return cls(path, info, loaded)

    @classmethod
    def open(cls, path: str | os.PathLike, model=None) -> Collection:
        """Open an existing collection; ``model`` (spec or loaded) must match the one it was built with."""
        path = Path(path).expanduser()
        if not (path / DB_NAME).is_file():
            raise CollectionError(
                f"{path} is not a sharpclip collection (no {DB_NAME}); create it with "
                f"`sharpclip index FOLDER -c {path}`"
            )
        db = sqlite3.connect(path / DB_NAME, timeout=60)
        try:
            meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
        finally:
            db.close()
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise CollectionError(f"{path}: unsupported collection schema {meta.get('schema_version')}")
        info = CollectionInfo(**{k: meta[k] for k in CollectionInfo.__dataclass_fields__})
        loaded = None
        if model is not None:
            from sharpclip.models import load_model

            loaded = load_model(model) if isinstance(model, str) else model
            if loaded.fingerprint != info.fingerprint:
                raise ModelMismatchError(
                    f"{path} was indexed with model {info.model!r} (fingerprint {info.fingerprint}) "
                    f"but model {loaded.name!r} (fingerprint {loaded.fingerprint}) was given; "
                    f"use --model {info.model}, or index into a new collection with -c NEW_DIR"
                )
        return cls(path, info, loaded)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, model=None) -> Collection:
        """Open ``path`` if it is a collection, else create it (with ``model`` or the bundled one)."""
        if (Path(path).expanduser() / DB_NAME).is_file():
            return cls.open(path, model)
        return cls.create(path, "bundled" if model is None else model)

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def model(self):
        """The collection's model, loaded on first use from the spec recorded at creation."""
        if self._model is None:
            from sharpclip.models import load_model

            model = load_model(self.info.model)
            if model.fingerprint != self.info.fingerprint:
                raise ModelMismatchError(
                    f"model {self.info.model!r} now has fingerprint {model.fingerprint}, but "
                    f"{self.path} was indexed with {self.info.fingerprint}: its weights or "
                    "preprocessing changed; re-index into a new collection"
                )
            self._model = model
        return self._model

    # -- reading --------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """A counter bumped by every commit that adds, changes or removes an embedded item."""
        return int(json.loads(self._meta("generation")))

    def _meta(self, key: str) -> str:
        return self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    def items(self, status: str | None = None) -> list[Item]:
        """All items (optionally only those with ``status``), ordered by id."""
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        rows = self._db.execute(f"SELECT {_ITEM_COLUMNS} FROM items {where} ORDER BY id", args)
        return [Item(*row) for row in rows]

    def item(self, path: str | os.PathLike) -> Item | None:
        """The item stored for ``path`` (resolved to an absolute path), or None."""
        key = str(Path(path).expanduser().resolve())
        row = self._db.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE path = ?", (key,)).fetchone()
        return Item(*row) if row else None

    def counts(self) -> dict[str, int]:
        """Number of items per status."""
        counts = dict(self._db.execute("SELECT status, COUNT(*) FROM items GROUP BY status"))
        return {"ok": counts.get("ok", 0), "error": counts.get("error", 0)}

    def vectors(self, name: str = IMAGE_SET) -> np.ndarray:
        """The committed rows of a vector set, memory-mapped read-only (rows x dim, float32)."""
        dim, rows = self._vector_set(name)
        file = self._vector_file(name)
        if rows == 0 or not file.exists():
            return np.zeros((0, dim), np.float32)
        return np.memmap(file, dtype=np.float32, mode="r", shape=(rows, dim))

    def live_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, item ids) of the embedded items: the only rows search may return."""
        _, rows, ids = self._live_snapshot()
        return rows, ids

    def _live_snapshot(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(generation, rows, ids), read again only when the generation has moved on (reading
        every live row costs ~0.2 s at 250k items, far more than a search)."""
        generation = self.generation
        if self._live is None or self._live[0] != generation:
            data = self._db.execute(
                "SELECT row, id FROM items WHERE status = 'ok' ORDER BY row").fetchall()
            array = np.array(data, dtype=np.int64).reshape(-1, 2)
            self._live = (generation, array[:, 0], array[:, 1])
        return self._live

    def paths_for_rows(self, rows: Sequence[int]) -> dict[int, tuple[int, str]]:
        """Map vector rows to (item id, path) for live items."""
        live, ids = self.live_rows()
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if not len(live) or not len(rows):
            return {}
        at = np.minimum(np.searchsorted(live, rows), len(live) - 1)
        found = live[at] == rows
        wanted = dict(zip(ids[at[found]].tolist(), rows[found].tolist()))
        out: dict[int, tuple[int, str]] = {}
        keys = list(wanted)
        for start in range(0, len(keys), 500):  # by primary key: `row` has no index
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for item_id, row, path in self._db.execute(
                f"SELECT id, row, path FROM items WHERE status = 'ok' AND id IN ({marks})", chunk
            ):
                if row == wanted[item_id]:
                    out[row] = (item_id, path)
        return out

    def _vector_set(self, name: str) -> tuple[int, int]:
        found = self._db.execute("SELECT dim, rows FROM vector_sets WHERE name = ?", (name,)).fetchone()
        if found is None:
            raise CollectionError(f"{self.path} has no vector set {name!r}")
        return int(found[0]), int(found[1])

    def _vector_file(self, name: str) -> Path:
        return self.path / "vectors" / f"{name}.f32"

    # -- writing --------------------------------------------------------------------------------

    @contextmanager
    def writing(self):
        """Hold the collection's writer lock; trims any torn vector tail left by a killed run."""
        with open(self.path / "lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CollectionError(
                    f"{self.path} is being written by another sharpclip process; wait for it to finish"
                ) from None
            try:
                for name, dim, rows in self._db.execute("SELECT name, dim, rows FROM vector_sets"):
                    file = self._vector_file(name)
                    if file.exists() and file.stat().st_size != rows * dim * 4:
                        os.truncate(file, rows * dim * 4)
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def commit(self, updates: Sequence[ItemUpdate], vectors: np.ndarray | None = None) -> None:
        """Atomically record a batch: append its vectors, then upsert its items (call under ``writing``).

        Embedded items get fresh rows (a changed file's old row is orphaned, never reused); failed
        items keep no row; a move re-points the stored item to its new path.
        """
        dim, rows = self._vector_set(IMAGE_SET)
        count = 0 if vectors is None else len(vectors)
        if count:
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            if vectors.shape[1] != dim:
                raise CollectionError(f"vectors have dim {vectors.shape[1]}, collection has {dim}")
            with open(self._vector_file(IMAGE_SET), "ab") as handle:
                handle.write(vectors.tobytes())
                handle.flush()
                os.fsync(handle.fileno())
        now = time.time()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for u in updates:
                row = None if u.vector_index is None else rows + u.vector_index
                if u.previous_path is not None:
                    db.execute("DELETE FROM items WHERE path = ?", (u.path,))
                    db.execute("UPDATE items SET path = ?, size = ?, mtime_ns = ?, updated_at = ? "
                               "WHERE path = ?", (u.path, u.size, u.mtime_ns, now, u.previous_path))
                    continue
                if u.status == "ok" and row is None:  # unchanged content, new size/mtime stamp
                    db.execute("UPDATE items SET size = ?, mtime_ns = ?, updated_at = ? WHERE path = ?",
                               (u.size, u.mtime_ns, now, u.path))
                    continue
                db.execute(
                    "INSERT INTO items (path, hash, size, mtime_ns, width, height, status, reason, "
                    "error, row, added_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT (path) DO UPDATE SET hash=excluded.hash, size=excluded.size, "
                    "mtime_ns=excluded.mtime_ns, width=excluded.width, height=excluded.height, "
                    "status=excluded.status, reason=excluded.reason, error=excluded.error, "
                    "row=excluded.row, updated_at=excluded.updated_at",
                    (u.path, u.hash, u.size, u.mtime_ns, u.width, u.height, u.status, u.reason,
                     u.error, row, now, now),
                )
            db.execute("UPDATE vector_sets SET rows = rows + ? WHERE name = ?", (count, IMAGE_SET))
            self._bump_generation()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def remove(self, paths: Iterable[str | os.PathLike]) -> int:
        """Forget the items at ``paths`` (files or directories, matched by resolved path); returns how many."""
        keys = [str(Path(p).expanduser().resolve()) for p in paths]
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            removed = 0
            for key in keys:
                removed += db.execute("DELETE FROM items WHERE path = ? OR path LIKE ? ESCAPE '\\'",
                                      (key, _like_prefix(key))).rowcount
            if removed:
                self._bump_generation()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return removed

    def _bump_generation(self) -> None:
        self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    # -- search ---------------------------------------------------------------------------------

    def live_mask(self, rows: int | None = None) -> np.ndarray:
        """Boolean mask over the image vector set's rows: True where a live item points."""
        live, _ = self.live_rows()
        return _row_mask(live, self.vectors().shape[0] if rows is None else rows)

    def nearest(self, queries: np.ndarray, k: int, exact: bool | None = None,
                config: SearchConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, rows) of live items per query: exact scan while the collection is
        below ``config.ann_threshold`` or when ``exact``; otherwise the HNSW index, brought up to
        date with the items first (built on first use, then updated incrementally)."""
        config = config or SearchConfig()
        vectors = self.vectors()
        generation, live, _ = self._live_snapshot()
        if len(live) and live[-1] >= len(vectors):
            # Rows committed after `vectors` was read wait for the next search; so that it syncs
            # them, the index must not be kept as up to date with this generation.
            live, generation = live[live < len(vectors)], -1
        if not self.uses_ann(len(live), exact, config):
            return exact_topk(vectors, queries, k, valid=_row_mask(live, len(vectors)))
        return self._synced_ann(vectors, live, generation, config).search(queries, k)

    @staticmethod
    def uses_ann(live: int, exact: bool | None, config: SearchConfig | None = None) -> bool:
        """Whether :meth:`nearest` answers from the ANN index for ``live`` items."""
        return not exact and needs_ann(live, (config or SearchConfig()).ann_threshold)

    def _synced_ann(self, vectors: np.ndarray, live: np.ndarray, generation: int,
                    config: SearchConfig) -> AnnIndex:
        """The ANN index holding exactly the ``live`` rows (of ``generation``): kept in memory
        between searches, else loaded from disk, then brought up to date and saved."""
        if self._ann is not None and self._ann[0] == generation:
            return self._ann[1]
        file = self.path / "index" / f"{IMAGE_SET}.faiss"
        if self._ann is not None:
            index = self._ann[1]
        else:
            index = AnnIndex.load(file) if file.exists() else None
        if index is not None and index.needs_rebuild:
            index = None
        if index is None:
            index = AnnIndex.build(np.asarray(vectors[live]), live, config)
            changed = True
        else:
            indexed = index.rows_[~index.deleted_]
            stale = np.setdiff1d(indexed, live)
            fresh = np.setdiff1d(live, indexed)
            changed = bool(stale.size or fresh.size)
            index.remove(stale)
            if fresh.size:
                index.add(np.asarray(vectors[fresh]), fresh)
        if changed:
            file.parent.mkdir(exist_ok=True)
            index.save(file)
        self._ann = (generation, index)
        return index

    # -- derived caches -------------------------------------------------------------------------

    def cache_get(self, name: str, key: str) -> np.ndarray | None:
        """A cached array if it was stored under ``key`` at the current generation, else None."""
        file = self.path / "cache" / f"{name}.npy"
        stamp = file.with_suffix(".json")
        if not (file.exists() and stamp.exists()):
            return None
        recorded = json.loads(stamp.read_text())
        if recorded != {"key": key, "generation": self.generation}:
            return None
        return np.load(file, mmap_mode="r")

    def cache_put(self, name: str, key: str, array: np.ndarray) -> None:
        """Store a derived array under ``key`` for the current generation (atomic replace)."""
        folder = self.path / "cache"
        folder.mkdir(exist_ok=True)
        target = folder / f"{name}.npy"
        tmp = folder / f".{name}.{os.getpid()}.npy"
        np.save(tmp, array)
        stamp = target.with_suffix(".json")
        stamp.unlink(missing_ok=True)  # a stale stamp must never vouch for the new array
        os.replace(tmp, target)
        tmp_stamp = folder / f".{name}.{os.getpid()}.json"
        tmp_stamp.write_text(json.dumps({"key": key, "generation": self.generation}))
        os.replace(tmp_stamp, stamp)

    # -- the pipelines (wired outside store/) ---------------------------------------------------

    def add(self, paths: Iterable[str | os.PathLike], **options):
        """Index files and folders incrementally (see :func:`sharpclip.ingest.index_paths`)."""
        from sharpclip.ingest import index_paths

        return index_paths(self, paths, **options)

    def search(self, text: str | None = None, image=None, like=None, k: int = 20, **options):
        """Search by text, image file/PIL image, or an indexed item (see :func:`sharpclip.search.search`)."""
        from sharpclip.search import search

        return search(self, text=text, image=image, like=like, k=k, **options)


def _row_mask(rows: np.ndarray, n: int) -> np.ndarray:
    """A boolean mask of length ``n``, True at ``rows`` (rows ``>= n`` are left out)."""
    mask = np.zeros(n, dtype=bool)
    mask[rows[rows < n]] = True
    return mask


def _like_prefix(path: str) -> str:
    escaped = path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.rstrip("/") + "/%"


def _preprocess_dict(model) -> dict:
    pre = model.preprocess
    return {k: list(v) if isinstance(v, tuple) else v for k, v in pre.__dict__.items()}
