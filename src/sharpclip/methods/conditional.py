"""Conditional similarity (CLAY): compare two images *in terms of* a condition such as colour.

Paper: "CLAY: Conditional Visual Similarity Modulation in Vision-Language Embedding Space"
(seed 001). Specification and free choices: ``METHODS.md`` section 1; measured behaviour:
``docs/methods/conditional.md``.

Equation (rows are L2-normalised embeddings, ``n(x) = x / ||x||``)::

    T_c  : prompt embeddings of the condition (n x d)
    mu_c = n(mean of T_c)                          base point of the condition
    L    = log_{mu_c}(T_c) = U S V^T               V_k: top-k right singular vectors (d x k)
    mu_v = n(mean gallery image embedding)
    H    = H2 H1, two Householder reflections through m = n(mu_v + mu_c), so H mu_v = mu_c
    f(v) = V_k V_k^T log_{mu_c}(H v)               conditional feature
    csim(q, g | c) = cos(f(q), f(g))               symmetric in q and g

Fast path (exact, tested against the literal one): the columns of ``V_k`` are tangent at
``mu_c`` and the log-map factor is a positive scalar per vector, so
``csim = cos(W^T q, W^T g)`` with ``W = H^T V_k`` (d x k). A gallery is projected once per
condition (N x k) and reused for every query.

Reconstruction (the paper is silent; our choices, each a field of :class:`ConditionalConfig`):

- ``k``: the paper uses 50 for a 512-d CLIP and many prompts; for small vocabularies ``k=None``
  picks the smallest k whose singular values explain ``explained_variance`` of the prompt matrix
  (capped at its rank). The default threshold comes from the sweep in the docs.
- ``center``: centre ``L`` before the SVD (a public reimplementation does, the paper does not).
  Centring changes only which subspace is chosen; features are never shifted, so the fast path
  stays exact.
- ``log_map=False`` (the ablation): the SVD runs on the plain tangent projections
  ``T - (T . mu_c) mu_c`` instead of the log-mapped prompts. On the gallery side the log map only
  rescales each vector, which cosine ignores, so the subspace is where the ablation differs.
- The rotation: the two-reflection construction above (the paper only says "Householder").

Inputs: ``prompt_embeddings`` (n x d), gallery/query embeddings (N x d), all L2-normalised rows
(rows are re-normalised defensively). Relations: multi-condition search ("colour+shape")
concatenates the prompt sets and calls the same functions (one SVD, same k rule).

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    >>> prompts, gallery = unit(rng.normal(size=(40, 16))), unit(rng.normal(size=(100, 16)))
    >>> W = projection_matrix(prompts, gallery_mean(gallery), ConditionalConfig(k=4))
    >>> g = project(gallery, W)                   # cache this per condition
    >>> scores = project(gallery[:3], W) @ g.T    # conditional similarity of 3 queries
    >>> scores.shape
    (3, 100)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-12


@dataclass(frozen=True)
class ConditionalConfig:
    """Hyperparameters of conditional similarity.

    ``k``: subspace dimension; ``None`` chooses it from the prompts' spectrum (see
    ``explained_variance``). ``center``: centre the tangent vectors before the SVD. ``log_map``:
    ``False`` is the no-log-map ablation (SVD of plain tangent projections).
    ``explained_variance``: threshold of the ``k=None`` rule, in (0, 1].
    """

    k: int | None = None
    center: bool = False
    log_map: bool = True
    explained_variance: float = 0.85

    def __post_init__(self) -> None:
        if self.k is not None and (not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"k must be a positive integer or None (got {self.k!r})")
        if not 0.0 < self.explained_variance <= 1.0:
            raise ValueError(
                f"explained_variance must be in (0, 1] (got {self.explained_variance!r})"
            )


def _rows(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D array of row vectors (got shape {x.shape})")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def _unit_vector(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    norm = np.linalg.norm(x)
    if not np.isfinite(norm) or norm < _EPS:
        raise ValueError(f"{name} must be a finite non-zero vector")
    return x / norm


def gallery_mean(vectors: np.ndarray) -> np.ndarray:
    """``mu_v``: the normalised mean of the gallery's (database's) image embeddings."""
    return _unit_vector(_rows(vectors, "vectors").mean(axis=0), "the gallery mean")


def tangent_projection(x: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """``x - (x . mu) mu``: the component of each row of ``x`` orthogonal to the unit vector mu."""
    mu = _unit_vector(mu, "mu")
    x = np.asarray(x, dtype=np.float64)
    return x - (x @ mu)[..., None] * mu


def log_map(x: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Log map of unit vectors ``x`` (rows, or one vector) at the unit vector ``mu``.

    ``theta = arccos(x . mu)``; ``log_mu(x) = theta / sin(theta) * (x - (x . mu) mu)``. The
    result is tangent at ``mu`` and its norm is ``theta``; the factor tends to 1 as theta -> 0
    (and is taken as 1 at theta = pi, where the tangent part vanishes).
    """
    mu = _unit_vector(mu, "mu")
    x = np.asarray(x, dtype=np.float64)
    cos = np.clip(x @ mu, -1.0, 1.0)
    theta = np.arccos(cos)
    sin = np.sin(theta)
    factor = np.where(sin > 1e-8, theta / np.maximum(sin, 1e-8), 1.0)
    return factor[..., None] * tangent_projection(x, mu)


