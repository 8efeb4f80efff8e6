"""A collection: one directory holding SQLite metadata, vector sets on disk and a search index.

Layout of ``COLL/``::

    collection.sqlite      the catalog: items (one row per file), meta (model, preprocessing),
                           vector_sets (dim, committed rows, current file, parameters),
                           vector_batches (a SHA-256 per committed batch of rows), item_vectors
                           (each item's rows in a multi-vector set); schema in ``store.schema``
    vectors/<file>.f32     append-only float32 rows, memory-mapped on read
    cache/<name>.npy       derived arrays (a condition's gallery projection, the live items of
                           ``store.live_items``), keyed, stamped
                           with the collection generation and checksummed: any add/remove
                           invalidates them, a damaged one is recomputed
    index/<file>.faiss     the ANN index over a vector file, when the collection is large
    lock                   held (flock) by the one writer

Vector sets: ``image`` holds one vector per embedded item (its row is ``items.row``); other sets
(``regions``: several crops per item) hold a contiguous run of rows per item, recorded in
``item_vectors``. Every set is written in the same crash-safe batches.

Crash safety: a batch's vectors (of every set) are appended and flushed first, then one SQLite transaction records
the items, the vector set's new row count and the batch's checksum. Rows past the recorded count
are a torn tail from an interrupted run and are trimmed by the next writer, so a kill at any point
loses no committed item and never duplicates one. A vector file *shorter* than its committed rows
(deleted or truncated by something else) is never padded: readers refuse it, and the next writer
marks the items whose vectors are gone as ``vectors_lost`` so that ``index`` re-embeds them.

Readers take one SQLite snapshot of the generation, the vector file and the live rows together, so
a concurrent writer (or ``compact``, which renumbers rows) can never mix two states.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sharpclip.data.imagefiles import COLLECTION_MARKER, path_key
from sharpclip.store import schema
from sharpclip.store.caches import Caches
from sharpclip.store.faults import crash_point
from sharpclip.store.live_items import LiveItems
from sharpclip.store.local_backend import LocalBackend, index_file_for
from sharpclip.store.search_index import SearchConfig, needs_ann

logger = logging.getLogger(__name__)

SCHEMA_VERSION = schema.SCHEMA_VERSION
DB_NAME = COLLECTION_MARKER  # find_images skips folders holding it
IMAGE_SET = "image"  # one vector per embedded item: the whole image
REGIONS_SET = "regions"  # several per item: region crops (METHODS.md §2a)
CALIBRATED_SET = "calibrated"  # one per item: CVE's calibrated embedding (METHODS.md §3a)
VECTORS_LOST = "vectors_lost"  # items.reason of an item whose stored vector was lost


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
    # Rows in the batch's arrays of other vector sets: (set name, offset, count) each. An item that
    # gets new content (or fails) loses its rows in every other set first.
    set_rows: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True)
class VectorSet:
    """A named set of vectors: dim, committed rows, current file, and how its vectors are made."""

    name: str
    dim: int
    rows: int
    file: Path
    params: dict


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


class CollectionExistsError(CollectionError):
    """``create`` found a collection at the path (possibly made by a concurrent ``index``)."""


class DamagedCollectionError(CollectionError):
    """The collection's files disagree with its catalog; the message names the repair."""


@dataclass(frozen=True)
class Snapshot:
    """What a reader sees, read in one SQLite transaction: a generation, one vector set's
    committed rows and file, and the rows (ascending) and ids of the live items."""

    generation: int
    vector_set: str
    dim: int
    rows: int
    file: Path
    live_rows: np.ndarray
    live_ids: np.ndarray
    items: LiveItems | None = field(default=None, compare=False, repr=False)  # image set only
    _masks: dict = field(default_factory=dict, compare=False, repr=False)

    def live_mask(self, n: int | None = None) -> np.ndarray:
        """Boolean mask over the first ``n`` rows (default: all committed): True where live.
        Built once per snapshot and length, read-only."""
        n = self.rows if n is None else n
        if n not in self._masks:
            mask = _row_mask(self.live_rows, n)
            mask.flags.writeable = False
            self._masks[n] = mask
        return self._masks[n]

    def all_live(self, n: int | None = None) -> bool:
        """Whether every one of the first ``n`` rows (default: all committed) is live (then a
        search needs no mask). Live rows are distinct, so this is a count, made once."""
        n = self.rows if n is None else n
        if ("all", n) not in self._masks:
            self._masks["all", n] = int(np.count_nonzero(self.live_rows < n)) == n
        return self._masks["all", n]


def surviving_rows(batch_ends: Sequence[int], present: int) -> int:
    """How many rows a vector file that holds ``present`` whole rows keeps after a repair: up to
    the end of the last checksum batch wholly present (a partial batch cannot be verified)."""
    if not batch_ends:
        return present
    return max((end for end in batch_ends if end <= present), default=0)


_FEW_ROWS = 64  # up to this many rows, intact_rows checks row by row in Python
RUNS_FORMAT = 1  # part of the stamp of a vector set's cached live runs (``cache/live-SET.npy``)


