"""Top-K search over stored vectors: exact (chunked matrix product) and an HNSW index over faiss.

Pure array code: no SQLite, no files except the index's own ``save``/``load``. The collection owns
the vectors (an ``N x d`` float32 array, usually an ``np.memmap``) and the row numbers; this module
answers "which rows score highest for these queries".

Policy (``needs_ann``): exact search below ``SearchConfig.ann_threshold`` rows, the ANN index above
it unless the caller forces exact (``--exact``). Scores are inner products; for unit vectors that is
cosine similarity.

Why HNSW and not IVF (measured with ``benchmarks/search.py`` at 1M x 512 on 2 cores; figures in
``docs/performance.md``): on a cluster-free synthetic cloud (power-law spectrum), HNSW (M=32)
reached recall@10 0.963 at a p50 of 3.9 ms (efSearch 384), while IVF-Flat (4,000 lists) reached
0.921 at 5.9 ms (nprobe 64) and needed nprobe 256 (19.9 ms) for 0.99. IVF wins only on data made
of discrete clusters about as many as its lists. IVF builds faster (38 s vs 380 s at 1M) and can
delete natively, but it also needs a trained quantizer that goes stale as a collection grows,
while HNSW grows by insertion. Deletion in HNSW is a mask (see ``AnnIndex.remove``).

The graph holds half-precision codes of the vectors by default (``SearchConfig.codec``): half a
float32 copy's bytes (1,024 B/vector at d=512) beside the collection's own float32 file. Its best
candidates by their codes' scores (``RERANK_POOL``) are scored again exactly from the float32
vectors, so every score returned is exact. Its search breadth is tuned per collection
(``store.tuning``). A reader maps the saved graph from its file (``AnnIndex.load(mmap=True)``):
then its heap holds ~21-32 B/vector of it and the OS pages the rest.

Example::

    >>> import numpy as np
    >>> x = np.eye(4, dtype=np.float32)
    >>> scores, rows = exact_topk(x, x[2], k=2, valid=np.array([True, True, False, True]))
    >>> rows.tolist()
    [[0, 1]]
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = ["AnnIndex", "SearchConfig", "exact_topk", "merge_topk", "needs_ann", "rescore"]

# The score block (queries x chunk rows, float32) kept in memory at once by ``exact_topk``.
_SCORE_BLOCK_BYTES = 64 * 2**20
_NO_ROW = np.iinfo(np.int64).max  # initial fill of the running top-k; sorts after real rows

_MAGIC = b"SHARPCLIP-ANN\n"
FORMAT_VERSION = 3  # 2: the codec and the tuned search breadth; 3: the graph first (mappable)

# How the graph stores its vectors: faiss's own float32 copy, or scalar-quantised codes
# (searched approximately, then re-ranked exactly from the collection's float32 vectors).
CODECS = ("flat", "sq8", "fp16")


@dataclass(frozen=True)
class SearchConfig:
    """How search is done. Defaults come from ``benchmarks/search.py`` (``docs/performance.md``).

    ann_threshold: collections with at least this many rows use the ANN index (exact below it).
        Exact search of 512-d float32 costs ~0.07 ms per 1,000 rows here (73.6 ms at 1M rows),
        so below 200,000 rows it answers in ~15 ms with no index to build (the HNSW build runs
        at ~2,600-3,700 rows/s on 2 cores).
    hnsw_m: HNSW graph degree. At 200k rows, M=16 reached recall@10 0.84 at efSearch 128
        where M=32 reached 0.96; M=48 was better per efSearch but slower per step, so about the
        same per millisecond, with a slower build and 128 more bytes per vector.
    ef_construction: HNSW build beam width. faiss's default 40 is below the 2 x M neighbours a
        node keeps on the bottom layer; 100 made the search at recall@10 >= 0.95 5x faster
        at 1M rows (0.47-0.54 against 2.65 ms) for about twice the build time, and 2.8x at
        250k (0.37 against 1.03 ms).
    ef_search: HNSW search beam width (raised to ``k`` when ``k`` is larger) of an index that was
        not tuned (``store.tuning`` picks one per collection when the index is built or grown).
        384 is the smallest measured value with recall@10 >= 0.95 at 1M rows on the synthetic
        data (0.963, p50 3.9 ms); 256 gave 0.935.
    codec: how the graph holds the vectors: ``fp16`` (half precision, 1,024 B/vector at
        d=512), ``sq8`` (8 bits per dimension, 512 B) or ``flat`` (a float32 copy, 2,048 B).
        Readers memory-map the graph, so the OS pages the codes as it does the vector file. The
        graph's approximate scores pick ``RERANK_POOL[codec] x k`` of its beam of ``ef_search``,
        re-scored exactly from the collection's float32 vectors. fp16 is the default: its scores
        rank as float32's do, so only the k results are re-scored, and its graph was walked
        faster than the 8-bit one (250k x 512, efSearch 32: 0.213 against 0.221 ms for the
        walk, recall@10 0.964 against 0.960 re-ranked; ``benchmarks/ann_codecs.py``, 2026-12-08).
    train_rows: vectors sampled (evenly) from the first ones added to fit the scalar
        quantiser's per-dimension ranges; later vectors outside them are clipped, which only
        costs candidate quality, never a score (scores come from the float32 vectors).
    max_deleted_fraction: above this fraction of removed rows ``AnnIndex.needs_rebuild`` is true
        (filtered HNSW search walks through deleted nodes, so recall and speed degrade).
    threads: faiss threads for building; ``None`` = ``os.cpu_count()``. Searches use at most one
        thread per query (a single query runs on one thread: no OpenMP start-up or contention).
        faiss's thread count is process-wide; it is set for each call and restored after.
    add_batch: rows per faiss ``add`` call while building (for the progress bar).
    """

    ann_threshold: int = 200_000
    hnsw_m: int = 32
    ef_construction: int = 100
    ef_search: int = 384
    codec: str = "fp16"
    train_rows: int = 100_000
    max_deleted_fraction: float = 0.2
    threads: int | None = None
    add_batch: int = 50_000

    def __post_init__(self) -> None:
        for name in ("ann_threshold", "hnsw_m", "ef_construction", "ef_search", "add_batch",
                     "train_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"SearchConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.codec not in CODECS:
            raise ValueError(f"SearchConfig.codec must be one of {', '.join(CODECS)}, "
                             f"got {self.codec!r}")
        if not 0.0 <= self.max_deleted_fraction <= 1.0:
            raise ValueError("SearchConfig.max_deleted_fraction must be in [0, 1], "
                             f"got {self.max_deleted_fraction}")


def needs_ann(n: int, threshold: int) -> bool:
    """True when a collection of ``n`` live rows should be searched with the ANN index.

    The caller overrides this with ``--exact`` (always exact); exact search is never wrong, only
    slower.
    """
    return n >= threshold


# ----------------------------------------------------------------------------------------------
# Exact search


def _as_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must have shape (Q, {dim}) or ({dim},), got {np.shape(queries)}")
    if not np.isfinite(q).all():
        raise ValueError("queries contain NaN or infinite values; encode them again")
    return np.ascontiguousarray(q)


def _select_topk(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each row of ``scores`` (descending score, then ascending row)."""
    order = np.lexsort((rows, -scores), axis=-1)[:, :k]
    at = np.arange(len(order))[:, None]  # plain fancy indexing: take_along_axis costs ~10 us more
    return scores[at, order], rows[at, order]


