"""Choosing an HNSW index's search breadth for the collection it serves.

Recall at a given ``efSearch`` depends on how the collection's own vectors cluster, so one
constant cannot fit every collection. When vectors are added to the index (:func:`add_tuned`:
its build, or growth by more than a tenth), a sample of them is held out of the graph, used as
queries, and :func:`tune_ef_search` keeps the smallest breadth of :data:`EF_GRID` whose recall@10
against exact search reaches the target *with confidence*: the lower end of its Wilson interval
(:func:`recall_lower_bound`, over the queries' :func:`effective_trials`), not the measured mean,
must reach it; the held-out vectors are added afterwards. They must be held out: a vector
already in the graph leads the walk to its own neighbourhood, so its recall overstates a new
query's (on 6,000 random 48-d vectors, the breadth that gave 0.95 for indexed vectors gave 0.90
for fresh ones). Queries are image vectors, so this measures "more like this"; text queries lie
elsewhere in the space (the modality gap) and may see a different recall.

Pure array code; the index stores the result (``AnnIndex.tuning_``).

Example::

    >>> import numpy as np
    >>> from sharpclip.store.search_index import AnnIndex
    >>> x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
    >>> index = AnnIndex(16)
    >>> add_tuned(index, x, np.arange(2000), target=0.9, progress=False)["recall"] >= 0.9
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sharpclip.store.search_index import AnnIndex, exact_topk

DEFAULT_RECALL = 0.95
# Held-out vectors per tuning (at most a tenth of those added): 500 measure recall@10 ~0.95 to
# about ±0.01 (one standard error: the per-query recalls spread by ~0.2, see effective_trials);
# 1,000 chose no smaller breadths at 1M (benchmarks/ann_codecs.py --tune-queries, 2026-12-08).
TUNE_QUERIES = 500
# Search breadths tried, smallest first; each step costs ~1.1-1.25x the previous one, so the
# breadth chosen is within about a tenth of the smallest that meets the target (at 1M rows
# efSearch 40 read 0.947 and 48 0.967 on fresh queries, 2026-12-08). Trying a breadth costs its
# 500 queries: ~0.1 s at 1M and efSearch 48 on 2 cores.
EF_GRID = (16, 20, 24, 28, 32, 36, 40, 44, 48, 56, 64, 72, 80, 96, 112, 128, 160, 192, 224, 256,
           320, 384, 448, 512, 640, 768, 896, 1024)
# How many standard errors below the measured recall the target must still be met (about 98%
# one-sided). Without a margin the breadth that just reaches the target on the held-out queries
# falls short on fresh ones about half the time: at 250k rows efSearch 32 read 0.952 held out and
# 0.946 on 1,000 fresh queries. The standard error is that of the held-out queries' mean recall
# (:func:`effective_trials`): a query's k neighbours are found or missed together, so at recall
# ~0.95 500 queries need ~0.97; 6 queries that find everything (a tiny index) bound it at 0.94,
# so such an index keeps the largest breadth.
CONFIDENCE_Z = 2.0


@dataclass(frozen=True)
class Tuning:
    """The breadth chosen, the recall@k it reached on the held-out queries, and how it was
    measured."""

    ef_search: int
    recall: float
    target: float
    met: bool  # lower_bound >= target
    k: int
    queries: int
    vectors: int  # live vectors in the index when it was measured
    lower_bound: float  # recall_lower_bound(recall, trials)
    trials: float  # effective_trials of the held-out queries' recalls (<= queries * k)

    def as_dict(self) -> dict:
        return asdict(self)


def recall_per_query(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """|found ∩ truth| / |truth| of each query (rows; ``-1`` in ``found`` never counts)."""
    return np.array([len(set(f.tolist()) & set(t.tolist())) / len(t)
                     for f, t in zip(found, truth)], dtype=np.float64)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of :func:`recall_per_query`."""
    return float(np.mean(recall_per_query(found, truth)))


