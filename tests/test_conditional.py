"""Conditional similarity (methods/conditional.py): the fast path against the literal one, and the
geometry it rests on (log map, Householder alignment, condition subspace)."""

import numpy as np
import pytest

from sharpclip.methods.conditional import (
    ConditionalConfig,
    choose_k,
    condition_subspace,
    conditional_features,
    conditional_similarity_literal,
    explained_variance_curve,
    gallery_mean,
    householder_alignment,
    log_map,
    project,
    projection_matrix,
)

CONFIGS = [
    ConditionalConfig(k=4),
    ConditionalConfig(),
    ConditionalConfig(k=6, center=True),
    ConditionalConfig(k=5, log_map=False),
    ConditionalConfig(k=500),  # capped at the rank
]


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def embeddings(seed=0, d=32, n_prompts=60, n_images=200):
    """Prompts and images on the sphere around two different (not antipodal) means."""
    rng = np.random.default_rng(seed)
    text_mean, image_mean = rng.normal(size=d), rng.normal(size=d)
    prompts = unit(3 * unit(text_mean) + rng.normal(size=(n_prompts, d)) * 0.6)
    images = unit(3 * unit(image_mean) + rng.normal(size=(n_images, d)) * 0.6)
    return prompts, images


def fast(q, g, prompts, config):
    W = projection_matrix(prompts, gallery_mean(g), config)
    return project(q, W) @ project(g, W).T


@pytest.mark.parametrize("config", CONFIGS, ids=repr)
def test_fast_path_equals_literal_on_random_embeddings(config):
    prompts, images = embeddings()
    literal = conditional_similarity_literal(images[:25], images, prompts, gallery_mean(images),
                                             config)
    np.testing.assert_allclose(fast(images[:25], images, prompts, config), literal, atol=1e-5)


def test_fast_path_equals_literal_on_bundled_model_embeddings():
    from sharpclip.concepts import load_vocabulary
    from sharpclip.data import shapes
    from sharpclip.models.loader import load_model

    model = load_model("bundled", device="cpu")
    samples = shapes.generate(shapes.ShapesConfig(size=40, seed=3, image_size=64))
    images = model.encode_images([s.image for s in samples])
    prompts = model.encode_texts(load_vocabulary().prompts_for("colour+texture"))
    for config in (ConditionalConfig(), ConditionalConfig(k=50), ConditionalConfig(log_map=False)):
        literal = conditional_similarity_literal(images[:8], images, prompts,
                                                 gallery_mean(images), config)
        np.testing.assert_allclose(fast(images[:8], images, prompts, config), literal, atol=1e-5)


def test_householder_maps_image_mean_onto_prompt_mean_and_is_a_rotation():
    rng = np.random.default_rng(1)
    mu_v, mu_c = unit(rng.normal(size=16)), unit(rng.normal(size=16))
    H = householder_alignment(mu_v, mu_c)
    np.testing.assert_allclose(H @ mu_v, mu_c, atol=1e-12)
    np.testing.assert_allclose(H @ H.T, np.eye(16), atol=1e-12)
    assert np.linalg.det(H) == pytest.approx(1.0)
    # it rotates only in the plane of the two means
    basis = np.linalg.qr(np.stack([mu_v, mu_c], axis=1), mode="complete")[0][:, 2:]
    np.testing.assert_allclose(H @ basis, basis, atol=1e-12)


def test_householder_identity_when_equal_and_error_when_antipodal():
    mu = unit(np.arange(1.0, 9.0))
    np.testing.assert_allclose(householder_alignment(mu, mu), np.eye(8), atol=1e-12)
    with pytest.raises(ValueError, match="antipodal"):
        householder_alignment(mu, -mu)


def test_log_map_norm_is_the_angle_and_result_is_tangent():
    rng = np.random.default_rng(2)
    mu = unit(rng.normal(size=12))
    x = unit(rng.normal(size=(50, 12)))
    logs = log_map(x, mu)
    np.testing.assert_allclose(np.linalg.norm(logs, axis=1), np.arccos(x @ mu), atol=1e-10)
    np.testing.assert_allclose(logs @ mu, 0.0, atol=1e-12)
    np.testing.assert_allclose(log_map(mu, mu), 0.0, atol=1e-12)
    near = unit(mu + 1e-9 * unit(rng.normal(size=12)))  # factor -> 1 as theta -> 0
    np.testing.assert_allclose(log_map(near, mu), near - (near @ mu) * mu, atol=1e-15)
    assert np.isfinite(log_map(-mu, mu)).all()


