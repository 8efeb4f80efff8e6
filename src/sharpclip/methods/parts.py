"""Part-level re-ranking with Hungarian matching (METHODS.md §2a).

A query naming several objects ("a red circle left of a blue square") is split into parts; each
shortlisted image is re-scored by how well its region embeddings can be matched one-to-one to the
query's part embeddings. Rows are L2-normalised embeddings, so cos = dot product::

    q_i  (P x d) part embeddings            r_j (R x d) region embeddings of one candidate
    C_ij = 1 - cos(q_i, r_j), padded to square with cost 1; pi = linear_sum_assignment(C)
    A    = mean_i cos(q_i, r_pi(i))           (0 for a part matched to padding)
    S    = 1 - mean_{i<j} |cos(q_i, q_j) - cos(r_pi(i), r_pi(j))|   (1 when P < 2;
           a part matched to padding has a zero region vector)
    r    = (1 - lam) s + lam [(1 - g) A + g S]   s: the plain cosine of the shortlist

The shortlist (top-K by plain cosine) and all encoding are the caller's: this module is pure numpy.

Grammar of :func:`query_parts` (case-insensitive; the kept words keep their casing)::

    query    := framing* part (SEP part)*
    framing  := "a photo of" | "a picture of" | "an image of"
              | HEADING ":"          (the text up to the first ":", when text follows it)
    SEP      := "," | ";" | "and" | "next to" | "left of" | "right of" | "above" | "below"
              | "beside" | "with" (only before a|an|the|one|two|three|four)
    part     := words [TAIL*]         TAIL := "that is" | "which is" | "to the" | "on the"
                                              | "placed" | "is" | "to"   (dropped)

Separator words match whole words only ("sandy" does not split); "with stripes" stays in its part.
Each part is whitespace-normalised and stripped of surrounding punctuation; empty parts are dropped
and the first ``max_parts`` kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

SEPARATORS: tuple[str, ...] = (
    "and", ",", ";", "with", "next to", "left of", "right of", "above", "below", "beside",
)
"""The words and marks that split a query into parts ("with" only before an article/number)."""

_FRAMING = re.compile(r"(?:a\s+photo|a\s+picture|an\s+image)\s+of\b", re.IGNORECASE)
_WITH_FOLLOWERS = ("a", "an", "the", "one", "two", "three", "four")
_WORD_SEPARATORS = sorted((s for s in SEPARATORS if s[0].isalpha() and s != "with"), key=len)
_SPLIT = re.compile(
    r"[,;]|\b(?:" + "|".join(s.replace(" ", r"\s+") for s in reversed(_WORD_SEPARATORS)) + r")\b"
    r"|\bwith\b(?=\s+(?:" + "|".join(_WITH_FOLLOWERS) + r")\b)",
    re.IGNORECASE,
)
_TAILS = (("that", "is"), ("which", "is"), ("to", "the"), ("on", "the"), ("placed",), ("is",),
          ("to",))
_WORD = re.compile(r"\S+")
_SPACE = re.compile(r"\s*")
_ALNUM = re.compile(r"[^\W_]")


@dataclass(frozen=True)
class PartsConfig:
    """``shortlist``: K candidates re-ranked (>= 1); ``lam``: weight of the part term in [0, 1];
    ``structure``: g, the share of the structure term S inside the part term, in [0, 1].
    Defaults from the binding benchmark's seed-0 sweep (METHODS.md's were K 100, lam 0.5)."""

    shortlist: int = 300
    lam: float = 0.85
    structure: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.shortlist, int) or self.shortlist < 1:
            raise ValueError(f"shortlist must be a positive integer (got {self.shortlist!r})")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1] (got {self.lam!r})")
        if not 0.0 <= self.structure <= 1.0:
            raise ValueError(f"structure must be in [0, 1] (got {self.structure!r})")


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Narrow ``[start, end)`` past surrounding whitespace/punctuation and trailing TAIL words."""
    while True:
        while start < end and not text[start].isalnum():
            start += 1
        while end > start and not text[end - 1].isalnum():
            end -= 1
        words = [(m.start(), m.group().lower()) for m in _WORD.finditer(text, start, end)]
        lowered = tuple(w for _, w in words)
        tail = next((t for t in _TAILS if lowered[-len(t):] == t), None)
        if tail is None:
            return start, end
        if len(tail) == len(words):
            return start, start
        end = words[-len(tail)][0]


