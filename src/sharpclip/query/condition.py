"""Conditional candidates over a collection: the condition's gallery projection (METHODS.md §1,
fast path), computed once per collection generation and cached in the collection."""

from __future__ import annotations

import numpy as np

from sharpclip.methods.conditional import (
    ConditionalConfig,
    gallery_mean,
    project,
    projection_matrix,
)
from sharpclip.store.search_index import exact_topk


def condition_projection(coll, condition: str, concepts=None,
                         config: ConditionalConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(W, gallery projection) for a condition, cached in the collection.

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


def condition_candidates(coll, query: np.ndarray, condition: str, k: int,
                         concepts=None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the ``k`` live items most similar to ``query`` in ``condition``."""
    W, gallery = condition_projection(coll, condition, concepts)
    scores, rows = exact_topk(gallery, project(query[None, :], W), k,
                              valid=coll.live_mask(len(gallery)))
    return scores[0], rows[0]