class _Batches:
    """A vector set's checksum batches (sorted by start) and this process's verdict on each:
    1 intact, 0 changed, -1 not hashed yet."""

    def __init__(self, first: list[int], counts: list[int], digests: list[str]):
        self.first = first  # starts as Python ints, for bisect
        self.ends = [s + c for s, c in zip(first, counts)]
        self.starts = np.array(first, dtype=np.int64)
        self.counts = np.array(counts, dtype=np.int64)
        self.digests = digests
        self.verdicts = np.full(len(first), -1, np.int8)

    def verdict(self, b: int, vectors: np.ndarray) -> int:
        """Batch ``b``'s verdict, hashing its rows of ``vectors`` the first time."""
        if self.verdicts[b] < 0:
            data = np.ascontiguousarray(vectors[self.first[b]:self.ends[b]]).tobytes()
            self.verdicts[b] = hashlib.sha256(data).hexdigest() == self.digests[b]
        return int(self.verdicts[b])

    def carry_verdicts(self, old: _Batches) -> None:
        """Keep ``old``'s verdicts for the leading batches both hold unchanged."""
        same = 0
        for a, b in zip(zip(old.first, old.ends, old.digests), zip(self.first, self.ends,
                                                                     self.digests)):
            if a != b:
                break
            same += 1
        self.verdicts[:same] = old.verdicts[:same]