def householder_alignment(mu_v: np.ndarray, mu_c: np.ndarray, atol: float = 1e-6) -> np.ndarray:
    """The rotation ``H = H2 H1`` (d x d, orthogonal) that takes ``mu_v`` onto ``mu_c``.

    ``m = n(mu_v + mu_c)``; ``H1`` reflects along ``u = n(mu_v - m)`` (swaps mu_v and m),
    ``H2`` along ``w = n(m - mu_c)`` (swaps m and mu_c). Vectors orthogonal to both means are
    left unchanged. ``H = I`` when the means are equal; antipodal means raise ``ValueError``.
    """
    mu_v = _unit_vector(mu_v, "mu_v (image mean)")
    mu_c = _unit_vector(mu_c, "mu_c (prompt mean)")
    if mu_v.shape != mu_c.shape:
        raise ValueError(f"mu_v {mu_v.shape} and mu_c {mu_c.shape} differ in dimension")
    if np.linalg.norm(mu_v + mu_c) < atol:
        raise ValueError(
            "the image mean and the prompt mean are antipodal: no unique rotation aligns them; "
            "check that images and prompts were encoded by the same model"
        )
    m = _unit(mu_v + mu_c)
    rotation = np.eye(mu_v.size)
    for a, b in ((mu_v, m), (m, mu_c)):
        diff = a - b
        norm = np.linalg.norm(diff)
        if norm > atol:
            u = diff / norm
            rotation = rotation - 2.0 * np.outer(u, u @ rotation)
    return rotation


def choose_k(singular_values: np.ndarray, config: ConditionalConfig) -> int:
    """The subspace dimension: ``config.k`` or the explained-variance rule, capped at the rank."""
    s = np.asarray(singular_values, dtype=np.float64)
    rank = int(np.sum(s > max(s.max(initial=0.0) * 1e-6, 1e-9)))
    if rank == 0:
        raise ValueError(
            "the prompt embeddings span no direction around their mean: give at least two "
            "distinct prompts"
        )
    if config.k is not None:
        return min(config.k, rank)
    energy = np.cumsum(s[:rank] ** 2) / np.sum(s[:rank] ** 2)
    return int(min(np.searchsorted(energy, config.explained_variance - 1e-12) + 1, rank))


def _prompt_tangents(prompts: np.ndarray, config: ConditionalConfig) -> tuple[np.ndarray, ...]:
    prompts = _unit(_rows(prompts, "prompt_embeddings"))
    mu_c = _unit_vector(prompts.mean(axis=0), "the prompt mean")
    tangents = log_map(prompts, mu_c) if config.log_map else tangent_projection(prompts, mu_c)
    if config.center:
        tangents = tangents - tangents.mean(axis=0)
    return mu_c, tangents


def condition_subspace(
    prompt_embeddings: np.ndarray, config: ConditionalConfig = ConditionalConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """``(mu_c, V_k)``: the base point (d,) and an orthonormal basis (d x k) of the condition.

    ``V_k`` is orthogonal to ``mu_c`` (its columns are right singular vectors of tangent vectors).
    """
    mu_c, tangents = _prompt_tangents(prompt_embeddings, config)
    _, s, vt = np.linalg.svd(tangents, full_matrices=False)
    k = choose_k(s, config)
    return mu_c, vt[:k].T.copy()


def explained_variance_curve(
    prompt_embeddings: np.ndarray, config: ConditionalConfig = ConditionalConfig()
) -> np.ndarray:
    """Cumulative explained variance of the prompt tangent matrix (for reports and k sweeps)."""
    _, tangents = _prompt_tangents(prompt_embeddings, config)
    s = np.linalg.svd(tangents, compute_uv=False)
    return np.cumsum(s**2) / max(np.sum(s**2), _EPS)


def conditional_features(
    v: np.ndarray, mu_c: np.ndarray, basis: np.ndarray, rotation: np.ndarray,
    log_map_gallery: bool = True,
) -> np.ndarray:
    """The literal feature ``f(v) = V_k V_k^T log_{mu_c}(H v)`` (N x d); the test reference."""
    aligned = _unit(_rows(v, "v")) @ np.asarray(rotation, dtype=np.float64).T
    tangent = log_map(aligned, mu_c) if log_map_gallery else tangent_projection(aligned, mu_c)
    return tangent @ basis @ basis.T


def conditional_similarity_literal(
    q: np.ndarray, g: np.ndarray, prompt_embeddings: np.ndarray, mu_v: np.ndarray,
    config: ConditionalConfig = ConditionalConfig(),
) -> np.ndarray:
    """``csim(q, g | c)`` (Q x N) computed step by step as METHODS.md states it (slow path)."""
    mu_c, basis = condition_subspace(prompt_embeddings, config)
    rotation = householder_alignment(mu_v, mu_c)
    fq = _unit(conditional_features(q, mu_c, basis, rotation, config.log_map))
    fg = _unit(conditional_features(g, mu_c, basis, rotation, config.log_map))
    return fq @ fg.T


def projection_matrix(
    prompt_embeddings: np.ndarray, mu_v: np.ndarray,
    config: ConditionalConfig = ConditionalConfig(),
) -> np.ndarray:
    """``W = H^T V_k`` (d x k): the fast path's per-condition projection."""
    mu_c, basis = condition_subspace(prompt_embeddings, config)
    return householder_alignment(mu_v, mu_c).T @ basis


def project(vectors: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``n(vectors @ W)`` as float32 (N x k); ``project(q, W) @ project(g, W).T`` is csim.

    A vector with no component in the subspace projects to zeros (similarity 0 to everything).
    """
    return _unit(_rows(vectors, "vectors") @ np.asarray(W, dtype=np.float64)).astype(np.float32)