def part_spans(text: str, max_parts: int = 8) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` in ``text`` of the parts :func:`query_parts` returns."""
    if max_parts < 1:
        raise ValueError(f"max_parts must be >= 1 (got {max_parts!r})")
    start = 0
    colon = text.find(":")
    if colon >= 0 and _SPLIT.search(text, 0, colon) is None and _ALNUM.search(text, colon + 1):
        start = colon + 1  # a heading ("two shapes:") with text after it
    while m := _FRAMING.match(text, _SPACE.match(text, start).end()):
        start = m.end()
    spans, cursor = [], start
    for m in (*_SPLIT.finditer(text, start), None):
        piece = _strip_span(text, cursor, len(text) if m is None else m.start())
        if piece[1] > piece[0]:
            spans.append(piece)
            if len(spans) == max_parts:
                break
        if m is not None:
            cursor = m.end()
    return spans


def query_parts(text: str, max_parts: int = 8) -> list[str]:
    """Split a text query into object phrases by the grammar above (METHODS.md §2a step 2)."""
    return [" ".join(text[s:e].split()) for s, e in part_spans(text, max_parts)]


def _vectors(x: np.ndarray, name: str, dim: int | None = None, check: bool = True) -> np.ndarray:
    """``x`` as a float32/float64 matrix (kept as given: no copy of a large float32 gallery)."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    if x.ndim == 2 and x.shape[0] == 0 and dim is not None:
        x = x.reshape(0, dim)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"{name} must be a 2-D array of row vectors (got shape {x.shape})")
    if check and not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _assign(cos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of rows (parts) to columns (regions) of a cosine matrix (P x R)."""
    assignment = np.full(cos.shape[0], -1, dtype=np.int64)
    cosines = np.zeros(cos.shape[0], dtype=np.float64)
    if cos.size:
        from scipy.optimize import linear_sum_assignment  # lazy: 0.3 CPU-s a CLI search skips

        # Padding to square with a constant cost adds the same total to every complete matching,
        # so the rectangular problem has the same optimum.
        rows, cols = linear_sum_assignment(1.0 - cos)
        assignment[rows] = cols
        cosines[rows] = cos[rows, cols]
    return assignment, cosines


def match_parts(query: np.ndarray, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min-cost one-to-one matching of query parts to regions, cost ``1 - cos`` (§2a step 4).

    Returns ``(assignment, cosines)``, both (P,): the matched region index (int64; -1 for a part
    matched to padding, when P > R) and the cosine of the pair (0 for padding).
    """
    query = _vectors(query, "query")
    regions = _vectors(regions, "regions", query.shape[1])
    return _assign(query @ regions.T)


def alignment_score(cosines: np.ndarray) -> float:
    """``A``: the mean matched cosine over the query parts (§2a step 4); 0.0 for no parts."""
    cosines = np.asarray(cosines, dtype=np.float64)
    return float(cosines.mean()) if cosines.size else 0.0


def _structure(gram_query: np.ndarray, matched: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """S for a batch: ``gram_query`` (P x P); ``matched`` (K x P x d) region vectors of the parts,
    ``mask`` (K x P) False where a part is matched to padding (its vector counts as zero)."""
    p = gram_query.shape[0]
    if p < 2:
        return np.ones(matched.shape[0])
    gram_regions = matched @ matched.transpose(0, 2, 1)
    i, j = np.triu_indices(p, k=1)
    pairs = gram_regions[:, i, j] * (mask[:, i] & mask[:, j])
    return 1.0 - np.abs(gram_query[i, j] - pairs).astype(np.float64).mean(axis=1)


def structure_score(query: np.ndarray, regions: np.ndarray, assignment: np.ndarray) -> float:
    """``S = 1 - mean_{i<j} |R^A_ij - R^B_ij|`` (§2a step 5): pairwise cosines of the query parts
    against those of their matched regions; 1.0 for fewer than 2 parts; -1 in ``assignment`` is a
    zero region vector."""
    query = _vectors(query, "query")
    regions = _vectors(regions, "regions", query.shape[1])
    assignment = np.asarray(assignment, dtype=np.int64)
    if assignment.shape != (query.shape[0],) or (assignment >= len(regions)).any():
        raise ValueError(f"assignment must be {query.shape[0]} region indices or -1")
    mask = assignment >= 0
    if len(regions) == 0:
        regions = np.zeros((1, query.shape[1]))
    matched = regions[np.where(mask, assignment, 0)]
    return float(_structure(query @ query.T, matched[None], mask[None])[0])


def fuse(
    plain: np.ndarray, alignment: np.ndarray, structure: np.ndarray, config: PartsConfig
) -> np.ndarray:
    """``r = (1 - lam) s + lam [(1 - g) A + g S]`` (§2a step 6), float64; ``lam = 0`` returns the
    plain scores exactly and ``g = 0`` never reads S."""
    plain = np.asarray(plain, dtype=np.float64)
    if config.lam == 0.0:
        return plain.copy()
    part = np.asarray(alignment, dtype=np.float64)
    if config.structure > 0.0:
        g = config.structure
        part = (1.0 - g) * part + g * np.asarray(structure, dtype=np.float64)
    return (1.0 - config.lam) * plain + config.lam * part


@dataclass(frozen=True)
class PartScores:
    """Per candidate, in shortlist order: fused ``scores``, ``alignment`` A, ``structure`` S (K,);
    ``assignment`` (K x P, int64: index into the candidate's own regions, -1 unmatched) and the
    matched ``cosines`` (K x P)."""

    scores: np.ndarray
    alignment: np.ndarray
    structure: np.ndarray
    assignment: np.ndarray
    cosines: np.ndarray

    @property
    def order(self) -> np.ndarray:
        """Shortlist positions best first by fused score (ties keep the shortlist order)."""
        return np.argsort(-self.scores, kind="stable")


def rerank_parts(
    plain: np.ndarray, query: np.ndarray, regions: np.ndarray, owner: np.ndarray,
    config: PartsConfig,
) -> PartScores:
    """Re-score a shortlist of K candidates by part matching (METHODS.md §2a steps 3-6).

    ``plain`` (K,): plain cosines; ``query`` (P x d): part embeddings (P >= 1); ``regions``
    (N x d): the region vectors of all candidates; ``owner`` (N,): the candidate (0..K-1) of each
    row. A candidate's regions are numbered in the order their rows appear (contiguous rows are
    the usual layout, not a requirement). A candidate with no regions gets A = 0, every part
    unmatched (-1), and S computed with zero region vectors. One matmul computes all cosines; only
    the K assignments loop.
    """
    plain = np.asarray(plain, dtype=np.float64)
    if plain.ndim != 1 or not np.isfinite(plain).all():
        raise ValueError(f"plain must be a finite 1-D array (got shape {plain.shape})")
    query = _vectors(query, "query")
    if query.shape[0] == 0:
        raise ValueError("query must have at least one part")
    k, (p, d) = len(plain), query.shape
    regions = _vectors(regions, "regions", d, check=False)
    n = len(regions)
    owner = np.asarray(owner)
    if owner.shape != (n,) or (n and not np.issubdtype(owner.dtype, np.integer)):
        raise ValueError(f"owner must be {n} integers, one per region row (got shape {owner.shape})")
    if n and (owner.min() < 0 or owner.max() >= k):
        raise ValueError(f"owner values must be in [0, {k}) (got {owner.min()}..{owner.max()})")
    order = np.argsort(owner, kind="stable")  # region rows grouped by candidate
    counts = np.bincount(owner.astype(np.int64), minlength=k)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    # The one product (P, N). einsum, not BLAS: a (8 x d) @ (d x 1400) product is ~1 ms either
    # way, but threaded BLAS on a busy machine can take 10x longer.
    cos_all = np.einsum("pd,nd->pn", query.astype(regions.dtype), regions)[:, order]
    if not np.isfinite(cos_all).all():
        raise ValueError("regions contain NaN or infinite values")
    assignment = np.full((k, p), -1, dtype=np.int64)
    cosines = np.zeros((k, p), dtype=np.float64)
    cost_all = 1.0 - cos_all
    from scipy.optimize import linear_sum_assignment

    for c in np.flatnonzero(counts).tolist():
        lo, hi = starts[c], starts[c + 1]
        rows, cols = linear_sum_assignment(cost_all[:, lo:hi])  # see _assign on the padding
        assignment[c, rows] = cols
        cosines[c, rows] = cos_all[rows, cols + lo]
    mask = assignment >= 0
    if p < 2:
        structure = np.ones(k)
    else:
        if n:
            table, rows = regions, order[np.where(mask, assignment + starts[:-1, None], 0)]
        else:
            table, rows = np.zeros((1, d), dtype=regions.dtype), np.zeros_like(assignment)
        structure = _structure((query @ query.T).astype(table.dtype), table[rows], mask)
    alignment = cosines.mean(axis=1)
    return PartScores(fuse(plain, alignment, structure, config), alignment, structure,
                      assignment, cosines)
