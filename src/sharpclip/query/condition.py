"""Conditional candidates over a collection: the condition's gallery projection (METHODS.md §1,
fast path), computed once per collection generation and cached in the collection.

Several conditions (``colour+shape``) follow ``ConditionalConfig.combine``: ``"mean"`` (the
default, the better on the benchmark's pairs: docs/methods/conditional.md) reuses each
condition's cached projection side by side (:func:`project_combined`); ``"pooled"`` builds one
projection from the pooled prompts.
"""

from __future__ import annotations

import numpy as np

from sharpclip.methods.conditional import (
    ConditionalConfig,
    gallery_mean,
    project,
    project_combined,
    projection_matrix,
)
from sharpclip.store.search_index import exact_topk


def condition_projection(coll, condition: str, concepts=None,
                         config: ConditionalConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(W, gallery projection) for one condition (or a pooled ``a+b``), cached in the collection.

    The cache is keyed by the model fingerprint, the prompt set (with each prompt's value) and
    the method's settings, and stamped with the collection generation: adding or removing items
    invalidates it.
    """
    from sharpclip.concepts import LLMEndpoint, load_vocabulary, prompt_set_hash

    config = config or ConditionalConfig()
    vocabulary = load_vocabulary(concepts, endpoint=LLMEndpoint.from_env())
    prompts, values = vocabulary.labelled_prompts_for(condition)
    digest = prompt_set_hash(prompts)
    key = f"{coll.info.fingerprint}:{digest}:{prompt_set_hash(map(str, values))}:{config}"
    name = f"condition-{digest[:16]}"
    W, gallery = coll.cache_get(name + "-w", key), coll.cache_get(name, key)
    if W is None or gallery is None:
        snap, vectors = coll.read_vectors()  # the stamp is the generation the gallery is read at
        mask = snap.live_mask()
        if not mask.any():
            raise ValueError(f"{coll.path} has no indexed images to compare")
        W = projection_matrix(coll.model.encode_texts(prompts), gallery_mean(vectors[mask]),
                              config, values)
        gallery = np.concatenate([project(vectors[i:i + 65536], W)
                                  for i in range(0, len(vectors), 65536)])
        coll.cache_put(name + "-w", key, W, snap.generation)
        coll.cache_put(name, key, gallery, snap.generation)
    return np.asarray(W), gallery


def condition_candidates(coll, query: np.ndarray, condition: str, k: int, concepts=None,
                         config: ConditionalConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the ``k`` live items most similar to ``query`` in ``condition``."""
    from sharpclip.concepts import LLMEndpoint, load_vocabulary

    config = config or ConditionalConfig()
    names = load_vocabulary(concepts, endpoint=LLMEndpoint.from_env()).split(condition)
    if len(names) > 1 and config.combine == "mean":
        parts = [condition_projection(coll, name, concepts, config) for name in names]
        scale = np.float32(1.0 / np.sqrt(len(parts)))
        gallery = np.concatenate([g for _, g in parts], axis=1) * scale
        projected_query = project_combined(query[None, :], [W for W, _ in parts])
    else:
        W, gallery = condition_projection(coll, "+".join(names), concepts, config)
        projected_query = project(query[None, :], W)
    scores, rows = exact_topk(gallery, projected_query, k, valid=coll.live_mask(len(gallery)))
    return scores[0], rows[0]