def effective_trials(per_query: np.ndarray, k: int) -> float:
    """How many independent (query, neighbour) trials the recalls ``per_query`` (each over ``k``
    neighbours) are worth: ``Q * k`` over the design effect, the variance of the per-query
    recalls against the binomial ``p (1 - p) / k`` that k independent trials would give (at
    least 1). A query whose walk misses its neighbourhood misses most of its k at once: at 1M x
    512 and recall 0.947 the per-query recalls spread with a standard deviation of 0.22, where
    independent trials would give 0.07, so a query is worth about one trial, not ten
    (2026-12-08). Counting Q * k trials made the interval ~3x too narrow: the tuner then chose
    efSearch 40 at 1M from 0.959 held out, where fresh queries read 0.938-0.947."""
    q = len(per_query)
    if q == 0:
        return 0.0
    p = float(np.mean(per_query))
    binomial = p * (1 - p) / k
    if q < 2 or binomial <= 0:  # one query, or every query alike at 0 or 1: nothing to inflate
        return float(q * k)
    return q * k / max(1.0, float(np.var(per_query, ddof=1)) / binomial)


def recall_lower_bound(recall: float, trials: float, z: float = CONFIDENCE_Z) -> float:
    """The lower end of the Wilson score interval for a recall of ``recall`` measured over
    ``trials`` independent (query, neighbour) pairs, ``z`` standard errors wide. Unlike
    ``recall - z * se`` it stays below 1 when every neighbour was found, by more the fewer the
    trials. The ``k`` pairs of one query are not independent (a query in a sparse region misses
    several), so the tuner passes :func:`effective_trials`, not ``queries * k``."""
    if trials <= 0:
        return 0.0
    z2 = z * z
    centre = recall + z2 / (2 * trials)
    spread = z * np.sqrt(recall * (1 - recall) / trials + z2 / (4 * trials * trials))
    return float(max(0.0, (centre - spread) / (1 + z2 / trials)))


def tune_ef_search(index: AnnIndex, vectors: np.ndarray, queries: np.ndarray,
                   target: float = DEFAULT_RECALL, k: int = 10,
                   grid: tuple[int, ...] = EF_GRID, batch: int = 16) -> Tuning:
    """The smallest ``efSearch`` of ``grid`` whose recall@``k`` for ``queries`` (vectors not in
    the index), searched as searches run (the graph's pool re-ranked exactly from ``vectors``),
    against the exact top-``k`` of the index's live rows, reaches ``target`` with confidence
    (:func:`recall_lower_bound` of it, over the queries' :func:`effective_trials`, >=
    ``target``); the largest of ``grid`` (``met`` False) if none does.

    ``vectors`` are the collection's rows (``index.rows_`` index into them).
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"the recall target must be in (0, 1], got {target}")
    live = index.rows_[~index.deleted_]
    q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, index.dim)
    if len(live) <= k or not len(q):  # every breadth finds everything there is
        return Tuning(max(grid[0], k), 1.0, target, True, k, len(q), len(live), 1.0,
                      float(len(q) * k))
    valid = np.zeros(len(vectors), bool)
    valid[live] = True
    truth = exact_topk(vectors, q, k, valid=valid)[1]
    recall, lower, trials, ef = 0.0, 0.0, 0.0, grid[-1]
    for ef in (e for e in grid if e >= k):
        found = np.concatenate([index.search(q[i:i + batch], k, vectors=vectors, ef_search=ef)[1]
                                for i in range(0, len(q), batch)])
        per_query = recall_per_query(found, truth)
        recall, trials = float(per_query.mean()), effective_trials(per_query, k)
        lower = recall_lower_bound(recall, trials)
        if lower >= target:
            return Tuning(ef, recall, target, True, k, len(q), len(live), lower, trials)
    return Tuning(ef, recall, target, False, k, len(q), len(live), lower, trials)


def add_tuned(index: AnnIndex, vectors: np.ndarray, rows: np.ndarray,
              target: float = DEFAULT_RECALL, progress: bool = True, seed: int = 0) -> dict:
    """Add ``vectors[rows]`` to ``index`` as ``rows``, holding out a sample of them (at most
    :data:`TUNE_QUERIES`, a tenth) until :func:`tune_ef_search` has tuned the index on it;
    stores the tuning in ``index.tuning_`` and returns it."""
    rows = np.asarray(rows, dtype=np.int64)
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(rows, min(TUNE_QUERIES, len(rows) // 10), replace=False))
    rest = np.setdiff1d(rows, held, assume_unique=True)
    if rest.size:
        index.add(np.asarray(vectors[rest]), rest, progress=progress)
    tuning = tune_ef_search(index, vectors, np.asarray(vectors[held]), target)
    if held.size:
        index.add(np.asarray(vectors[held]), held, progress=False)
    index.tuning_ = tuning.as_dict()
    return index.tuning_
