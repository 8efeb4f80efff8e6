"""The query pipeline: encode the query, find candidates (exact or ANN), refine with methods, hits.

The one place that wires ``store/`` (vectors, index) to ``methods/`` (pure array maths).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sharpclip.methods.conditional import (
    ConditionalConfig,
    gallery_mean,
    project,
    projection_matrix,
)
from sharpclip.store.collection import Collection
from sharpclip.store.search_index import exact_topk

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    """One search result: the file, its similarity to the query, and its item id."""

    path: str
    score: float
    id: int


@dataclass
class SearchResult:
    """Hits in descending score, what was asked, and where the time went."""

    hits: list[Hit]
    query: dict
    timing_ms: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The ``--json`` document of CONTRACT.md."""
        return {"hits": [{"path": h.path, "score": round(h.score, 6), "id": h.id} for h in self.hits],
                "query": self.query, "timing_ms": {k: round(v, 3) for k, v in self.timing_ms.items()}}


def _query_vector(coll: Collection, text, image, like) -> tuple[np.ndarray, dict]:
    if sum(x is not None for x in (text, image, like)) != 1:
        raise ValueError("give exactly one of text, image or like")
    if text is not None:
        return coll.model.encode_texts([text])[0], {"text": text}
    if like is not None:
        item = coll.item(like)
        if item is None or item.status != "ok":
            raise ValueError(f"{like} is not an indexed item of {coll.path}; "
                             "index it first or query with --image FILE")
        if not coll.intact_rows([item.row])[0]:
            raise ValueError(f"{item.path}: its stored vector changed on disk (checksum mismatch); "
                             f"run `sharpclip check -c {coll.path} --repair`, or query with "
                             "--image FILE")
        return np.array(coll.vectors()[item.row]), {"like": item.path}
    if isinstance(image, (str, os.PathLike)):
        from sharpclip.data.imagefiles import load_rgb

        path = Path(image).expanduser()
        return coll.model.encode_images([load_rgb(path)])[0], {"image": str(path)}
    return coll.model.encode_images([image])[0], {"image": "<in-memory image>"}


def search(coll: Collection, text: str | None = None, image=None, like=None, k: int = 20,
           exact: bool | None = None, condition: str | None = None,
           concepts: str | os.PathLike | None = None) -> SearchResult:
    """Top-``k`` live items for a text, an image (file or PIL) or an indexed item (``like``).

    ``condition`` (image queries only) compares images only in that condition (METHODS.md §1).
    ``exact`` True forces the exact scan; None lets the collection's size decide.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1 (got {k})")
    timing = {}
    start = time.perf_counter()
    query, described = _query_vector(coll, text, image, like)
    timing["encode"] = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    if condition is not None:
        if text is not None:
            raise ValueError("--condition compares images: use it with --image or --like")
        described["condition"] = condition

        def candidates(n: int) -> tuple[np.ndarray, np.ndarray]:
            return _conditional_candidates(coll, query, condition, n, concepts)
    else:
        ann = coll.uses_ann(len(coll.live_rows()[0]), exact) and coll.has_index()
        described["mode"] = "ann" if ann else "exact"

        def candidates(n: int) -> tuple[np.ndarray, np.ndarray]:
            scores, rows = coll.nearest(query[None, :], n, exact=exact)
            return scores[0], rows[0]
    scores, rows = _intact_top(coll, candidates, k)
    timing["search"] = (time.perf_counter() - start) * 1e3
    located = coll.paths_for_rows(rows)
    hits = [Hit(located[int(r)][1], float(s), located[int(r)][0])
            for s, r in zip(scores, rows) if int(r) in located]
    return SearchResult(hits, {**described, "k": k}, timing)


def _intact_top(coll: Collection, candidates, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of ``candidates(n)`` whose stored vectors are intact: a row whose checksum
    batch changed on disk is never a hit; more candidates are fetched in its place."""
    n = k
    while True:
        scores, rows = candidates(n)
        intact = coll.intact_rows(rows)
        if intact.all():
            return scores[:k], rows[:k]
        if intact.sum() >= k or len(rows) < n or n >= 64 * k:
            logger.warning("%s: left out %d candidates whose stored vectors changed on disk; run "
                           "`sharpclip check -c %s --repair`", coll.path, int((~intact).sum()),
                           coll.path)
            return scores[intact][:k], rows[intact][:k]
        n *= 4


def condition_projection(coll: Collection, condition: str, concepts=None,
                         config: ConditionalConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(W, gallery projection) for a condition (METHODS.md §1, fast path), cached in the collection.

    The cache is keyed by the model fingerprint, the prompt set and the method's settings, and
    stamped with the collection generation: adding or removing items invalidates it.
    """
    from sharpclip.concepts import LLMEndpoint, load_vocabulary, prompt_set_hash

    config = config or ConditionalConfig()
    prompts = load_vocabulary(concepts, endpoint=LLMEndpoint.from_env()).prompts_for(condition)
    digest = prompt_set_hash(prompts)
    key = f"{coll.info.fingerprint}:{digest}:{config}"
    name = f"condition-{digest[:16]}"
    W, gallery = coll.cache_get(name + "-w", key), coll.cache_get(name, key)
    if W is None or gallery is None:
        snap, vectors = coll.read_vectors()  # the stamp is the generation the gallery is read at
        mask = snap.live_mask()
        if not mask.any():
            raise ValueError(f"{coll.path} has no indexed images to compare")
        W = projection_matrix(coll.model.encode_texts(prompts), gallery_mean(vectors[mask]), config)
        gallery = np.concatenate([project(vectors[i:i + 65536], W)
                                  for i in range(0, len(vectors), 65536)])
        coll.cache_put(name + "-w", key, W, snap.generation)
        coll.cache_put(name, key, gallery, snap.generation)
    return np.asarray(W), gallery


def _conditional_candidates(coll: Collection, query: np.ndarray, condition: str, k: int,
                            concepts) -> tuple[np.ndarray, np.ndarray]:
    W, gallery = condition_projection(coll, condition, concepts)
    scores, rows = exact_topk(gallery, project(query[None, :], W), k,
                              valid=coll.live_mask(len(gallery)))
    return scores[0], rows[0]
