"""MCIP's pseudo-caption mining (METHODS.md §4c): each training image's top captions from a pool,
by the original model's similarity, kept above a threshold.

The paper's threshold (0.27) is for ViT-L; similarities differ between models, so the default is
calibrated per model: a percentile of the image-caption similarities over the whole pool.
"""

from __future__ import annotations

import numpy as np

MAX_PERCENTILE_SAMPLE = 4_000_000  # similarities the percentile is estimated from, at most


def caption_threshold(similarities: np.ndarray, percentile: float, seed: int = 0) -> float:
    """The ``percentile`` of ``similarities`` (every image x caption score; a seeded sample of
    them when there are very many)."""
    flat = similarities.reshape(-1)
    if flat.size > MAX_PERCENTILE_SAMPLE:
        flat = np.random.default_rng(seed).choice(flat, MAX_PERCENTILE_SAMPLE, replace=False)
    return float(np.percentile(flat, percentile))


def mine_pseudo_captions(images: np.ndarray, captions: np.ndarray, top: int = 20,
                         threshold: float | None = None, percentile: float = 99.0,
                         ) -> tuple[np.ndarray, float]:
    """(N, top) pool indices of each image's most similar captions, best first, ``-1`` where a
    caption falls below the threshold (an absolute cosine, or by default the ``percentile`` of
    all similarities); returns them and the threshold used."""
    similarities = images @ captions.T
    if threshold is None:
        threshold = caption_threshold(similarities, percentile)
    top = min(top, captions.shape[0])
    order = np.argsort(-similarities, axis=1, kind="stable")[:, :top]
    kept = np.take_along_axis(similarities, order, axis=1) >= threshold
    return np.where(kept, order, -1), float(threshold)