def test_subspace_is_orthonormal_and_orthogonal_to_the_prompt_mean():
    prompts, _ = embeddings(seed=4)
    for config in CONFIGS:
        mu_c, V = condition_subspace(prompts, config)
        np.testing.assert_allclose(V.T @ mu_c, 0.0, atol=1e-10)
        np.testing.assert_allclose(V.T @ V, np.eye(V.shape[1]), atol=1e-10)
        np.testing.assert_allclose(mu_c, unit(prompts.mean(axis=0)), atol=1e-12)


def test_conditional_similarity_is_symmetric():
    prompts, images = embeddings(seed=5)
    config = ConditionalConfig(k=5)
    mu_v = gallery_mean(images)
    a = conditional_similarity_literal(images[:30], images[30:60], prompts, mu_v, config)
    b = conditional_similarity_literal(images[30:60], images[:30], prompts, mu_v, config)
    np.testing.assert_allclose(a, b.T, atol=1e-12)
    W = projection_matrix(prompts, mu_v, config)
    np.testing.assert_allclose(project(images[:30], W) @ project(images[30:60], W).T,
                               (project(images[30:60], W) @ project(images[:30], W).T).T,
                               atol=1e-6)


def test_no_log_map_ablation_changes_the_subspace():
    prompts, images = embeddings(seed=6)
    prompts = unit(prompts + np.random.default_rng(0).normal(size=prompts.shape))  # wide spread
    with_log = ConditionalConfig(k=5)
    without = ConditionalConfig(k=5, log_map=False)
    _, V_log = condition_subspace(prompts, with_log)
    _, V_plain = condition_subspace(prompts, without)
    assert np.abs(V_log @ V_log.T - V_plain @ V_plain.T).max() > 1e-3
    mu_v = gallery_mean(images)
    assert np.abs(conditional_similarity_literal(images[:10], images, prompts, mu_v, with_log)
                  - conditional_similarity_literal(images[:10], images, prompts, mu_v, without)
                  ).max() > 1e-3


def test_gallery_side_log_map_is_only_a_positive_rescaling():
    prompts, images = embeddings(seed=7)
    mu_c, V = condition_subspace(prompts, ConditionalConfig(k=5))
    H = householder_alignment(gallery_mean(images), mu_c)
    with_log = conditional_features(images, mu_c, V, H, log_map_gallery=True)
    without = conditional_features(images, mu_c, V, H, log_map_gallery=False)
    np.testing.assert_allclose(unit(with_log), unit(without), atol=1e-10)


def test_multi_condition_subspace_spans_both_prompt_sets():
    d, base = 12, np.eye(12)[11] * 3
    signs = np.tile([1.0, -1.0], 30)[:, None]  # balanced: the prompt mean is the base direction
    colour = unit(base + np.repeat(np.eye(d)[:3], 20, axis=0) * signs)
    shape = unit(base + np.repeat(np.eye(d)[3:6], 20, axis=0) * signs * 0.5)
    _, V_colour = condition_subspace(colour, ConditionalConfig(k=3))
    _, V_both = condition_subspace(np.concatenate([colour, shape]), ConditionalConfig(k=6))
    np.testing.assert_allclose(np.linalg.norm(V_colour[:3], axis=0), 1.0, atol=1e-8)
    assert np.abs(V_colour[3:6]).max() < 1e-8
    np.testing.assert_allclose(np.linalg.norm(V_both[:6], axis=0), 1.0, atol=1e-8)
    P = V_both @ V_both.T
    np.testing.assert_allclose(np.diag(P)[:6], 1.0, atol=1e-8)


def test_k_rule_explained_variance_and_cap():
    s = np.array([4.0, 2.0, 1.0, 1.0, 0.0])  # energies 16, 4, 1, 1 of 22
    assert choose_k(s, ConditionalConfig(explained_variance=0.7)) == 1
    assert choose_k(s, ConditionalConfig(explained_variance=0.9)) == 2
    assert choose_k(s, ConditionalConfig(explained_variance=1.0)) == 4  # capped at rank
    assert choose_k(s, ConditionalConfig(k=50)) == 4
    with pytest.raises(ValueError, match="two distinct prompts"):
        choose_k(np.zeros(3), ConditionalConfig())
    curve = explained_variance_curve(embeddings()[0])
    assert curve[-1] == pytest.approx(1.0) and np.all(np.diff(curve) >= -1e-12)


def test_config_validation_and_degenerate_inputs():
    with pytest.raises(ValueError, match="k must be"):
        ConditionalConfig(k=0)
    with pytest.raises(ValueError, match="explained_variance"):
        ConditionalConfig(explained_variance=1.5)
    same = np.tile(unit(np.arange(1.0, 5.0)), (5, 1))
    with pytest.raises(ValueError, match="two distinct prompts"):
        condition_subspace(same)
    W = np.zeros((4, 2))
    assert not project(np.ones((3, 4)), W).any()  # no component: zeros, not NaN
