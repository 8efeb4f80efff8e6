"""Synthetic collections for the benchmark scripts (imported from the script's own folder)."""

from __future__ import annotations

import numpy as np

from sharpclip.collection import Collection
from sharpclip.store.collection import ItemUpdate


def fill(coll: Collection, n: int, batch: int = 50_000) -> None:
    """Commit ``n`` random unit vectors as items ``/synthetic/I.jpg``, ``batch`` rows a commit."""
    rng = np.random.default_rng(0)
    with coll.writing():
        for start in range(0, n, batch):
            m = min(batch, n - start)
            vectors = rng.standard_normal((m, coll.info.dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            coll.commit([ItemUpdate(f"/synthetic/{start + i}.jpg", f"h{start + i}", 1, 1,
                                    vector_index=i) for i in range(m)], vectors)
