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
        scores, rows = _conditional_candidates(coll, query, condition, k, concepts)
        described["condition"] = condition
    else:
        scores, rows = coll.nearest(query[None, :], k, exact=exact)
        scores, rows = scores[0], rows[0]
        ann = coll.uses_ann(len(coll.live_rows()[0]), exact) and coll.has_index()
        described["mode"] = "ann" if ann else "exact"
    timing["search"] = (time.perf_counter() - start) * 1e3
    intact = coll.intact_rows(rows)
    if not intact.all():
        logger.warning("%s: %d hits left out: their stored vectors changed on disk; run "
                       "`sharpclip check -c %s --repair`", coll.path, int((~intact).sum()), coll.path)
        scores, rows = scores[intact], rows[intact]
    located = coll.paths_for_rows(rows)
    hits = [Hit(located[int(r)][1], float(s), located[int(r)][0])
            for s, r in zip(scores, rows) if int(r) in located]
    return SearchResult(hits, {**described, "k": k}, timing)


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
