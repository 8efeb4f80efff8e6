"""Calibrating dominant tokens in both towers (METHODS.md §3, CalibCLIP), training-free.

Pure array maths; the towers are run by ``models.calibrated`` (the one place that re-runs a block).

**CVE** (visual side, query-independent, at index time), per image:

1. ``a_j``: the last layer's head-averaged attention from the pooling query (CLIP: the CLS token;
   SigLIP: the attention-pooling head's probe, our extension) to patch ``j``.
2. ``S_j = a_j + eta (a_j - mean of a over j's 3x3 grid neighbours)`` (neighbours inside the grid,
   ``j`` itself excluded).
3. Bands by percentile of ``S`` over the image's patches: retain below ``p_decay``, decay from
   ``p_decay`` to ``p_suppress`` (factor ``decay``), suppress from ``p_suppress`` up.
4. The pooling attention is re-run with an additive bias on the pooling query's logits:
   ``log(decay)`` for decayed patches, ``-inf`` for suppressed ones (the CLS key, when there is one,
   is never biased), then the usual final norm and projection: ``v_cal``.
5. ``v_hat = n((1 - rho) v + rho v_cal)``.

**DCC** (text side, at query time):

1. ``b_t``: the last layer's head-averaged attention from the EOT token to token ``t`` (content
   tokens only).
2. ``f_t``: document frequency of the token in a reference corpus, divided by the largest one
   (in [0, 1]).
3. General tokens: the top ``ceil(fraction * content length)`` by ``b_t f_t``; replaced by the pad
   token (positions kept) and the text re-encoded: ``u_disc``.
4. Re-rank the shortlist by ``(1 - lam) cos(u, v_hat) + lam cos(u_disc, v_hat)``.

No layer is randomly initialised anywhere (the released code adds two untrained Linear layers, so
its output depends on the seed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

RETAIN, DECAY, SUPPRESS = 0, 1, 2


@dataclass(frozen=True)
class CVEConfig:
    """CVE's hyperparameters (METHODS.md §3a defaults)."""

    eta: float = 1.0
    p_decay: float = 80.0
    p_suppress: float = 95.0
    decay: float = 0.5
    rho: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.p_decay <= self.p_suppress <= 100:
            raise ValueError(f"CVE percentiles must satisfy 0 <= p_decay <= p_suppress <= 100 "
                             f"(got {self.p_decay}, {self.p_suppress})")
        if not 0 < self.decay <= 1 or not 0 <= self.rho <= 1 or self.eta < 0:
            raise ValueError(f"CVE needs 0 < decay <= 1, 0 <= rho <= 1, eta >= 0 (got "
                             f"{self.decay}, {self.rho}, {self.eta})")


@dataclass(frozen=True)
class DCCConfig:
    """DCC's hyperparameters (METHODS.md §3b defaults); ``shortlist`` is K."""

    fraction: float = 0.3
    lam: float = 0.5
    shortlist: int = 100

    def __post_init__(self) -> None:
        if not 0 <= self.fraction <= 1 or not 0 <= self.lam <= 1 or self.shortlist < 1:
            raise ValueError(f"DCC needs 0 <= fraction <= 1, 0 <= lam <= 1, shortlist >= 1 (got "
                             f"{self.fraction}, {self.lam}, {self.shortlist})")


