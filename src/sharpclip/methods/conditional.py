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
- The rotation: the two-reflection construction above (the paper only says "Householder");
  ``rotation=False`` is the ablation ``H = I``.
- ``weighting="value"``: when each prompt's value is known (``prompt_values``), every value's
  prompts share one unit of weight in ``mu_c`` and in the SVD (rows scaled by sqrt(weight)), so a
  value spelled in more ways does not own more of the subspace. ``"prompt"`` is the paper's
  plain mean; ``"value_mean"`` replaces each value's prompts by their normalised mean.
- ``prompts_per_value=4``: only the first 4 prompts of each value (templates first, in the
  vocabulary's order) build the subspace; extra frames ("a close-up of ...") added directions
  that swamped the condition on the bundled model (the sweep in the docs).
- Several conditions (``"colour+shape"``): ``combine="mean"`` averages the per-condition
  similarities (:func:`project_combined`); ``"pooled"`` concatenates the prompt sets and calls
  the same functions (one SVD, same k rule), as the paper.
- The asymmetric ablation (as GeneCIS): only the query is projected,
  ``cos(f(q), H g)`` = ``project(q, W) @ project(g, W, normalise=False).T``.

Inputs: ``prompt_embeddings`` (n x d), gallery/query embeddings (N x d), all L2-normalised rows
(rows are re-normalised defensively); optional ``prompt_values`` (n,).

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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_EPS = 1e-12


WEIGHTINGS = ("prompt", "value", "value_mean")
COMBINATIONS = ("mean", "pooled")


@dataclass(frozen=True)
class ConditionalConfig:
    """Hyperparameters of conditional similarity.

    ``k``: subspace dimension; ``None`` chooses it from the prompts' spectrum (see
    ``explained_variance``). ``center``: centre the tangent vectors before the SVD. ``log_map``:
    ``False`` is the no-log-map ablation (SVD of plain tangent projections).
    ``explained_variance``: threshold of the ``k=None`` rule, in (0, 1].
    ``weighting``: how prompts enter the mean and the SVD when their values are known:
    ``"prompt"`` (each prompt once, the paper), ``"value"`` (each value's prompts share one unit
    of weight, so a value with more synonyms or templates does not pull the subspace towards
    it) or ``"value_mean"`` (one row per value: the normalised mean of its prompts).
    ``rotation``: ``False`` is the no-rotation ablation (``H = I``).
    ``combine``: how several conditions (``colour+shape``) are compared: ``"mean"`` of the
    per-condition similarities, or ``"pooled"`` prompts with one SVD (the paper).
    ``prompts_per_value``: when prompt values are known, only the first this many prompts of
    each value enter (the vocabulary lists its most caption-like templates first), so the
    prompt count is tied to the number of values; ``None`` uses every prompt.
    """

    k: int | None = None
    center: bool = False
    log_map: bool = True
    explained_variance: float = 0.95
    weighting: str = "value"
    rotation: bool = True
    combine: str = "mean"
    prompts_per_value: int | None = 4

    def __post_init__(self) -> None:
        if self.k is not None and (not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"k must be a positive integer or None (got {self.k!r})")
        if not 0.0 < self.explained_variance <= 1.0:
            raise ValueError(
                f"explained_variance must be in (0, 1] (got {self.explained_variance!r})"
            )
        if self.prompts_per_value is not None and (
                not isinstance(self.prompts_per_value, int) or self.prompts_per_value < 1):
            raise ValueError("prompts_per_value must be a positive integer or None "
                             f"(got {self.prompts_per_value!r})")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)} "
                             f"(got {self.weighting!r})")
        if self.combine not in COMBINATIONS:
            raise ValueError(f"combine must be one of {', '.join(COMBINATIONS)} "
                             f"(got {self.combine!r})")


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


def prompt_weights(values: Sequence | None, n: int, weighting: str) -> np.ndarray:
    """Per-prompt weights summing to 1: equal, or (``"value"``) equal per value then split among
    that value's prompts. Prompts whose value is ``None`` weigh as much as an average prompt."""
    if weighting == "prompt" or values is None:
        return np.full(n, 1.0 / n)
    known = [v for v in values if v is not None]
    counts = {v: known.count(v) for v in set(known)}
    average = len(known) / len(counts) if counts else 1.0
    weights = np.array([1.0 / counts[v] if v is not None else 1.0 / average for v in values])
    return weights / weights.sum()


def value_means(prompts: np.ndarray, values: Sequence) -> np.ndarray:
    """One unit row per value (in order of first appearance): the normalised mean of its prompts;
    prompts whose value is ``None`` stay rows of their own."""
    groups: dict = {}
    for i, value in enumerate(values):
        groups.setdefault(("v", value) if value is not None else ("p", i), []).append(i)
    return _unit(np.stack([prompts[rows].mean(axis=0) for rows in groups.values()]))


def first_per_value(values: Sequence, limit: int) -> np.ndarray:
    """Indices of the first ``limit`` prompts of each value, in order (prompts whose value is
    ``None`` are all kept)."""
    seen: dict = {}
    keep = []
    for i, value in enumerate(values):
        seen[value] = seen.get(value, 0) + 1
        if value is None or seen[value] <= limit:
            keep.append(i)
    return np.array(keep, dtype=np.int64)


