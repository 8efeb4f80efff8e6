"""Retrieval metrics over a score matrix and a boolean relevance matrix.

Conventions shared by every function here:

- ``scores`` is ``(Q, N)``: one row per query, one column per gallery item, higher is better.
- ``relevant`` is a boolean ``(Q, N)`` matrix; a query may have several positives.
- Items are ranked by descending score; ties are broken by gallery index (stable sort), so
  results are deterministic. A query with no positive is an error: it has no defined AP/recall.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def _check(scores: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    relevant = np.atleast_2d(np.asarray(relevant, dtype=bool))
    if scores.shape != relevant.shape:
        raise ValueError(
            f"scores {scores.shape} and relevant {relevant.shape} must have the same shape"
        )
    empty = np.flatnonzero(~relevant.any(axis=1))
    if empty.size:
        raise ValueError(
            f"{empty.size} queries have no relevant item (first: query {empty[0]}); "
            "drop them before computing retrieval metrics"
        )
    return scores, relevant


def rank_order(scores: np.ndarray) -> np.ndarray:
    """Gallery indices of each query sorted by descending score (ties: lower index first)."""
    return np.argsort(-np.atleast_2d(scores), axis=1, kind="stable")


def _sorted_relevance(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    order = rank_order(scores)
    return np.take_along_axis(relevant, order, axis=1)


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, ks: Iterable[int]) -> dict[int, float]:
    """Recall@K as in CLIP_benchmark: share of queries with at least one positive in the top K."""
    scores, relevant = _check(scores, relevant)
    hits = _sorted_relevance(scores, relevant)
    first_hit = hits.argmax(axis=1)  # 0-based rank of the first positive
    return {int(k): float(np.mean(first_hit < k)) for k in ks}


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Average precision per query: mean over positives of precision at the positive's rank."""
    scores, relevant = _check(scores, relevant)
    hits = _sorted_relevance(scores, relevant).astype(np.float64)
    ranks = np.arange(1, hits.shape[1] + 1)
    precision = np.cumsum(hits, axis=1) / ranks
    return (precision * hits).sum(axis=1) / hits.sum(axis=1)


def mean_average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """mAP: the mean of :func:`average_precision` over queries."""
    return float(np.mean(average_precision(scores, relevant)))


def mean_inverse_negative_penalty(scores: np.ndarray, relevant: np.ndarray) -> float:
    """mINP: mean over queries of (#positives / 1-based rank of the hardest, i.e. last, positive)."""
    scores, relevant = _check(scores, relevant)
    hits = _sorted_relevance(scores, relevant)
    last_rank = hits.shape[1] - np.argmax(hits[:, ::-1], axis=1)
    return float(np.mean(hits.sum(axis=1) / last_rank))


def ndcg_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """nDCG@K with binary gains and log2(rank + 1) discounts, averaged over queries."""
    scores, relevant = _check(scores, relevant)
    hits = _sorted_relevance(scores, relevant)[:, :k].astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    dcg = hits @ discounts
    n_ideal = np.minimum(relevant.sum(axis=1), hits.shape[1])
    ideal = np.cumsum(discounts)[n_ideal - 1]
    return float(np.mean(dcg / ideal))


def binding_accuracy(true_scores: np.ndarray, twin_scores: np.ndarray) -> float:
    """Share of queries whose true scene scores strictly above its attribute-swapped twin."""
    true_scores = np.asarray(true_scores, dtype=np.float64)
    twin_scores = np.asarray(twin_scores, dtype=np.float64)
    if true_scores.shape != twin_scores.shape:
        raise ValueError(
            f"true_scores {true_scores.shape} and twin_scores {twin_scores.shape} differ in shape"
        )
    return float(np.mean(true_scores > twin_scores))


def ranked_scores(order: np.ndarray, base_scores: np.ndarray) -> np.ndarray:
    """Scores over the whole gallery (higher first) for a ranking that names only its top:
    ``order`` (distinct item ids, best first) on top, every other item below them by its
    ``base_scores`` (cosines in [-1, 1], shifted down by 10)."""
    scores = np.asarray(base_scores, np.float64) - 10.0
    order = np.asarray(order, np.int64)
    scores[order] = len(order) - np.arange(len(order), dtype=np.float64)
    return scores


def leave_one_out_map(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Image-to-image mAP, all against all with the query itself excluded: each image queries the
    others; relevant = same label. Images whose label no other image shares are not queries."""
    labels = np.asarray(labels)
    scores = np.asarray(embeddings, np.float64) @ np.asarray(embeddings, np.float64).T
    np.fill_diagonal(scores, -np.inf)
    relevant = labels[:, None] == labels[None, :]
    np.fill_diagonal(relevant, False)
    queries = relevant.any(axis=1)
    if not queries.any():
        raise ValueError("no class has two images: image-to-image mAP needs at least two images "
                         "in some class")
    return mean_average_precision(scores[queries], relevant[queries])


def knn_accuracy(embeddings: np.ndarray, labels: np.ndarray, k: int = 21,
                 temperature: float = 0.1) -> float:
    """Leave-one-out k-NN classification accuracy: each image's ``k`` most similar others vote for
    their label with weight ``exp(sim / temperature)``; ties go to the lower label."""
    labels = np.asarray(labels)
    scores = np.asarray(embeddings, np.float64) @ np.asarray(embeddings, np.float64).T
    np.fill_diagonal(scores, -np.inf)
    k = min(k, len(labels) - 1)
    neighbours = rank_order(scores)[:, :k]
    weights = np.exp(np.take_along_axis(scores, neighbours, axis=1) / temperature)
    classes = np.unique(labels)
    votes = np.stack([(weights * (labels[neighbours] == c)).sum(axis=1) for c in classes], axis=1)
    return float(np.mean(classes[votes.argmax(axis=1)] == labels))