class Collection:
    """A directory-backed image collection (see the module docstring for the layout)."""

    def __init__(self, path: Path, info: CollectionInfo, model=None):
        self.path = Path(path)
        self.info = info
        self._model = model
        # Derived from the database, kept per generation: reused while nothing was committed.
        self._snaps: dict[str, Snapshot] = {}
        # Inside `reading`: each set's snapshot and checked memory map, one per query.
        self._pinned: dict | None = None
        self._maps: dict[str, tuple[tuple, np.memmap]] = {}  # each set's current memory map
        self.backend = LocalBackend(self.path)
        self._caches = Caches(self.path / "cache")
        self._batch_index: dict[str, tuple] = {}  # per set: ((generation, file), _Batches)
        self.repairs: list[str] = []  # what the writer repaired on taking the lock, for reports
        self._db = _connect(self.path / DB_NAME)

    # -- creating and opening -------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, model="bundled") -> Collection:
        """Create an empty collection at ``path`` for ``model`` (a spec string or a loaded model)."""
        path = Path(path).expanduser()
        if (path / DB_NAME).exists():
            raise CollectionExistsError(f"{path} is already a collection; open it instead")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise CollectionError(f"{path} exists and is not an empty directory; choose a new path")
        loaded = cls.load_model(model) if isinstance(model, str) else model
        info = CollectionInfo(
            model=_model_spec(loaded), fingerprint=loaded.fingerprint, model_type=loaded.model_type,
            dim=loaded.dim, preprocess=_preprocess_dict(loaded), created_at=time.time(),
        )
        # Built beside the target and renamed into place, so a killed create leaves no half collection.
        staging = path.parent / f".{path.name}.creating-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            _write_empty_collection(staging, info)
            if path.exists():
                path.rmdir()
            os.rename(staging, path)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            if (path / DB_NAME).exists():  # another process created it first
                raise CollectionExistsError(f"{path} was just created by another process; "
                                            "open it instead") from None
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise CollectionError(f"{path} exists and is not an empty directory; "
                                      "choose a new path") from None
            raise
        return cls(path, info, loaded)

    @classmethod
    def open(cls, path: str | os.PathLike, model=None) -> Collection:
        """Open an existing collection; ``model`` (spec or loaded) must match the one it was built
        with. A collection of an older schema is migrated; a newer one is refused."""
        path = Path(path).expanduser()
        db_file = path / DB_NAME
        if not db_file.is_file():
            raise CollectionError(
                f"{path} is not a sharpclip collection (no {DB_NAME}); create it with "
                f"`sharpclip index FOLDER -c {path}`"
            )
        try:
            db = _connect(db_file)
            try:
                schema.migrate(db, path)
                meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
            finally:
                db.close()
            info = CollectionInfo(**{k: meta[k] for k in CollectionInfo.__dataclass_fields__})
        except schema.SchemaError as error:
            raise CollectionError(str(error)) from None
        except sqlite3.OperationalError as error:  # locked, I/O error: often a writer's moment
            raise CollectionError(
                f"{db_file}: the catalog cannot be read right now ({error}); if another sharpclip "
                "process is writing this collection, let it finish and try again, else run "
                f"`sharpclip check -c {path}`") from None
        except (sqlite3.DatabaseError, KeyError, TypeError, ValueError) as error:
            raise DamagedCollectionError(catalog_damage_message(path, error)) from None
        loaded = None
        if model is not None:
            loaded = cls.load_model(model) if isinstance(model, str) else model
            if loaded.fingerprint != info.fingerprint:
                raise ModelMismatchError(
                    f"{path} was indexed with model {info.model!r} (fingerprint {info.fingerprint}) "
                    f"but model {loaded.name!r} (fingerprint {loaded.fingerprint}) was given; "
                    f"use --model {info.model}, or re-embed its items with the new model: "
                    f"`sharpclip reindex -c {path} --model {loaded.name} --out NEW_DIR`"
                )
        return cls(path, info, loaded)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, model=None) -> Collection:
        """Open ``path`` if it is a collection, else create it (with ``model`` or the bundled one);
        when another process creates it at the same moment, its collection is opened."""
        if not (Path(path).expanduser() / DB_NAME).is_file():
            try:
                return cls.create(path, "bundled" if model is None else model)
            except CollectionExistsError:
                pass
        return cls.open(path, model)

    @staticmethod
    def load_model(spec: str):
        """Load a model from its spec; the store cannot (it imports nothing above ``data/``): the
        facade, :class:`sharpclip.collection.Collection`, can."""
        raise CollectionError(f"model {spec!r} must be passed loaded: open the collection with "
                              "sharpclip.Collection, which loads models")

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
            model = self.load_model(self.info.model)
            if model.fingerprint != self.info.fingerprint:
                raise ModelMismatchError(
                    f"model {self.info.model!r} now has fingerprint {model.fingerprint}, but "
                    f"{self.path} was indexed with {self.info.fingerprint}: its weights or "
                    "preprocessing changed; re-embed its items into a new collection with "
                    f"`sharpclip reindex -c {self.path} --model {self.info.model} --out NEW_DIR`"
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
        """The item stored for ``path`` (as :func:`~sharpclip.data.imagefiles.path_key` names it).
        A path given exactly as it is stored (absolute, normalised: a stored key is resolved
        already) is found without resolving it again (a ``realpath``, 0.2 ms of a query)."""
        given = os.fspath(path)
        query = f"SELECT {_ITEM_COLUMNS} FROM items WHERE path = ?"
        row = None
        if os.path.isabs(given) and os.path.normpath(given) == given:
            row = self._db.execute(query, (given,)).fetchone()
        if row is None:
            row = self._db.execute(query, (path_key(path),)).fetchone()
        return Item(*row) if row else None

    def items_by_id(self, item_ids: Sequence[int]) -> list[Item]:
        """The items with these ids (those that exist), in no particular order."""
        return [Item(*row) for row in self._rows_by_id(_ITEM_COLUMNS, item_ids)]

    def paths_by_id(self, item_ids: Sequence[int]) -> dict[int, str]:
        """``{id: path}`` of the items with these ids (those that exist): live items from the
        snapshot's :class:`LiveItems`, others from the catalog."""
        found = self.snapshot().items.paths_by_id(item_ids)
        missing = [int(i) for i in item_ids if i not in found]
        if missing:
            found.update(self._rows_by_id("id, path", missing))
        return found

    def live_item(self, path: str) -> tuple[int, int] | None:
        """(id, image row) of the live item stored as exactly ``path`` (absolute and normalised,
        as :func:`~sharpclip.data.imagefiles.path_key` stores it), read from the snapshot without
        a catalog query; None when no live item is stored so (use :meth:`item`)."""
        items = self.snapshot().items
        at = items.find(path)
        return None if at is None else (int(items.ids[at]), int(items.rows[at]))

    def _rows_by_id(self, columns: str, item_ids: Sequence[int]) -> Iterator[tuple]:
        """``columns`` of the items with these ids, 500 ids per query (SQLite's bound on
        parameters)."""
        ids = [int(i) for i in item_ids]
        for at in range(0, len(ids), 500):
            chunk = ids[at:at + 500]
            yield from self._db.execute(
                f"SELECT {columns} FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk)

    def counts(self) -> dict[str, int]:
        """Number of items per status."""
        counts = dict(self._db.execute("SELECT status, COUNT(*) FROM items GROUP BY status"))
        return {"ok": counts.get("ok", 0), "error": counts.get("error", 0)}

    def vector_sets(self) -> list[tuple[str, int, int, Path]]:
        """(name, dim, committed rows, file) of every vector set."""
        return [(name, int(dim), int(rows), self.path / "vectors" / file) for name, dim, rows, file
                in self._db.execute("SELECT name, dim, rows, file FROM vector_sets ORDER BY name")]

    @contextmanager
    def reading(self):
        """Pin each vector set's snapshot for the duration (one query): the first
        :meth:`snapshot` of a set inside asks the catalog for the generation, later ones reuse
        it, so one query sees one state and pays one catalog read per set. The catalog reads
        inside share one read transaction (WAL: writers in other processes go on), so they
        see the same state and SQLite takes and drops its file lock once per query, not once
        per statement (three system calls each). Nothing inside may write to the catalog."""
        if self._pinned is not None:  # nested: the outer scope's pins hold
            yield self
            return
        self._pinned = {}
        began = not self._db.in_transaction
        if began:
            self._db.execute("BEGIN")
        try:
            yield self
        finally:
            self._pinned = None
            if began:
                self._db.execute("COMMIT")

    def snapshot(self, name: str = IMAGE_SET) -> Snapshot:
        """The reader's consistent view of vector set ``name`` (see :class:`Snapshot`), read again
        only when the generation has moved on (reading every live row costs ~0.2 s at 250k items);
        inside :meth:`reading`, the one pinned for the query."""
        if self._pinned is not None:
            if name not in self._pinned:
                self._pinned[name] = self._current_snapshot(name)
            return self._pinned[name]
        return self._current_snapshot(name)

    def _current_snapshot(self, name: str) -> Snapshot:
        generation = self.generation
        cached = self._snaps.get(name)
        if cached is not None and cached.generation == generation:
            return cached
        db = self._db
        began = not db.in_transaction  # inside `reading`, its transaction serves
        if began:
            db.execute("BEGIN")  # one read transaction: WAL gives it a single snapshot
        items = None
        try:
            meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN "
                                   "('generation', 'generation_id')"))
            generation = int(json.loads(meta["generation"]))
            found = db.execute("SELECT dim, rows, file FROM vector_sets WHERE name = ?",
                               (name,)).fetchone()
            if found is None:
                raise CollectionError(self._no_set_message(name))
            # what identifies this state of the catalog, for the caches of its live rows
            state = f"{self.info.created_at!r}:{meta.get('generation_id')}:{found[2]}:{found[1]}"
            if name == IMAGE_SET:
                items = self._live_items(generation, f"{LiveItems.FORMAT}:{state}")
                live_rows, live_ids = items.rows, items.ids
            else:
                runs = self._live_runs(name, generation, f"{RUNS_FORMAT}:{state}")
                live_rows = _expand_runs(runs[:, 0], runs[:, 1])
                live_ids = np.repeat(runs[:, 2], runs[:, 1])
        finally:
            if began:
                db.execute("COMMIT")
        dim, rows, file = int(found[0]), int(found[1]), self.path / "vectors" / found[2]
        self._snaps[name] = Snapshot(generation, name, dim, rows, file, live_rows, live_ids, items)
        return self._snaps[name]

    def _live_items(self, generation: int, stamp: str) -> LiveItems:
        """The live items of ``generation`` (inside the snapshot's read transaction): from the
        cache when it holds them for this generation and ``stamp`` (what else identifies the
        catalog's state: its creation, the generation's random id, the image file and rows),
        else read from the catalog (one query) and cached."""
        packed = self._caches.get("live-items", stamp, generation)
        items = None if packed is None else LiveItems.unpack(packed)
        if items is not None:
            return items
        packed = LiveItems.from_catalog(self._db.execute(
            "SELECT row, id, CAST(path AS BLOB) FROM items WHERE status = 'ok' ORDER BY row"
        ).fetchall()).pack()
        self._caches.put("live-items", stamp, packed, generation)
        return LiveItems.unpack(self._caches.get("live-items", stamp, generation))  # the kept copy

    def _live_runs(self, name: str, generation: int, stamp: str) -> np.ndarray:
        """(start, count, item id) of each live item's rows in set ``name``, by start, for
        ``generation`` (inside the snapshot's read transaction): from the cache when it holds
        them for this generation and ``stamp`` (as :meth:`_live_items`), else read from the
        catalog (one join over the set's rows: ~0.07 s at 100k items) and cached."""
        cached = self._caches.get(f"live-{name}", stamp, generation)
        if cached is not None and cached.dtype == np.int64 and cached.ndim == 2 \
                and cached.shape[1] == 3:
            return cached
        runs = np.array(self._db.execute(
            "SELECT v.start, v.count, v.item_id FROM item_vectors v JOIN items i ON "
            "i.id = v.item_id WHERE v.vector_set = ? AND i.status = 'ok' ORDER BY v.start",
            (name,)).fetchall(), dtype=np.int64).reshape(-1, 3)
        self._caches.put(f"live-{name}", stamp, runs, generation)
        return runs

    def _no_set_message(self, name: str) -> str:
        if name in (REGIONS_SET, CALIBRATED_SET):
            what, flag = (("region", "--regions") if name == REGIONS_SET
                          else ("calibrated", "--calibrate"))
            return (f"{self.path} has no {what} vectors; add them with "
                    f"`sharpclip index FOLDER... -c {self.path} {flag}`")
        return f"{self.path} has no vector set {name!r}"

    def vector_set(self, name: str) -> VectorSet | None:
        """The vector set ``name``, or None when the collection has none of that name."""
        found = self._db.execute("SELECT dim, rows, file, params FROM vector_sets WHERE name = ?",
                                 (name,)).fetchone()
        if found is None:
            return None
        return VectorSet(name, int(found[0]), int(found[1]), self.path / "vectors" / found[2],
                         json.loads(found[3]))

    def rows_for_items(self, name: str, item_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(start, count) of each item's rows in set ``name``, in the order of ``item_ids``
        (count 0: the item has none), read by the catalog's index, without a scan."""
        ids = [int(i) for i in item_ids]
        found: dict[int, tuple[int, int]] = {}
        for at in range(0, len(ids), 500):
            chunk = ids[at:at + 500]
            marks = ",".join("?" * len(chunk))
            if name == IMAGE_SET:
                query = (f"SELECT id, row, 1 FROM items WHERE status = 'ok' AND row IS NOT NULL "
                         f"AND id IN ({marks})")
                args = chunk
            else:
                query = (f"SELECT item_id, start, count FROM item_vectors WHERE vector_set = ? "
                         f"AND item_id IN ({marks})")
                args = [name, *chunk]
            found.update((i, (s, c)) for i, s, c in self._db.execute(query, args))
        pairs = np.array([found.get(i, (0, 0)) for i in ids], dtype=np.int64).reshape(-1, 2)
        return pairs[:, 0], pairs[:, 1]

    def items_lacking(self, name: str) -> list[Item]:
        """Embedded items that have no rows in vector set ``name``."""
        rows = self._db.execute(
            f"SELECT {_ITEM_COLUMNS} FROM items WHERE status = 'ok' AND id NOT IN "
            "(SELECT item_id FROM item_vectors WHERE vector_set = ?) ORDER BY id", (name,))
        return [Item(*row) for row in rows]

    def live_row_map(self, name: str = IMAGE_SET) -> dict[int, tuple[int, str]]:
        """Every row of set ``name`` that a live item uses -> (item id, path)."""
        if name == IMAGE_SET:
            query, args = "SELECT row, 1, id, path FROM items WHERE status = 'ok'", ()
        else:
            query = ("SELECT v.start, v.count, i.id, i.path FROM item_vectors v JOIN items i ON "
                     "i.id = v.item_id WHERE v.vector_set = ? AND i.status = 'ok'")
            args = (name,)
        return {row: (item_id, path) for start, count, item_id, path in self._db.execute(query, args)
                if start is not None for row in range(start, start + count)}

    def vectors(self, name: str = IMAGE_SET, snapshot: Snapshot | None = None) -> np.ndarray:
        """The committed rows of a vector set, memory-mapped read-only (rows x dim, float32).

        Raises:
            DamagedCollectionError: the file holds fewer rows than were committed (deleted or
                truncated by something else); never padded with zeros.
        """
        snap = snapshot or self.snapshot(name)
        if self._pinned is not None and self._pinned.get(snap.vector_set) is snap:
            checked = self._pinned.get(("map", snap.vector_set))
            if checked is not None:  # checked once in this query already
                return checked
        expected = snap.rows * snap.dim * 4
        try:
            stat = snap.file.stat()
            size = stat.st_size
        except FileNotFoundError:
            size = None
        if snap.rows and (size is None or size < expected):
            raise DamagedCollectionError(short_file_message(self.path, snap.file, snap.rows,
                                                            (size or 0) // (snap.dim * 4), size))
        if snap.rows == 0:
            return np.zeros((0, snap.dim), np.float32)
        # One map per set and file version, reused while only appends happen; the size check
        # above runs on every call, so a file cut at rest still raises instead of being read.
        key = (snap.file, snap.rows, snap.dim, stat.st_ino)
        cached = self._maps.get(snap.vector_set)
        if cached is None or cached[0] != key:
            cached = key, np.memmap(snap.file, dtype=np.float32, mode="r",
                                    shape=(snap.rows, snap.dim))
            self._maps[snap.vector_set] = cached
        if self._pinned is not None and self._pinned.get(snap.vector_set) is snap:
            self._pinned["map", snap.vector_set] = cached[1]
        return cached[1]

    def read_vectors(self, name: str = IMAGE_SET) -> tuple[Snapshot, np.ndarray]:
        """A snapshot and its vectors; read once more if a writer swapped the vector file
        (``compact``) between the two, so only a file damaged at rest raises."""
        snap = self.snapshot(name)
        try:
            return snap, self.vectors(name, snapshot=snap)
        except DamagedCollectionError:
            if self.generation == snap.generation:
                raise
        snap = self.snapshot(name)
        return snap, self.vectors(name, snapshot=snap)

    def live_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, item ids) of the embedded items: the only rows search may return."""
        snap = self.snapshot()
        return snap.live_rows, snap.live_ids

    def paths_for_rows(self, rows: Sequence[int]) -> dict[int, tuple[int, str]]:
        """Map vector rows to (item id, path) for live items (the snapshot's live items)."""
        items = self.snapshot().items
        live, rows = items.rows, np.asarray(rows, dtype=np.int64).reshape(-1)
        if not len(live) or not len(rows):
            return {}
        at = np.minimum(np.searchsorted(live, rows), len(live) - 1)
        found = live[at] == rows
        return {row: (int(items.ids[i]), items.path_at(i))
                for row, i in zip(rows[found].tolist(), at[found].tolist())}

    def intact_rows(self, rows: Sequence[int], name: str = IMAGE_SET) -> np.ndarray:
        """Mask over ``rows``: False where the row's committed batch no longer matches the
        checksum stored at commit (the bytes changed on disk). Each batch is hashed once per
        process and file; rows of no recorded batch (older than checksums) count as intact.
        Search drops hits that fail, so a damaged vector never returns a wrong file."""
        snap, vectors = self.read_vectors(name)
        batches = self._batches(snap)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) <= _FEW_ROWS:  # a query's hits: per row, without array temporaries
            out = np.ones(len(rows), dtype=bool)
            for i, row in enumerate(rows.tolist()):
                b = bisect.bisect_right(batches.first, row) - 1
                if b >= 0 and row < batches.ends[b] and row < snap.rows:
                    out[i] = batches.verdict(b, vectors) == 1
            return out
        at = np.searchsorted(batches.starts, rows, side="right") - 1
        inside = (rows >= 0) & (rows < snap.rows) & (at >= 0)
        inside[inside] &= rows[inside] < (batches.starts + batches.counts)[at[inside]]
        batch = at[inside]
        pending = batch[batches.verdicts[batch] < 0]
        for b in np.unique(pending).tolist() if pending.size else ():
            batches.verdict(b, vectors)
        out = np.ones(len(rows), dtype=bool)
        out[inside] = batches.verdicts[batch] == 1
        return out

    def _batches(self, snap: Snapshot) -> _Batches:
        """The snapshot's checksum batches by start, read once per generation (one query, not
        one per hit). Verdicts carry over from the previous generation for the batches that are
        the same (start, count, checksum) in the same file."""
        name = snap.vector_set
        mapped = self._maps.get(name)  # the file version `vectors` just checked, if mapped
        inode = mapped[0][3] if mapped and mapped[0][0] == snap.file else (
            snap.file.stat().st_ino if snap.file.exists() else 0)
        key = (name, snap.generation, snap.file, inode)
        previous = self._batch_index.get(name)
        if previous is not None and previous[0] == key:
            return previous[1]
        found = self._db.execute("SELECT start, count, sha256 FROM vector_batches WHERE "
                                 "vector_set = ? ORDER BY start", (name,)).fetchall()
        batches = _Batches([f[0] for f in found], [f[1] for f in found], [f[2] for f in found])
        if previous is not None and previous[0][2:] == key[2:]:
            batches.carry_verdicts(previous[1])
        self._batch_index[name] = (key, batches)
        return batches

    def _vector_set(self, name: str) -> tuple[int, int, Path]:
        found = self.vector_set(name)
        if found is None:
            raise CollectionError(self._no_set_message(name))
        return found.dim, found.rows, found.file

    # -- writing --------------------------------------------------------------------------------

    @contextmanager
    def writing(self):
        """Hold the collection's writer lock. On taking it: remove files a killed run left,
        trim a torn vector tail, and mark items whose vectors are missing as ``vectors_lost``
        (reported in :attr:`repairs`) so that the next ``index`` re-embeds them."""
        with open(self.path / "lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CollectionError(
                    f"{self.path} is being written by another sharpclip process; wait for it to finish"
                ) from None
            try:
                self._remove_leftovers()
                self._reconcile_vector_files()
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _remove_leftovers(self) -> None:
        """Delete temporary files and vector/index files no vector set refers to (a killed
        ``compact`` or save leaves them). Only the lock holder calls this."""
        current = {file.name for _, _, _, file in self.vector_sets()}
        indexes = {index_file_for(self.path / "vectors" / name).name for name in current}
        stale = time.time() - 3600  # readers write caches too: only their long-dead temporaries
        for folder, keep in (("vectors", current), ("index", indexes), ("cache", None)):
            directory = self.path / folder
            if not directory.is_dir():
                continue
            for file in directory.iterdir():
                if keep is None:
                    if file.name.startswith(".") and file.stat().st_mtime < stale:
                        file.unlink(missing_ok=True)
                elif file.name.startswith(".") or file.name not in keep:
                    file.unlink(missing_ok=True)

    def _reconcile_vector_files(self) -> None:
        for name, dim, rows, file in self.vector_sets():
            size = file.stat().st_size if file.exists() else None
            if size is not None and size > rows * dim * 4:
                os.truncate(file, rows * dim * 4)  # a torn tail: appended, never committed
            elif rows and (size is None or size < rows * dim * 4):
                valid = (size or 0) // (dim * 4)
                lost = self.truncate_vector_set(name, valid, short_file_message(
                    self.path, file, rows, valid, size, writer=True))
                self.repairs.append(f"{file} held {valid} of its {rows} committed vectors: "
                                    f"{lost} items lost theirs and are re-embedded by `index`")

    def truncate_vector_set(self, name: str, valid_rows: int, detail: str) -> int:
        """Keep only the rows of ``name`` before the first checksum batch not wholly within
        ``valid_rows``. Items whose image vector lay past it are marked ``vectors_lost`` (their
        files are re-embedded by the next ``index``); items whose rows of another set did lose
        only those (the next ``index`` of that set adds them again). Returns how many items lost
        vectors."""
        dim, _, file = self._vector_set(name)
        db = self._db
        with transaction(db):
            ends = [s + c for s, c in db.execute(
                "SELECT start, count FROM vector_batches WHERE vector_set = ?", (name,))]
            cut = surviving_rows(ends, valid_rows)
            if name == IMAGE_SET:
                lost = [i for (i,) in db.execute(
                    "SELECT id FROM items WHERE status = 'ok' AND row >= ?", (cut,))]
                self._mark_lost(lost, detail)
            else:
                lost = [i for (i,) in db.execute("SELECT item_id FROM item_vectors WHERE "
                                                 "vector_set = ? AND start + count > ?", (name, cut))]
                self._forget_set_rows(name, lost)
            db.execute("DELETE FROM vector_batches WHERE vector_set = ? AND start >= ?", (name, cut))
            db.execute("UPDATE vector_sets SET rows = ? WHERE name = ?", (cut, name))
            self._bump_generation()
        file.parent.mkdir(exist_ok=True)
        with open(file, "ab"):
            pass
        if file.stat().st_size > cut * dim * 4:
            os.truncate(file, cut * dim * 4)
        return len(lost)

    def forget_vectors(self, item_ids: Sequence[int], detail: str, name: str = IMAGE_SET) -> None:
        """Forget damaged stored vectors, in one transaction: of the ``image`` set, the items are
        marked ``vectors_lost`` (``index`` re-embeds their files); of another set, only the items'
        rows in it are dropped (``index`` of that set adds them again)."""
        db = self._db
        with transaction(db):
            if name == IMAGE_SET:
                self._mark_lost(item_ids, detail)
            else:
                self._forget_set_rows(name, item_ids)
            self._bump_generation()

    def _forget_set_rows(self, name: str, item_ids: Sequence[int]) -> None:
        self._db.executemany("DELETE FROM item_vectors WHERE vector_set = ? AND item_id = ?",
                             [(name, int(i)) for i in item_ids])

    def add_vector_set(self, name: str, dim: int, params: Mapping) -> VectorSet:
        """Create vector set ``name`` (call under ``writing``); an existing one is returned when
        its dim and parameters match, else CollectionError says what differs."""
        params = dict(params)
        found = self.vector_set(name)
        if found is not None:
            if found.dim != dim or found.params != params:
                raise CollectionError(
                    f"{self.path}: its {name!r} vectors were made with {found.params} (dim "
                    f"{found.dim}), not {params} (dim {dim}); keep those settings, or index into "
                    "a new collection with -c NEW_DIR")
            return found
        file = f"{name}.f32"
        (self.path / "vectors" / file).touch()
        with transaction(self._db) as db:
            db.execute("INSERT INTO vector_sets VALUES (?, ?, 0, ?, ?)",
                       (name, dim, file, json.dumps(params, sort_keys=True)))
        return self.vector_set(name)

    def _mark_lost(self, item_ids: Sequence[int], detail: str) -> None:
        # Size and mtime -1 so that `index` sees the file as changed; no hash, so it re-embeds.
        self._db.executemany(
            "UPDATE items SET status = 'error', reason = ?, error = ?, hash = NULL, row = NULL, "
            "size = -1, mtime_ns = -1 WHERE id = ?", [(VECTORS_LOST, detail, i) for i in item_ids])
        self._db.executemany("DELETE FROM item_vectors WHERE item_id = ?",
                             [(int(i),) for i in item_ids])

    def commit(self, updates: Sequence[ItemUpdate],
               vectors: np.ndarray | Mapping[str, np.ndarray] | None = None) -> None:
        """Atomically record a batch (call under ``writing``): append each set's vectors
        (``vectors`` is ``{set: array}``; a bare array is the ``image`` set's), then upsert the
        items, their rows in every set and the batches' checksums in one transaction.

        Embedded items get fresh rows (a changed file's old rows are orphaned, never reused);
        failed items keep no row; a move re-points the stored item (and its rows) to its new path.
        """
        arrays = {IMAGE_SET: vectors} if isinstance(vectors, np.ndarray) else dict(vectors or {})
        appended = {name: self._append(name, array) for name, array in arrays.items()
                    if array is not None and len(array)}
        now = time.time()
        db = self._db
        with transaction(db):
            image_start = appended.get(IMAGE_SET, (0, 0, ""))[0]
            for u in updates:
                item_id = self._upsert(u, None if u.vector_index is None
                                       else image_start + u.vector_index, now)
                if item_id is not None:
                    db.executemany(
                        "INSERT OR REPLACE INTO item_vectors VALUES (?, ?, ?, ?)",
                        [(name, item_id, appended[name][0] + offset, count)
                         for name, offset, count in u.set_rows if count])
            for name, (start, count, digest) in appended.items():
                db.execute("UPDATE vector_sets SET rows = rows + ? WHERE name = ?", (count, name))
                db.execute("INSERT INTO vector_batches VALUES (?, ?, ?, ?)",
                           (name, start, count, digest))
            self._bump_generation()
        crash_point("commit.committed")

    def _append(self, name: str, vectors: np.ndarray) -> tuple[int, int, str]:
        """Append and flush ``vectors`` to set ``name``'s file; (first row, count, sha256)."""
        dim, rows, file = self._vector_set(name)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            raise CollectionError(f"{name} vectors have shape {vectors.shape}, the set has dim {dim}")
        data = vectors.tobytes()
        size = file.stat().st_size if file.exists() else None
        if size != rows * dim * 4:  # deleted or cut under a running writer: never misalign
            raise DamagedCollectionError(
                f"{file} changed while this run was writing it ({size} bytes, expected "
                f"{rows * dim * 4}); run the same command again to re-embed what was lost")
        with open(file, "ab") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        crash_point("commit.vectors_appended")
        return rows, len(vectors), hashlib.sha256(data).hexdigest()

    def _upsert(self, u: ItemUpdate, row: int | None, now: float) -> int | None:
        """Record one update (inside the commit's transaction); the item's id when it is embedded
        and may take rows of other sets, else None."""
        db = self._db
        if u.previous_path is not None:
            db.execute("DELETE FROM items WHERE path = ?", (u.path,))
            db.execute("UPDATE items SET path = ?, size = ?, mtime_ns = ?, updated_at = ? "
                       "WHERE path = ?", (u.path, u.size, u.mtime_ns, now, u.previous_path))
            return None
        if u.status == "ok" and row is None:  # unchanged content, new size/mtime stamp
            db.execute("UPDATE items SET size = ?, mtime_ns = ?, updated_at = ? WHERE path = ?",
                       (u.size, u.mtime_ns, now, u.path))
            if not u.set_rows:  # a touched file: nothing else to record
                return None
            found = db.execute("SELECT id FROM items WHERE path = ? AND status = 'ok'",
                               (u.path,)).fetchone()
            return None if found is None else found[0]
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
        item_id = db.execute("SELECT id FROM items WHERE path = ?", (u.path,)).fetchone()[0]
        db.execute("DELETE FROM item_vectors WHERE item_id = ?", (item_id,))  # new content or none
        return item_id if u.status == "ok" else None

    def remove(self, paths: Iterable[str | os.PathLike]) -> int:
        """Forget the items at ``paths`` (files or directories, matched by
        :func:`~sharpclip.data.imagefiles.path_key`); returns how many."""
        keys = [path_key(p) for p in paths]
        db = self._db
        with transaction(db):
            removed = 0
            for key in keys:
                removed += db.execute("DELETE FROM items WHERE path = ? OR path LIKE ? ESCAPE '\\'",
                                      (key, _like_prefix(key))).rowcount
            if removed:
                self._bump_generation()
        crash_point("remove.committed")
        return removed

    def _bump_generation(self) -> None:
        self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        # A random id per generation: a cache stamped with a generation number can never vouch
        # for another state that reached the same number (a catalog restored from a backup).
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('generation_id', ?)",
                         (json.dumps(secrets.token_hex(8)),))

    # -- search ---------------------------------------------------------------------------------

    def live_mask(self, rows: int | None = None) -> np.ndarray:
        """Boolean mask over the image vector set's rows: True where a live item points."""
        return self.snapshot().live_mask(rows)

    def nearest(self, queries: np.ndarray, k: int, exact: bool | None = None,
                config: SearchConfig | None = None,
                vector_set: str = IMAGE_SET) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, rows) of the live rows of ``vector_set`` per query (map rows to
        items with :meth:`snapshot`): exact scan while the collection is below
        ``config.ann_threshold`` or when ``exact``, else the saved HNSW index (see
        :class:`~sharpclip.store.local_backend.LocalBackend`)."""
        config = config or SearchConfig()
        snap, vectors = self.read_vectors(vector_set)
        use_ann = self.uses_ann(len(snap.live_rows), exact, config)
        return self.backend.nearest(snap, vectors, queries, k, use_ann)

    @staticmethod
    def uses_ann(live: int, exact: bool | None, config: SearchConfig | None = None) -> bool:
        """Whether :meth:`nearest` is to answer from the ANN index for ``live`` items."""
        return not exact and needs_ann(live, (config or SearchConfig()).ann_threshold)

    def has_index(self) -> bool:
        """Whether a readable ANN index file exists for the current vector file."""
        return self.backend.reader_index(*self.read_vectors()) is not None

    def index_settings(self) -> dict | None:
        """The saved ANN index's codec, search breadth (and the recall it was tuned to) and
        memory per vector, or None when there is no usable index."""
        found = self.backend.reader_index(*self.read_vectors())
        return None if found is None else found[0].settings()

    def sync_index(self, config: SearchConfig | None = None, progress: bool = False,
                   recall: float | None = None) -> bool:
        """Bring the saved ANN index up to date with the live rows (call under ``writing``):
        built when the collection first reaches ``config.ann_threshold``, then kept in step, its
        search breadth tuned to recall@10 ``recall`` (see
        :meth:`~sharpclip.store.local_backend.LocalBackend.sync`). Returns whether the file was
        written."""
        config = config or SearchConfig()
        snap, vectors = self.read_vectors()
        if not self.uses_ann(len(snap.live_rows), False, config):
            return False
        return self.backend.sync(snap, vectors, config, progress, recall)

    # -- derived caches -------------------------------------------------------------------------

    def cache_get(self, name: str, key: str, generation: int | None = None) -> np.ndarray | None:
        """A cached array stored under ``key`` at ``generation`` (default: the current one),
        intact, else None."""
        return self._caches.get(name, key, self.generation if generation is None else generation)

    def cache_put(self, name: str, key: str, array: np.ndarray, generation: int) -> None:
        """Store a derived array under ``key``, stamped with the ``generation`` of the data it
        was computed from (see :class:`~sharpclip.store.caches.Caches`)."""
        self._caches.put(name, key, array, generation)


@contextmanager
def transaction(db: sqlite3.Connection):
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back if anything raises (the writer's lock on
    the catalog for the duration: every change of a batch lands together or not at all)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _connect(file: Path) -> sqlite3.Connection:
    db = sqlite3.connect(file, timeout=60, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


def _write_empty_collection(folder: Path, info: CollectionInfo) -> None:
    (folder / "vectors").mkdir(parents=True)
    db = sqlite3.connect(folder / DB_NAME, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN")
        schema.create_tables(db)
        rows = {"schema_version": SCHEMA_VERSION, "generation": 0, **info.__dict__}
        db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in rows.items()])
        db.execute("INSERT INTO vector_sets (name, dim, rows, file) VALUES (?, ?, 0, ?)",
                   (IMAGE_SET, info.dim, f"{IMAGE_SET}.f32"))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    (folder / "vectors" / f"{IMAGE_SET}.f32").touch()


def catalog_damage_message(path: Path, error: Exception) -> str:
    """One line for a catalog SQLite cannot read (garbage header, deleted WAL, I/O error)."""
    return (f"{path / DB_NAME}: the catalog cannot be read ({error}); restore it from a backup, "
            "or index the folders again into a new collection (-c NEW_DIR)")


def short_file_message(path: Path, file: Path, rows: int, valid: int, size: int | None,
                       writer: bool = False) -> str:
    """One line for a vector file shorter than its committed rows."""
    what = "is missing" if size is None else f"holds {valid} of its {rows} committed vectors"
    if writer:
        return f"its vector was lost ({file.name} {what}); `sharpclip index` re-embeds it"
    return (f"{file} {what} (deleted or truncated outside sharpclip): run "
            f"`sharpclip check -c {path} --repair` to re-embed the affected items")


def _expand_runs(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The rows ``start .. start + count - 1`` of every run, concatenated (int64)."""
    if not len(starts):
        return np.zeros(0, np.int64)
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + offsets


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