def merge_topk(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray],
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of two ``(scores, rows)`` result sets per query (descending score, ties
    by the lower row), e.g. an index's hits and an exact scan of rows it does not hold."""
    return _select_topk(np.concatenate([first[0], second[0]], 1),
                        np.concatenate([first[1], second[1]], 1), k)


def rescore(vectors: np.ndarray, queries: np.ndarray,
            rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with ``vectors[rows]`` (``rows`` ``(Q, m)``; ``-1``
    marks a missing hit and scores ``-inf``), re-sorted: approximate hits scored for real."""
    return _rescored(vectors, _as_queries(queries, vectors.shape[1]), rows)


def _rescored(vectors: np.ndarray, q: np.ndarray, rows: np.ndarray,
              every: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rescore` of checked float32 queries ``q``; ``every``: whether no row is ``-1``
    (found out when None)."""
    if every is None:
        every = not rows.size or bool(rows.min() >= 0)
    if every and len(q) == 1:  # one query (a search's usual case): ~2.6 us less than below
        exact = np.asarray(vectors)[rows[0]] @ q[0]
        order = np.lexsort((rows[0], -exact))
        return exact[order][None].astype(np.float32, copy=False), rows[0][order][None]
    found = rows >= 0
    # gathered through a plain view: a memmap's own __getitem__ wraps every result (~30 us)
    picked = np.asarray(vectors)[rows if every else np.where(found, rows, 0)]
    exact = np.matmul(picked, q[:, :, None])[:, :, 0]  # one gemv per query (einsum: ~10 us more)
    if not every:
        exact = np.where(found, exact, -np.inf)
    return _select_topk(exact.astype(np.float32, copy=False), rows, rows.shape[1])


def _floor_pools(block: np.ndarray, k: int) -> list[np.ndarray] | None:
    """Per row of ``block``, the indices of a few entries that hold its top ``k`` (ties at the
    k-th score included); None where this shortcut does not apply (a row too short for groups
    of 16 to outnumber ``k`` four times over, a NaN score, fewer than ``k`` groups with a finite
    maximum): the caller then partitions whole rows.

    A row's entries fall into strided groups (group g: entries g, g + G, g + 2G, ...; the tail
    beyond the last whole stride is one more group). The ``k``-th best group maximum is a
    *floor* that at least ``k`` entries reach (each of the ``k`` best groups' maxima), so the
    top ``k`` lie in the groups whose maximum reaches the floor, among their entries that do.
    The maxima are an elementwise maximum of contiguous slices (SIMD, nothing row-sized
    written), and NaN propagates through it, so a damaged vector is noticed for free. 250k
    scores: ~0.04 ms for the maxima and ~2,500 entries gathered, where partitioning the row
    took 1.6-1.9 ms."""
    q, c = block.shape
    size = min(256, c // (4 * k))
    if size < 16:
        return None
    groups = c // size
    maxima = np.maximum.reduce(block[:, :groups * size].reshape(q, size, groups), axis=1)
    tail = block[:, groups * size:]
    if tail.shape[1]:
        maxima = np.concatenate([maxima, tail.max(axis=1, keepdims=True)], 1)
    if np.isnan(maxima).any():
        return None
    floor = np.partition(maxima, maxima.shape[1] - k, axis=1)[:, maxima.shape[1] - k]
    if (floor == -np.inf).any():
        return None
    strides = np.arange(size)[:, None] * groups
    pools = []
    for i in range(q):
        held = np.flatnonzero(maxima[i] >= floor[i])
        at = (strides + held[held < groups]).ravel()
        if held[-1] == groups:  # the tail group
            at = np.concatenate([at, np.arange(groups * size, c)])
        pools.append(at[block[i, at] >= floor[i]])
    return pools


def _chunk_candidates(block: np.ndarray, start: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, ``k`` (score, row) pairs of this chunk that contain its top-k with exact ties.

    The k-th best score comes from ``np.partition`` (values only: a quarter of the memory
    traffic of ``np.argpartition``'s int64 indices) of the row's :func:`_floor_pools` (of the
    whole row when there are none), then the rows scoring at least that much; when more than
    ``k`` do (ties at the k-th value) the lowest rows among the tied are kept. A NaN score (a
    damaged vector) ranks last. Masked-out rows carry ``-inf``: when fewer than ``k`` rows are
    finite, some of them make up the ``k``, but they never reach the final top-``k`` because
    ``k`` is at most the number of valid (finite-scored) rows.
    """
    q, c = block.shape
    pools = _floor_pools(block, k) if c > k else None
    if pools is None:
        np.fmax(block, -np.inf, out=block)  # NaN -> -inf: last, and no longer breaks the sort
    if c <= k:
        cand = np.broadcast_to(np.arange(c), (q, c))
        return np.take_along_axis(block, cand, 1), cand + start
    cand = np.empty((q, k), np.int64)
    for i in range(q):
        scores = block[i]
        if pools is not None:
            pool = pools[i]
            kth = np.partition(scores[pool], len(pool) - k)[len(pool) - k]
            rows = pool[scores[pool] >= kth]
        else:
            kth = np.partition(scores, c - k)[c - k]
            rows = np.flatnonzero(scores >= kth) if kth > -np.inf else None
        if rows is not None:
            if len(rows) > k:
                rows = rows[np.lexsort((rows, -scores[rows]))[:k]]
        else:
            rows = np.flatnonzero(scores > -np.inf)
            rows = np.concatenate([rows, np.flatnonzero(scores == -np.inf)[:k - len(rows)]])
        cand[i] = rows
    return np.take_along_axis(block, cand, 1), cand + start


def exact_topk(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    valid: np.ndarray | None = None,
    chunk_rows: int | None = None,
    transposed: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows of ``vectors`` by inner product with each query.

    One pass over ``vectors`` in chunks of ``chunk_rows`` rows: a matrix product per chunk, a
    partial sort, and a merge with the running top-k. Extra memory is bounded by the score block
    (``Q x chunk_rows`` float32; by default <= 64 MiB) plus one converted chunk when ``vectors``
    is not float32 (float32 is the fast path; other dtypes are upcast chunk by chunk).

    Args:
        vectors: ``(N, d)`` row-major array or ``np.memmap``; a row whose score is NaN (a
            damaged vector) scores ``-inf``.
        queries: ``(Q, d)`` or ``(d,)``.
        k: number of results per query (>= 1).
        valid: optional boolean mask of length ``N``; rows where it is False (deleted) are never
            returned.
        chunk_rows: rows per chunk; ``None`` picks the largest with a score block <= 64 MiB.
        transposed: ``vectors`` is given as its transpose, ``(d, N)`` row-major. BLAS's
            product with a long, thin ``(N, d)`` matrix is slow for small ``d``: a conditional
            gallery of 250k x 4 scored one query in ~0.09 ms this way against ~0.41-0.69 ms
            (one thread, 2026-12-03), and the layout was no slower at any ``d`` up to 128.

    Returns:
        ``(scores, rows)``, both ``(Q, m)`` with ``m = min(k, number of valid rows)`` (so fewer
        than ``k`` columns when fewer rows exist, and ``m = 0`` for an empty collection); scores
        float32 in descending order, rows int64, ties broken by the lower row.
    """
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be a 2-D (N, d) array, got shape {vectors.shape}")
    dim, n = vectors.shape if transposed else vectors.shape[::-1]
    q = _as_queries(queries, dim)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if valid is not None:
        valid = np.asarray(valid)
        if valid.dtype != np.bool_ or valid.shape != (n,):
            raise ValueError(f"valid must be a boolean mask of shape ({n},), "
                             f"got {valid.dtype} {valid.shape}")
        n_valid = int(np.count_nonzero(valid))
    else:
        n_valid = n
    m = min(k, n_valid)
    if m == 0:
        return np.empty((len(q), 0), np.float32), np.empty((len(q), 0), np.int64)
    if chunk_rows is None:
        chunk_rows = max(1024, _SCORE_BLOCK_BYTES // (4 * len(q)))
        if vectors.dtype != np.float32:
            chunk_rows = min(chunk_rows, max(1024, _SCORE_BLOCK_BYTES // (4 * dim)))
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")

    best_scores = np.full((len(q), m), -np.inf, np.float32)
    best_rows = np.full((len(q), m), _NO_ROW, np.int64)
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        if transposed:
            block = q @ np.asarray(vectors[:, start:stop], dtype=np.float32)
        else:
            block = q @ np.asarray(vectors[start:stop], dtype=np.float32).T
        if valid is not None:
            dead = np.flatnonzero(~valid[start:stop])
            if dead.size == stop - start:
                continue
            block[:, dead] = -np.inf
        scores, rows = _chunk_candidates(block, start, m)
        best_scores, best_rows = _select_topk(
            np.concatenate([best_scores, scores], 1), np.concatenate([best_rows, rows], 1), m)
    return best_scores, best_rows


# ----------------------------------------------------------------------------------------------
# Approximate search


@contextlib.contextmanager
def _faiss_threads(n: int) -> Iterator[None]:
    """Run a faiss call with ``n`` OpenMP threads, then restore the previous setting."""
    before, n = faiss.omp_get_max_threads(), max(1, n)
    if before == n:  # already so (a search on one thread after another): nothing to restore
        yield
        return
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


# Candidates re-ranked exactly per result wanted (k), the graph's best by its own scores, per
# codec. 8-bit codes: at 1M x 512 (1,000 queries, efSearch 32-256) 4 and 2 gave the recall@10 of
# 16 to the third decimal, 4 in 0.94x (efSearch 48) to 0.85x (128) of its time. fp16 codes rank
# as float32 does (at 1M x 512, efSearch 32-56, 4 x k re-scored gave the recall of k to the third
# decimal for 7-20 us more; ``benchmarks/ann_codecs.py --pools 4``, 2026-12-08), so only the k
# results are re-scored, for exact scores; likewise a float32 graph, where re-scoring guards
# against a damaged index. The tuner measures with the same pool.
RERANK_POOL = {"sq8": 4, "fp16": 1, "flat": 1}
_CORES = os.cpu_count() or 1


class AnnIndex:
    """Approximate top-K by inner product: a faiss HNSW graph (over float32 vectors or scalar-
    quantised codes, ``SearchConfig.codec``) plus a row map and a deletion mask.

    faiss numbers vectors 0, 1, 2, ... in the order they are added; ``rows_[i]`` is the
    collection row of faiss vector ``i``. faiss HNSW cannot remove vectors, so ``remove`` marks
    them in ``deleted_`` and every search runs with a faiss ``IDSelectorBitmap`` of the live
    vectors: the graph walk still passes through deleted nodes, but they are never returned.
    When the deleted fraction passes ``config.max_deleted_fraction``, ``needs_rebuild`` says to
    build a fresh index from the live rows.

    Given the float32 vectors (``search(..., vectors=)``), a search takes the graph's whole beam
    (``ef_search`` candidates) and re-ranks it exactly: with a compressed codec that is what
    makes the scores and the order exact; with ``flat`` it guards against a damaged index.
    ``tuning_`` is what ``store.tuning`` measured and chose (``ef_search``, its recall@10, the
    target), saved with the index; it overrides ``config.ef_search``.

    The constructor only stores parameters; use ``AnnIndex.build`` or ``add``.
    """

    def __init__(self, dim: int, config: SearchConfig | None = None) -> None:
        self.dim = dim
        self.config = config if config is not None else SearchConfig()
        self.index_: faiss.IndexHNSW | None = None
        self.rows_ = np.empty(0, np.int64)
        self.deleted_ = np.empty(0, np.bool_)
        self.tuning_: dict | None = None
        self.format_version_ = FORMAT_VERSION  # of the file it was loaded from
        # (live rows, packed bitmap of live faiss ids or None when none is removed): computed
        # once per change of the deletion mask, not per query (a 1M mask is ~40 us to count)
        self._live: tuple[int, np.ndarray | None] | None = None
        self._params: dict[int, tuple] = {}  # ef -> (bitmap, faiss params, selector)

    # -- building --------------------------------------------------------------------------------

    @classmethod
    def build(cls, vectors: np.ndarray, rows: np.ndarray, config: SearchConfig | None = None,
              progress: bool = True) -> AnnIndex:
        """A new index over ``vectors`` (``(N, d)``) whose results are reported as ``rows``."""
        index = cls(vectors.shape[1], config)
        index.add(vectors, rows, progress=progress)
        return index

    def _new_faiss_index(self, sample: np.ndarray) -> faiss.IndexHNSW:
        """An empty graph of ``config.codec``; a quantiser is fitted to ``sample`` first."""
        c = self.config
        if c.codec == "flat":
            index = faiss.IndexHNSWFlat(self.dim, c.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            kind = {"sq8": faiss.ScalarQuantizer.QT_8bit,
                    "fp16": faiss.ScalarQuantizer.QT_fp16}[c.codec]
            index = faiss.IndexHNSWSQ(self.dim, kind, c.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            take = np.linspace(0, len(sample) - 1, min(c.train_rows, len(sample))).astype(np.int64)
            index.train(np.ascontiguousarray(sample[take], dtype=np.float32))
        index.hnsw.efConstruction = c.ef_construction
        index.hnsw.efSearch = c.ef_search
        return index

    @property
    def ef_search_(self) -> int:
        """The search breadth in use: the tuned one, else ``config.ef_search``."""
        return int(self.tuning_["ef_search"]) if self.tuning_ else self.config.ef_search

    def add(self, vectors: np.ndarray, rows: np.ndarray, progress: bool = True) -> None:
        """Insert ``vectors`` (``(n, d)``) as ``rows`` (``(n,)`` int64, not already live).

        A row that was removed earlier may be added again (it gets a new graph node).
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(rows):
            raise ValueError(f"add needs vectors (n, {self.dim}) and n rows; got vectors "
                             f"{vectors.shape} and {len(rows)} rows")
        if len(np.unique(rows)) != len(rows):
            raise ValueError("add was given the same row twice")
        live = self.rows_[~self.deleted_]
        clash = rows[np.isin(rows, live)]
        if clash.size:
            raise ValueError(f"rows already in the index: {clash[:5].tolist()}"
                             f"{' ...' if clash.size > 5 else ''}; remove them first")
        if self.index_ is None:
            self.index_ = self._new_faiss_index(vectors)
        step = self.config.add_batch
        bar = tqdm(total=len(rows), desc="HNSW add", unit="vec",
                   disable=not progress or len(rows) <= step)
        threads = self.config.threads or os.cpu_count() or 1
        with _faiss_threads(threads), bar:
            for start in range(0, len(rows), step):
                chunk = np.ascontiguousarray(vectors[start:start + step], dtype=np.float32)
                self.index_.add(chunk)
                bar.update(len(chunk))
        self.rows_ = np.concatenate([self.rows_, rows])
        self.deleted_ = np.concatenate([self.deleted_, np.zeros(len(rows), np.bool_)])
        self._live = None

    def remove(self, rows: np.ndarray) -> int:
        """Never return ``rows`` again; returns how many live rows were removed (unknown rows are
        ignored)."""
        hit = np.isin(self.rows_, np.asarray(rows, dtype=np.int64).reshape(-1)) & ~self.deleted_
        self.deleted_ |= hit
        self._live = None
        return int(np.count_nonzero(hit))

    def __len__(self) -> int:
        """Live (not removed) rows."""
        return self._live_state()[0]

    def _live_state(self) -> tuple[int, np.ndarray | None]:
        if self._live is None:
            removed = int(np.count_nonzero(self.deleted_))
            bits = np.packbits(~self.deleted_, bitorder="little") if removed else None
            self._live = len(self.rows_) - removed, bits
        return self._live

    def _search_params(self, ef: int) -> tuple:
        """(bitmap, faiss's parameters, selector) for a search of breadth ``ef`` over the live
        rows, made once per breadth and deletion mask. The caller holds the tuple while faiss
        runs: the parameters point at the selector, which points at the bitmap, and faiss's
        wrappers keep neither alive (another thread may drop them from the cache meanwhile)."""
        bits = self._live_state()[1]
        kept = self._params.get(ef)
        if kept is None or kept[0] is not bits:
            params = faiss.SearchParametersHNSW()
            params.efSearch = ef
            selector = faiss.IDSelectorBitmap(bits) if bits is not None else None
            if selector is not None:
                params.sel = selector
            if len(self._params) >= 16:
                self._params.clear()
            kept = self._params[ef] = (bits, params, selector)
        return kept

    @property
    def deleted_fraction(self) -> float:
        return (len(self.rows_) - len(self)) / max(1, len(self.rows_))

    @property
    def needs_rebuild(self) -> bool:
        """True when removed rows exceed ``config.max_deleted_fraction`` of the graph."""
        return self.deleted_fraction > self.config.max_deleted_fraction

    # -- searching -------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, vectors: np.ndarray | None = None,
               ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-``k`` by inner product.

        With ``vectors`` (the collection's float32 rows, e.g. its memmap) the graph's beam of
        ``ef_search`` candidates (default :attr:`ef_search_`) is re-ranked exactly and the
        scores are exact inner products; without, the scores are the graph's own (approximate
        for a compressed codec).

        Returns ``(scores, rows)``, both ``(Q, min(k, len(self)))``, best first. If the graph walk
        finds fewer live rows than that for a query (rare; more likely with many deletions), the
        missing tail is ``row = -1, score = -inf``. Removed rows are never returned.
        """
        q = _as_queries(queries, self.dim)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        m = min(k, len(self))
        if m == 0 or self.index_ is None:
            return np.empty((len(q), 0), np.float32), np.empty((len(q), 0), np.int64)
        ef = max(ef_search or self.ef_search_, m)
        # the graph's best RERANK_POOL x k by its approximate scores are re-ranked exactly:
        # re-reading all ef rows (768 x 2 KB at 1M rows) cost more than the walk at large ef
        pool = (min(ef, RERANK_POOL[self.config.codec] * m, len(self)) if vectors is not None
                else m)
        kept = self._search_params(ef)  # held until faiss is done with it
        scores = np.empty((len(q), pool), np.float32)
        ids = np.empty((len(q), pool), np.int64)
        threads = min(len(q), self.config.threads or _CORES)
        # faiss's own wrapper (checks, allocations) and a context manager per call cost ~5 us of
        # a 0.2 ms search: the C++ search is called directly (q is checked and C-ordered)
        args = (len(q), faiss.swig_ptr(q), pool, faiss.swig_ptr(scores), faiss.swig_ptr(ids),
                kept[1])
        if faiss.omp_get_max_threads() == threads:
            self.index_.search_c(*args)
        else:
            with _faiss_threads(threads):
                self.index_.search_c(*args)
        every = not ids.size or bool(ids.min() >= 0)
        rows = self.rows_[ids] if every else np.where(ids >= 0, self.rows_[np.maximum(ids, 0)], -1)
        if vectors is not None:
            scores, rows = _rescored(vectors, q, rows, every)
            return scores[:, :m], rows[:, :m]
        if not every:
            scores[ids < 0] = -np.inf
        return scores, rows

    def stores(self, ids: np.ndarray, vectors: np.ndarray) -> bool:
        """Whether the graph's entries ``ids`` (faiss ids) hold ``vectors`` (as its codec
        stores them: equal codes for a quantised graph, equal floats for ``flat``)."""
        stored = np.stack([self.index_.reconstruct(int(i)) for i in ids])
        given = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.config.codec != "flat":
            storage = faiss.downcast_index(self.index_.storage)
            given = storage.sa_decode(storage.sa_encode(given))
        return bool(np.allclose(stored, given, atol=1e-6))

    def settings(self) -> dict:
        """What ``sharpclip status`` shows: codec, degree, search breadth (and how it was chosen),
        memory per vector."""
        live = len(self)
        return {"codec": self.config.codec, "hnsw_m": self.config.hnsw_m,
                "ef_search": self.ef_search_, "tuning": self.tuning_, "vectors": live,
                "bytes_per_vector": round(self.nbytes() / max(1, len(self.rows_)))}

    # -- persistence -----------------------------------------------------------------------------

    def nbytes(self) -> int:
        """Bytes this index holds in memory: the vectors faiss stores (a float32 copy, or codes),
        the graph's links, offsets and levels, the row map and the deletion mask."""
        size = self.rows_.nbytes + self.deleted_.nbytes
        if self.index_ is not None:
            hnsw = self.index_.hnsw
            storage = faiss.downcast_index(self.index_.storage)
            code = self.dim * 4 if self.config.codec == "flat" else storage.code_size
            size += (self.index_.ntotal * code + hnsw.neighbors.size() * 4
                     + hnsw.offsets.size() * 8 + hnsw.levels.size() * 4)
        return int(size)

    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path`` atomically (a temporary file in the same folder, then ``os.replace``).

        Layout (format 3): faiss's own serialisation of the graph from byte 0 (so that
        :meth:`load` can have faiss map it in place), ``rows_`` and ``deleted_`` as ``.npy``, a
        JSON header (format version, dim, config, tuning, faiss version, where the arrays start),
        its length in 8 bytes, and a magic line last.
        """
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                if self.index_ is not None:
                    writer = faiss.PyCallbackIOWriter(f.write)
                    faiss.write_index(self.index_, writer)
                    del writer
                arrays_at = f.tell()
                np.save(f, self.rows_, allow_pickle=False)
                np.save(f, self.deleted_, allow_pickle=False)
                header = json.dumps({
                    "format_version": FORMAT_VERSION, "kind": f"hnsw_{self.config.codec}_ip",
                    "dim": self.dim, "config": asdict(self.config), "tuning": self.tuning_,
                    "faiss_version": faiss.__version__, "n": len(self.rows_),
                    "has_index": self.index_ is not None, "arrays_at": arrays_at,
                }).encode()
                f.write(header + len(header).to_bytes(8, "little") + _MAGIC)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = False) -> AnnIndex:
        """Read an index written by ``save``; refuses other files and newer formats.

        ``mmap`` maps the graph from the file instead of reading it into memory (a reader's
        choice: the OS pages it and shares it between processes, and opening a 400 MB index
        takes milliseconds); such an index is searched and masked (``remove``) but not grown.
        Files of formats 1-2 (the graph after the header) are read into memory.
        """
        path = Path(path)
        with open(path, "rb") as f:
            if f.read(len(_MAGIC)) == _MAGIC:  # formats 1-2: magic, header, arrays, graph
                header = _read_header(f, path, int.from_bytes(f.read(8), "little"))
                return cls._from_file(f, header, path, lambda: faiss.read_index(
                    faiss.PyCallbackIOReader(f.read)))
            size = f.seek(0, os.SEEK_END)
            tail = len(_MAGIC) + 8
            f.seek(max(0, size - tail))
            end = f.read(tail)
            if len(end) < tail or end[8:] != _MAGIC:
                raise ValueError(f"{path} is not a sharpclip ANN index file; rebuild the index")
            length = int.from_bytes(end[:8], "little")
            if length > size - tail:
                raise ValueError(f"{path} has a damaged header; rebuild the index")
            f.seek(size - tail - length)
            header = _read_header(f, path, length)
            # faiss opens the file by name: this one (held open), even if replaced meanwhile
            name = next((n for n in (f"/proc/self/fd/{f.fileno()}", f"/dev/fd/{f.fileno()}")
                         if os.path.exists(n)), str(path))
            flags = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) if mmap else 0  # faiss >= 1.10

            def read_graph():
                try:
                    return faiss.read_index(name, flags)
                except RuntimeError:
                    if not flags:
                        raise
                    return faiss.read_index(name)  # a file system that cannot map it
            return cls._from_file(f, header, path, read_graph, arrays_at=header.get("arrays_at"))

    @classmethod
    def _from_file(cls, f, header: dict, path: Path, read_graph, arrays_at=None) -> AnnIndex:
        """The index ``header`` describes: its arrays read from ``f`` (at ``arrays_at``, else
        where ``f`` stands), its graph by ``read_graph``."""
        try:
            codec = header["kind"].removeprefix("hnsw_").removesuffix("_ip")  # v1: flat
            config = SearchConfig(**{**header["config"], "codec": codec})
            index = cls(header["dim"], config)
            index.tuning_ = header.get("tuning")
            index.format_version_ = int(header.get("format_version", 1))
            if arrays_at is not None:
                f.seek(int(arrays_at))
            index.rows_ = np.load(f, allow_pickle=False)
            index.deleted_ = np.load(f, allow_pickle=False)
            if header["has_index"]:
                index.index_ = read_graph()
        except (KeyError, TypeError, ValueError, RuntimeError, EOFError) as error:
            raise ValueError(f"{path} is damaged ({type(error).__name__}); rebuild the "
                             "index") from None
        if index.index_ is not None and index.index_.ntotal != len(index.rows_):
            raise ValueError(f"{path} is inconsistent ({index.index_.ntotal} vectors, "
                             f"{len(index.rows_)} rows); rebuild the index")
        return index


def _read_header(f, path: Path, length: int) -> dict:
    """The JSON header of ``length`` bytes where ``f`` stands; refuses newer formats."""
    try:
        header = json.loads(f.read(min(length, 1 << 20)))
        newer = header.get("format_version", 0) > FORMAT_VERSION
    except (ValueError, AttributeError, TypeError):  # not JSON, not an object, not a number
        raise ValueError(f"{path} has a damaged header; rebuild the index") from None
    if newer:
        raise ValueError(f"{path} has index format {header['format_version']}, newer than "
                         f"this sharpclip reads ({FORMAT_VERSION}); upgrade sharpclip "
                         "or rebuild the index")
    return header
