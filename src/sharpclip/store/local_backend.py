"""The local vector backend: exact scan or a saved HNSW index over a collection's memory-mapped
vector files (``COLL/vectors/*.f32``, ``COLL/index/*.faiss``).

The catalog (``store.collection``) decides *what* is live and hands this backend a snapshot and its
vectors; the backend answers top-k queries over them and keeps the index file in step. Readers
never write the index: the writer (``sync``, under the collection's lock) does. Readers map the
index's graph from its file (the OS pages it, and processes share it); the writer reads it into
memory to grow it, and replaces the file atomically, so a reader's mapping stays whole.

An index is tied to one vector file (a ``compact`` makes a new file, and so a new index), and it
is used only when it was built from that file's vectors (checked on a sample of rows). Rows
committed since the index was saved are scanned exactly and merged in; rows removed since are
masked; every hit is scored again from the vector file, so a damaged index can cost recall but
never give a wrong score.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from sharpclip.store.search_index import (
    FORMAT_VERSION,
    AnnIndex,
    SearchConfig,
    exact_topk,
    merge_topk,
)
from sharpclip.store.tuning import DEFAULT_RECALL, add_tuned

logger = logging.getLogger(__name__)


def index_matches(index: AnnIndex, vectors: np.ndarray, sample: int = 16) -> bool:
    """Whether ``index`` was built from ``vectors``: its rows lie within them and the vectors it
    stores for ``sample`` evenly spread live rows equal the file's (an index copied from another
    collection, or left from before a ``compact``, fails)."""
    if index.dim != vectors.shape[1]:
        return False
    kept = np.flatnonzero(~index.deleted_)
    if not len(kept):
        return True
    if index.rows_.max() >= len(vectors) or index.rows_.min() < 0:
        return False
    picked = kept[np.linspace(0, len(kept) - 1, min(sample, len(kept))).astype(np.int64)]
    return index.stores(picked, np.asarray(vectors[index.rows_[picked]]))


def load_index_for(file: Path, vectors: np.ndarray, sample: int = 16,
                   mmap: bool = False) -> AnnIndex:
    """The ANN index saved at ``file``, if it was built from ``vectors`` (checked on ``sample``
    rows, see :func:`index_matches`); else ValueError. ``mmap``: its graph mapped from the file
    (for searching only, see :meth:`AnnIndex.load`)."""
    index = AnnIndex.load(file, mmap=mmap)
    if not index_matches(index, vectors, sample):
        raise ValueError("it was not built from this vector file (its vectors differ)")
    return index


def _graph_change(built: SearchConfig, wanted: SearchConfig) -> str:
    """What differs between the graph an index was built with and the one ``wanted`` builds
    (degree, build width, codec), in words; empty when nothing does. A graph cannot be re-wired
    in place, so an index built before a default changed is rebuilt on its next sync."""
    changes = [f"{name} {old} -> {new}" for name, old, new in
               (("M", built.hnsw_m, wanted.hnsw_m),
                ("efConstruction", built.ef_construction, wanted.ef_construction),
                ("codec", built.codec, wanted.codec)) if old != new]
    return ", ".join(changes)


def index_file_for(vector_file: Path) -> Path:
    """The ANN index file that belongs to a vector file (a new file after ``compact``)."""
    return vector_file.parent.parent / "index" / f"{vector_file.stem}.faiss"


class LocalBackend:
    """Top-k search over one collection's vector files (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._indexes: dict[str, tuple[int, tuple, AnnIndex, np.ndarray]] = {}
        self._warned: set[str] = set()
        self.answered_by: str | None = None  # "ann" or "exact": how the last `nearest` answered

    def nearest(self, snap, vectors: np.ndarray, queries: np.ndarray, k: int,
                use_ann: bool) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, rows) among ``snap``'s live rows per query: from the saved index
        when ``use_ann`` and the index is usable, else (and as the fallback) the exact scan."""
        ann = self.reader_index(snap, vectors) if use_ann else None
        self.answered_by = "exact" if ann is None else "ann"
        if ann is None:
            n = len(vectors)
            return exact_topk(vectors, queries, k,
                              valid=None if snap.all_live(n) else snap.live_mask(n))
        index, fresh = ann
        hits = index.search(queries, k, vectors=vectors)  # re-ranked exactly from the file
        if not fresh.size:
            return hits
        extra_scores, at = exact_topk(np.asarray(vectors[fresh]), queries, k)
        return merge_topk(hits, (extra_scores, fresh[at]), k)

    def reader_index(self, snap, vectors: np.ndarray) -> tuple[AnnIndex, np.ndarray] | None:
        """(index with removed rows masked, live rows it lacks) for ``snap``, or None when there
        is no usable index file (a warning says how to build one); never writes."""
        file = index_file_for(snap.file)
        try:
            stat = file.stat()
        except FileNotFoundError:
            self._warn_once("no-index", f"{self.path}: no ANN index yet, searching exactly; "
                            f"`sharpclip check -c {self.path} --repair` or `index` builds it")
            return None
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        cached = self._indexes.get(snap.vector_set)
        if cached is not None and cached[0] == snap.generation and cached[1] == stamp:
            return cached[2], cached[3]
        if cached is not None and cached[1] == stamp:
            index = cached[2]  # the same file: removals masked in memory so far still hold
        else:
            try:
                index = load_index_for(file, vectors, mmap=True)  # paged by the OS, shared
            except (OSError, ValueError, RuntimeError) as error:
                self._warn_once(f"bad-index-{stamp}", f"{file}: unusable ANN index ({error}); "
                                f"searching exactly; `sharpclip check -c {self.path} --repair` "
                                "rebuilds it")
                return None
        indexed = index.rows_[~index.deleted_]
        index.remove(np.setdiff1d(indexed, snap.live_rows, assume_unique=True))
        fresh = np.setdiff1d(snap.live_rows, indexed, assume_unique=True)
        self._indexes[snap.vector_set] = (snap.generation, stamp, index, fresh)
        return index, fresh

    def sync(self, snap, vectors: np.ndarray, config: SearchConfig, progress: bool = False,
             recall: float | None = None) -> bool:
        """Bring ``snap``'s saved index up to date (the writer only): build it, rebuild it when too
        many rows were removed, the file is unusable, its graph settings (degree, build width,
        codec) are not ``config``'s or the recall target changed, else add and mask
        incrementally. The search breadth is tuned to recall@10 ``recall`` (default: the index's
        own target, else :data:`~sharpclip.store.tuning.DEFAULT_RECALL`) on held-out vectors
        whenever it is built or grows by more than a tenth
        (:func:`~sharpclip.store.tuning.add_tuned`). Returns whether the file was written."""
        file = index_file_for(snap.file)
        index = None
        if file.exists():
            try:
                index = load_index_for(file, vectors)
            except (OSError, ValueError, RuntimeError) as error:
                logger.warning("%s: unusable ANN index (%s); rebuilding it", file, error)
        tuned = (index.tuning_ if index is not None else None) or {}
        target = recall if recall is not None else tuned.get("target", DEFAULT_RECALL)
        live = snap.live_rows
        regraph = index is not None and _graph_change(index.config, config)
        if regraph:
            logger.info("%s: rebuilding the ANN index (%s) over %d vectors", file, regraph,
                        len(live))
        if index is None or regraph or index.needs_rebuild or tuned.get("target") != target:
            index = AnnIndex(vectors.shape[1], config)
            add_tuned(index, vectors, live, target, progress)
        else:
            indexed = index.rows_[~index.deleted_]
            stale = np.setdiff1d(indexed, live, assume_unique=True)
            fresh = np.setdiff1d(live, indexed, assume_unique=True)
            if not stale.size and not fresh.size and index.format_version_ == FORMAT_VERSION:
                return False  # (a file of an older format is written again: readers map it)
            index.remove(stale)
            if fresh.size > 0.1 * tuned["vectors"]:
                add_tuned(index, vectors, fresh, target, progress)
            elif fresh.size:
                index.add(np.asarray(vectors[fresh]), fresh, progress=progress)
        file.parent.mkdir(exist_ok=True)
        index.save(file)
        self._indexes.pop(snap.vector_set, None)
        return True

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)
