"""Query-conditioned local steering (METHODS.md §2b).

A query that names an attribute value ("a *red* circle") is pushed away from the gallery
neighbourhood of its contrastive twin ("a *blue* circle") and towards its own::

    a'    = the confuser: the other value of a's condition whose swapped query embeds nearest e_q
    e_q-  = encode(query with a swapped for a')
    N+    = kNN(e_q, m),  N- = kNN(e_q-, m)        items in both are dropped
    dir   = n(mean(N+) - mean(N-))                  n(x) = x / ||x||
    e_q'  = n(e_q + beta * sum of the directions)   one per attribute; summed, never averaged

Two-part queries add the *binding swap*: the values of one condition exchanged between the parts
("a red circle left of a blue square" -> "a blue circle left of a red square"). Encoders and the
gallery search are the caller's callables; this module is pure numpy and string handling. A
vocabulary ``values`` maps each condition to its values (``{"colour": ["red", "blue"], ...}``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sharpclip.methods.parts import part_spans

_EPS = 1e-8


@dataclass(frozen=True)
class SteerConfig:
    """``m``: neighbours per side (>= 1); ``beta``: step length (>= 0); ``binding_swap``: add the
    binding-swap direction for two-part queries."""

    m: int = 20
    beta: float = 0.2
    binding_swap: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.m, int) or self.m < 1:
            raise ValueError(f"m must be a positive integer (got {self.m!r})")
        if not self.beta >= 0.0:
            raise ValueError(f"beta must be >= 0 (got {self.beta!r})")


@dataclass(frozen=True)
class Attribute:
    """An occurrence of ``value`` (the vocabulary's spelling) of ``condition`` at
    ``text[start:end]``."""

    condition: str
    value: str
    start: int
    end: int


def _key(value: str) -> str:
    return " ".join(value.split()).lower()


def find_attributes(text: str, values: Mapping[str, Sequence[str]]) -> list[Attribute]:
    """Whole-word, case-insensitive occurrences of vocabulary values in ``text`` (§2b step 1), in
    order of appearance, non-overlapping; at one position the longest value wins; a value listed
    under two conditions belongs to the first. A word that is part of a spatial relation ("left
    of", "right of") is not an attribute value: it relates two parts, it does not describe one."""
    lookup: dict[str, tuple[str, str]] = {}
    for condition, options in values.items():
        for value in options:
            if _key(value):
                lookup.setdefault(_key(value), (condition, value))
    if not lookup:
        return []
    words = sorted(lookup, key=len, reverse=True)
    pattern = r"(?<!\w)(?:" + "|".join(r"\s+".join(map(re.escape, w.split())) for w in words)
    found = re.finditer(pattern + r")(?!\w)", text, re.IGNORECASE)
    hits = ((lookup.get(_key(m.group())), m) for m in found)
    return [Attribute(*hit, m.start(), m.end()) for hit, m in hits
            if hit is not None and not _RELATION_WORD.match(text, m.end())]


_RELATION_WORD = re.compile(r"\s+of(?!\w)", re.IGNORECASE)  # "left| of", "right| of"


def parse_steer(spec: str, values: Mapping[str, Sequence[str]]) -> tuple[str, str]:
    """``"colour=red"`` -> ``("colour", "red")`` in the vocabulary's spelling (case-insensitive)."""
    condition, sep, value = spec.partition("=")
    conditions = {_key(c): c for c in values}
    if not sep or _key(condition) not in conditions:
        known = ", ".join(values) or "none"
        raise ValueError(f"steer {spec!r}: expected condition=value with a known condition "
                         f"({known})")
    condition = conditions[_key(condition)]
    options = {_key(v): v for v in values[condition]}
    if _key(value) not in options:
        known = ", ".join(values[condition]) or "none"
        raise ValueError(f"steer {spec!r}: unknown {condition} value {value.strip()!r} "
                         f"(known: {known})")
    return condition, options[_key(value)]


def _like(new: str, old: str) -> str:
    """``new`` in the casing of ``old`` (all capitals, or a capital first letter)."""
    if old.isupper() and len(old) > 1:
        return new.upper()
    return new[:1].upper() + new[1:] if old[:1].isupper() else new


def swap_value(text: str, attribute: Attribute, new_value: str) -> str:
    """``text`` with the attribute's span replaced by ``new_value`` (§2b step 2), in the casing
    of the replaced word."""
    old = text[attribute.start:attribute.end]
    if not 0 <= attribute.start <= attribute.end <= len(text) or _key(old) != _key(
        attribute.value
    ):
        raise ValueError(f"attribute {attribute.value!r} is not at {attribute.start}:"
                         f"{attribute.end} of {text!r}")
    return text[:attribute.start] + _like(new_value, old) + text[attribute.end:]


def confusers(attribute: Attribute, values: Mapping[str, Sequence[str]]) -> list[str]:
    """The other values of the attribute's condition, in vocabulary order (§2b step 1)."""
    if attribute.condition not in values:
        raise ValueError(f"unknown condition {attribute.condition!r} (known: {', '.join(values)})")
    seen = {_key(attribute.value)}
    out = []
    for value in values[attribute.condition]:
        if _key(value) not in seen:
            seen.add(_key(value))
            out.append(value)
    return out


def _binding(text: str, values: Mapping[str, Sequence[str]]) -> tuple[Attribute, Attribute] | None:
    spans = part_spans(text)
    if len(spans) != 2:
        return None
    found = find_attributes(text, values)
    first, second = ([a for a in found if s <= a.start and a.end <= e] for s, e in spans)
    for a in first:
        b = next((b for b in second if b.condition == a.condition), None)
        if b is not None and _key(a.value) != _key(b.value):
            return a, b
    return None


def binding_swap(text: str, values: Mapping[str, Sequence[str]]) -> str | None:
    """For a two-part text (``methods.parts.query_parts``), the text with the values of the first
    condition both parts name differently exchanged (§2b step 2); None when there is none."""
    pair = _binding(text, values)
    if pair is None:
        return None
    a, b = pair  # a precedes b
    return (text[:a.start] + _like(b.value, text[a.start:a.end]) + text[a.end:b.start]
            + _like(a.value, text[b.start:b.end]) + text[b.end:])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)


def nearest_confuser(query: np.ndarray, candidates: np.ndarray) -> int:
    """Index of the row of ``candidates`` (n x d text embeddings) with the highest cosine to
    ``query`` (§2b step 1)."""
    candidates = np.asarray(candidates, dtype=np.float64)
    if candidates.ndim != 2 or len(candidates) == 0:
        raise ValueError(f"candidates must be a non-empty (n, d) array (got {candidates.shape})")
    norms = np.maximum(np.linalg.norm(candidates, axis=1), 1e-12)
    return int(np.argmax(candidates @ np.asarray(query, dtype=np.float64).reshape(-1) / norms))


def direction(
    positive_ids: np.ndarray, positive: np.ndarray, negative_ids: np.ndarray, negative: np.ndarray
) -> np.ndarray | None:
    """``n(mean(N+) - mean(N-))`` after dropping the ids in both sides (§2b steps 3-4), float32;
    None when a side is left empty or the difference is ~0 (norm < 1e-8)."""
    positive_ids, negative_ids = np.asarray(positive_ids), np.asarray(negative_ids)
    keep_pos = ~np.isin(positive_ids, negative_ids)
    keep_neg = ~np.isin(negative_ids, positive_ids)
    if not keep_pos.any() or not keep_neg.any():
        return None
    diff = (np.asarray(positive, dtype=np.float64)[keep_pos].mean(axis=0)
            - np.asarray(negative, dtype=np.float64)[keep_neg].mean(axis=0))
    norm = float(np.linalg.norm(diff))
    return None if norm < _EPS else (diff / norm).astype(np.float32)


def steer(query: np.ndarray, directions: Sequence[np.ndarray], beta: float) -> np.ndarray:
    """``n(query + beta * sum(directions))`` as float32 (§2b steps 4-5: directions add, never
    average); a copy of ``query`` when there are no directions (or the sum cancels the query)."""
    if beta < 0:
        raise ValueError(f"beta must be >= 0 (got {beta!r})")
    if not directions:
        return np.array(query, copy=True)
    moved = np.asarray(query, dtype=np.float64) + beta * np.sum(directions, axis=0)
    norm = float(np.linalg.norm(moved))
    return np.array(query, copy=True) if norm < 1e-12 else (moved / norm).astype(np.float32)


@dataclass(frozen=True)
class Steering:
    """``vector``: the steered query (unit). ``details``: one dict per direction tried, with
    ``condition``, ``value``, ``confuser``, ``contrast`` (the contrastive text), ``overlap`` (ids
    in both N+ and N-), ``used`` (a direction came out). The binding swap has condition
    ``"binding"``, value ``"red, blue"`` (the values in order) and confuser ``"blue, red"``."""

    vector: np.ndarray
    details: list[dict]


def steer_query(
    text: str, query: np.ndarray, values: Mapping[str, Sequence[str]],
    encode_texts: Callable[[list[str]], np.ndarray],
    knn: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    config: SteerConfig, attributes: Sequence[Attribute] | None = None,
) -> Steering:
    """The whole of METHODS.md §2b for one query ``text`` with embedding ``query`` (d,).

    ``attributes``: the controlled ones (default: :func:`find_attributes`). All contrastive texts
    (every attribute's confuser swaps, the binding swap) are encoded in one ``encode_texts`` call
    (-> (n, d)); per attribute the nearest one to the query is the contrast. ``knn(vector, m) -> (ids (m,), vectors (m, d))`` searches the gallery.
    With ``config.binding_swap``, a two-part text adds its binding-swap direction. Nothing found:
    ``Steering(query copy, [])``; the caller words any message.
    """
    query = np.asarray(query)
    attributes = find_attributes(text, values) if attributes is None else list(attributes)
    positive: list[tuple[np.ndarray, np.ndarray]] = []  # N+, searched once, on first need
    directions, details = [], []

    def contrast(vector: np.ndarray, detail: dict) -> None:
        if not positive:
            positive.append(knn(query, config.m))
        pos_ids, pos_vectors = positive[0]
        neg_ids, neg_vectors = knn(np.asarray(vector, dtype=query.dtype), config.m)
        found = direction(pos_ids, pos_vectors, neg_ids, neg_vectors)
        detail.update(overlap=int(np.intersect1d(pos_ids, neg_ids).size), used=found is not None)
        details.append(detail)
        if found is not None:
            directions.append(found)

    # Every contrastive text of the query (each attribute's confuser swaps, the binding swap)
    # goes through the text tower in one call: one batch costs about what one text does.
    groups = [(attribute, confusers(attribute, values)) for attribute in attributes]
    texts = [swap_value(text, attribute, option) for attribute, options in groups
             for option in options]
    pair = _binding(text, values) if config.binding_swap else None
    swapped = binding_swap(text, values) if pair is not None else None
    if swapped is not None:
        texts.append(swapped)
    encoded = np.asarray(encode_texts(texts)) if texts else np.zeros((0, len(query)))
    if encoded.shape[0] != len(texts):
        raise ValueError(f"encode_texts returned {encoded.shape[0]} rows for {len(texts)} texts")
    at = 0
    for attribute, options in groups:
        detail = {"condition": attribute.condition, "value": attribute.value, "confuser": None,
                  "contrast": None, "overlap": 0, "used": False}
        if not options:
            details.append(detail)
            continue
        mine = encoded[at:at + len(options)]
        best = nearest_confuser(query, mine)
        detail.update(confuser=options[best], contrast=texts[at + best])
        contrast(mine[best], detail)
        at += len(options)
    if swapped is not None:
        a, b = pair
        contrast(encoded[-1], {"condition": "binding", "value": f"{a.value}, {b.value}",
                               "confuser": f"{b.value}, {a.value}", "contrast": swapped})
    return Steering(steer(query, directions, config.beta), details)
