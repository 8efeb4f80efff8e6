"""Conditional candidates over a collection: the condition's gallery projection (METHODS.md §1,
fast path), computed once per collection generation and cached in the collection.

Several conditions (``colour+shape``) follow ``ConditionalConfig.combine``: ``"mean"`` (the
default, the better on the benchmark's pairs: docs/methods/conditional.md) reuses each
condition's cached projection side by side (:func:`project_combined`); ``"pooled"`` builds one
projection from the pooled prompts.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np

from sharpclip.methods.conditional import (
    ConditionalConfig,
    gallery_mean,
    project,
    project_combined,
    projection_matrix,
)
from sharpclip.store.search_index import exact_topk

_PROMPTS: dict[tuple, tuple[list[str], str, list]] = {}
_VOCABULARIES: dict[tuple, object] = {}


def _file_version(path) -> tuple | None:
    """What identifies one version of a vocabulary file (None: the built-in one)."""
    if path is None:
        return None
    try:
        stat = Path(path).expanduser().stat()
    except OSError:  # let load_vocabulary report it
        return (str(path), None)
    return (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _vocabulary(concepts=None):
    """The concept vocabulary, loaded once per process and vocabulary file version."""
    from sharpclip.concepts import LLMEndpoint, load_vocabulary

    endpoint = LLMEndpoint.from_env()
    key = (_file_version(concepts), endpoint)
    if key not in _VOCABULARIES:
        if len(_VOCABULARIES) > 16:
            _VOCABULARIES.clear()
        _VOCABULARIES[key] = load_vocabulary(concepts, endpoint=endpoint)
    return _VOCABULARIES[key]


def condition_prompts(condition: str, concepts=None) -> tuple[list[str], str, list]:
    """(prompts, a hash of the prompts and their values, each prompt's value) of a condition,
    built once per process and vocabulary version (expanding and de-duplicating a condition's
    prompts costs ~0.6 ms, a warm query's worth)."""
    from sharpclip.concepts import LLMEndpoint, prompt_set_hash

    key = (condition, _file_version(concepts), LLMEndpoint.from_env())
    if key not in _PROMPTS:
        if len(_PROMPTS) > 64:
            _PROMPTS.clear()
        prompts, values = _vocabulary(concepts).labelled_prompts_for(condition)
        digest = f"{prompt_set_hash(prompts)}:{prompt_set_hash(map(str, values))}"
        _PROMPTS[key] = prompts, digest, values
    return _PROMPTS[key]


def condition_projection(coll, condition: str, concepts=None,
                         config: ConditionalConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(W, gallery projection) for one condition (or a pooled ``a+b``), cached in the collection.

    The cache is keyed by the model fingerprint, the prompt set (with each prompt's value) and
    the method's settings, and stamped with the collection generation: adding or removing items
    invalidates it.
    """
    config = config or ConditionalConfig()
    prompts, digest, values = condition_prompts(condition, concepts)
    key = f"{coll.info.fingerprint}:{digest}:{config}"
    name = f"condition-{digest[:16]}"
    snap = coll.snapshot()  # the stamp is the generation the gallery is read at
    W = coll.cache_get(name + "-w", key, snap.generation)
    gallery = coll.cache_get(name, key, snap.generation)
    if W is None or gallery is None:
        snap, vectors = coll.read_vectors()
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
    Ws, columns = condition_gallery(coll, condition, concepts, config)
    projected_query = (project(query[None, :], Ws[0]) if len(Ws) == 1
                       else project_combined(query[None, :], Ws))
    snap, n = coll.snapshot(), columns.shape[1]
    scores, rows = exact_topk(columns, projected_query, k, transposed=True,
                              valid=None if snap.all_live(n) else snap.live_mask(n))
    return scores[0], rows[0]


_GALLERIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # per open collection
_DEFAULT_CONFIG = ConditionalConfig()


def condition_gallery(coll, condition: str, concepts=None, config: ConditionalConfig | None = None
                      ) -> tuple[list[np.ndarray], np.ndarray]:
    """(the query side's projection matrices, the projected gallery to scan, transposed: (k, N))
    of a condition, kept with the open collection per condition, vocabulary version and settings
    for as long as its generation stays: a warm query resolves its condition with one lookup.
    The transposed copy (N x k float32 in memory: 4 MB at 250k items for colour's k = 4) is
    scanned several times faster than the (N, k) cache file (see ``exact_topk``)."""
    from sharpclip.concepts import LLMEndpoint

    config = config or _DEFAULT_CONFIG
    kept_here = _GALLERIES.get(coll)
    if kept_here is None:
        kept_here = _GALLERIES[coll] = {}
    key = (condition, _file_version(concepts), LLMEndpoint.from_env(), config)
    generation = coll.snapshot().generation
    kept = kept_here.get(key)
    if kept is not None and kept[0] == generation:
        return kept[1], kept[2]
    names = _vocabulary(concepts).split(condition)
    if len(names) > 1 and config.combine == "mean":
        parts = [condition_projection(coll, name, concepts, config) for name in names]
        scale = np.float32(1.0 / np.sqrt(len(parts)))
        gallery = np.concatenate([g for _, g in parts], axis=1) * scale
        Ws = [W for W, _ in parts]
    else:
        W, gallery = condition_projection(coll, "+".join(names), concepts, config)
        Ws = [W]
    columns = np.ascontiguousarray(gallery.T, dtype=np.float32)
    if len(kept_here) >= 16:
        kept_here.clear()
    kept_here[key] = (generation, Ws, columns)
    return Ws, columns