def local_deviation(attention: np.ndarray, grid: tuple[int, int], eta: float = 1.0) -> np.ndarray:
    """``S = a + eta (a - mean of the 3x3 neighbours)`` per patch, for ``attention`` (B, P) laid
    out row-major on a ``grid`` of P = rows x cols patches (§3a step 2)."""
    rows, cols = grid
    a = np.asarray(attention, dtype=np.float64).reshape(-1, rows, cols)
    padded = np.pad(a, ((0, 0), (1, 1), (1, 1)))
    ones = np.pad(np.ones((rows, cols)), 1)
    total = sum(padded[:, 1 + dy:1 + dy + rows, 1 + dx:1 + dx + cols]
                for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
    count = sum(ones[1 + dy:1 + dy + rows, 1 + dx:1 + dx + cols]
                for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
    return (a + eta * (a - total / np.maximum(count, 1))).reshape(len(a), rows * cols)


def bands(scores: np.ndarray, p_decay: float, p_suppress: float) -> np.ndarray:
    """Per patch RETAIN (below the ``p_decay`` percentile of its image's scores), DECAY (up to
    ``p_suppress``) or SUPPRESS (from ``p_suppress``); ``p_suppress`` 100 suppresses nothing
    (§3a step 3)."""
    scores = np.asarray(scores, dtype=np.float64)
    low = np.percentile(scores, p_decay, axis=1, keepdims=True)
    high = np.percentile(scores, p_suppress, axis=1, keepdims=True)
    out = np.full(scores.shape, RETAIN, dtype=np.int8)
    if p_decay < 100:
        out[scores >= low] = DECAY
    if p_suppress < 100:
        out[scores >= high] = SUPPRESS
    return out


def key_bias(patch_bands: np.ndarray, decay: float, leading_keys: int) -> np.ndarray:
    """The additive bias (B, leading_keys + P) on the pooling query's attention logits: 0 for
    retained patches and the ``leading_keys`` non-patch keys (CLIP's CLS), ``log(decay)`` for
    decayed, ``-inf`` for suppressed patches (§3a step 4)."""
    bias = np.zeros(patch_bands.shape, dtype=np.float32)
    bias[patch_bands == DECAY] = math.log(decay)
    bias[patch_bands == SUPPRESS] = -np.inf
    return np.concatenate([np.zeros((len(bias), leading_keys), np.float32), bias], axis=1)


def cve_bias(attention: np.ndarray, grid: tuple[int, int], config: CVEConfig,
             leading_keys: int) -> np.ndarray:
    """Steps 2-4 of §3a in one: the pooling-query bias for each image's patch attention."""
    scores = local_deviation(attention, grid, config.eta)
    return key_bias(bands(scores, config.p_decay, config.p_suppress), config.decay, leading_keys)


def blend(plain: np.ndarray, calibrated: np.ndarray, rho: float) -> np.ndarray:
    """``v_hat = n((1 - rho) n(v) + rho n(v_cal))`` row-wise (§3a step 5), float32."""
    v = _unit(np.asarray(plain, np.float64))
    c = _unit(np.asarray(calibrated, np.float64))
    return _unit((1 - rho) * v + rho * c).astype(np.float32)


def token_generality(corpus: Iterable[Sequence[int]], ignore: Iterable[int] = ()) -> dict[int, float]:
    """Document frequency of each token id over ``corpus`` (token id lists), divided by the
    largest (§3b step 2); ``ignore`` (special tokens) is left out."""
    skip = set(ignore)
    counts: dict[int, int] = {}
    for ids in corpus:
        for token in set(ids) - skip:
            counts[token] = counts.get(token, 0) + 1
    top = max(counts.values(), default=1)
    return {token: n / top for token, n in counts.items()}


def general_positions(attention: np.ndarray, ids: Sequence[int], content: np.ndarray,
                      generality: dict[int, float], fraction: float) -> np.ndarray:
    """Positions of the ``ceil(fraction * content length)`` content tokens with the largest
    ``b_t f_t`` (§3b step 3), ties broken by position; ``content`` is a boolean mask over the
    positions. Tokens the corpus never saw have generality 0."""
    positions = np.flatnonzero(content)
    n = math.ceil(fraction * len(positions))
    if not n:
        return np.zeros(0, np.int64)
    weight = np.array([attention[p] * generality.get(int(ids[p]), 0.0) for p in positions])
    order = np.lexsort((positions, -weight))
    return np.sort(positions[order[:n]])


def mask_positions(ids: np.ndarray, positions: np.ndarray, pad_id: int) -> np.ndarray:
    """``ids`` with the tokens at ``positions`` replaced by ``pad_id`` (length and the other
    positions unchanged)."""
    out = np.array(ids, copy=True)
    out[np.asarray(positions, dtype=np.int64)] = pad_id
    return out


def dcc_scores(query: np.ndarray, query_disc: np.ndarray, gallery: np.ndarray,
               lam: float) -> np.ndarray:
    """``(1 - lam) cos(u, v_hat) + lam cos(u_disc, v_hat)`` for each gallery row (§3b step 4)."""
    gallery = np.asarray(gallery, np.float64)
    return (1 - lam) * gallery @ np.asarray(query, np.float64) + \
        lam * gallery @ np.asarray(query_disc, np.float64)


def attention_concentration(attention: np.ndarray, top: float = 0.1) -> np.ndarray:
    """Share of each attention row's mass on its top ``top`` fraction of tokens (at least one):
    1/len for a uniform row, near 1 when a few tokens absorb everything (the premise of §3)."""
    a = np.sort(np.asarray(attention, np.float64), axis=-1)[..., ::-1]
    n = max(1, math.ceil(top * a.shape[-1]))
    return a[..., :n].sum(-1) / np.maximum(a.sum(-1), 1e-12)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