def _prompt_tangents(prompts: np.ndarray, config: ConditionalConfig,
                     values: Sequence | None = None) -> tuple[np.ndarray, ...]:
    prompts = _unit(_rows(prompts, "prompt_embeddings"))
    if values is not None:
        if len(values) != len(prompts):
            raise ValueError(f"{len(values)} prompt values for {len(prompts)} prompts")
        if config.prompts_per_value is not None:
            keep = first_per_value(values, config.prompts_per_value)
            prompts, values = prompts[keep], [values[i] for i in keep]
        if config.weighting == "value_mean":
            prompts, values = value_means(prompts, values), None
    weights = prompt_weights(values, len(prompts), config.weighting)
    mu_c = _unit_vector(weights @ prompts, "the prompt mean")
    tangents = log_map(prompts, mu_c) if config.log_map else tangent_projection(prompts, mu_c)
    if config.center:
        tangents = tangents - weights @ tangents
    # rows scaled by sqrt(weight): the SVD then decomposes the weighted second moment
    return mu_c, tangents * np.sqrt(weights * len(weights))[:, None]


def condition_subspace(
    prompt_embeddings: np.ndarray, config: ConditionalConfig = ConditionalConfig(),
    prompt_values: Sequence | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(mu_c, V_k)``: the base point (d,) and an orthonormal basis (d x k) of the condition.

    ``V_k`` is orthogonal to ``mu_c`` (its columns are right singular vectors of tangent vectors).
    ``prompt_values`` (one per prompt, ``None`` when unknown) enables ``config.weighting``.
    """
    mu_c, tangents = _prompt_tangents(prompt_embeddings, config, prompt_values)
    _, s, vt = np.linalg.svd(tangents, full_matrices=False)
    k = choose_k(s, config)
    return mu_c, vt[:k].T.copy()


def explained_variance_curve(
    prompt_embeddings: np.ndarray, config: ConditionalConfig = ConditionalConfig(),
    prompt_values: Sequence | None = None,
) -> np.ndarray:
    """Cumulative explained variance of the prompt tangent matrix (for reports and k sweeps)."""
    _, tangents = _prompt_tangents(prompt_embeddings, config, prompt_values)
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


def alignment(mu_v: np.ndarray, mu_c: np.ndarray, config: ConditionalConfig) -> np.ndarray:
    """``H``: :func:`householder_alignment`, or the identity for the no-rotation ablation."""
    if not config.rotation:
        return np.eye(np.asarray(mu_c).size)
    return householder_alignment(mu_v, mu_c)


def conditional_similarity_literal(
    q: np.ndarray, g: np.ndarray, prompt_embeddings: np.ndarray, mu_v: np.ndarray,
    config: ConditionalConfig = ConditionalConfig(), prompt_values: Sequence | None = None,
) -> np.ndarray:
    """``csim(q, g | c)`` (Q x N) computed step by step as METHODS.md states it (slow path)."""
    mu_c, basis = condition_subspace(prompt_embeddings, config, prompt_values)
    rotation = alignment(mu_v, mu_c, config)
    fq = _unit(conditional_features(q, mu_c, basis, rotation, config.log_map))
    fg = _unit(conditional_features(g, mu_c, basis, rotation, config.log_map))
    return fq @ fg.T


def asymmetric_similarity_literal(
    q: np.ndarray, g: np.ndarray, prompt_embeddings: np.ndarray, mu_v: np.ndarray,
    config: ConditionalConfig = ConditionalConfig(), prompt_values: Sequence | None = None,
) -> np.ndarray:
    """The asymmetric ablation (as GeneCIS): only the query is projected,
    ``cos(f(q), H g)`` (Q x N), the gallery image aligned by ``H`` but kept whole (slow path)."""
    mu_c, basis = condition_subspace(prompt_embeddings, config, prompt_values)
    rotation = alignment(mu_v, mu_c, config)
    fq = _unit(conditional_features(q, mu_c, basis, rotation, config.log_map))
    return fq @ _unit(_unit(_rows(g, "g")) @ rotation.T).T


def projection_matrix(
    prompt_embeddings: np.ndarray, mu_v: np.ndarray,
    config: ConditionalConfig = ConditionalConfig(), prompt_values: Sequence | None = None,
) -> np.ndarray:
    """``W = H^T V_k`` (d x k): the fast path's per-condition projection."""
    mu_c, basis = condition_subspace(prompt_embeddings, config, prompt_values)
    return alignment(mu_v, mu_c, config).T @ basis


def project(vectors: np.ndarray, W: np.ndarray, normalise: bool = True) -> np.ndarray:
    """``n(vectors @ W)`` as float32 (N x k); ``project(q, W) @ project(g, W).T`` is csim.

    A vector with no component in the subspace projects to zeros (similarity 0 to everything).
    ``normalise=False`` on the gallery side gives the asymmetric form:
    ``project(q, W) @ project(g, W, normalise=False).T`` is ``cos(f(q), H g)`` for unit ``g``.
    """
    projected = _rows(vectors, "vectors") @ np.asarray(W, dtype=np.float64)
    return (_unit(projected) if normalise else projected).astype(np.float32)


def project_combined(vectors: np.ndarray, Ws: Sequence[np.ndarray]) -> np.ndarray:
    """The per-condition projections side by side, each unit-norm, scaled by ``1/sqrt(m)``:
    ``project_combined(q, Ws) @ project_combined(g, Ws).T`` is the mean over the ``m``
    conditions of ``csim(q, g | c)`` (``combine="mean"``), so one scan serves ``a+b``."""
    scale = np.float32(1.0 / np.sqrt(len(Ws)))
    return np.concatenate([project(vectors, W) for W in Ws], axis=1) * scale
