"""Conditional similarity (methods/conditional.py): the fast path against the literal one, and the
geometry it rests on (log map, Householder alignment, condition subspace)."""

import numpy as np
import pytest

from sharpclip.methods.conditional import (
    ConditionalConfig,
    asymmetric_similarity_literal,
    choose_k,
    condition_subspace,
    conditional_features,
    conditional_similarity_literal,
    explained_variance_curve,
    gallery_mean,
    householder_alignment,
    log_map,
    project,
    project_combined,
    projection_matrix,
)

CONFIGS = [
    ConditionalConfig(k=4),
    ConditionalConfig(),
    ConditionalConfig(k=6, center=True),
    ConditionalConfig(k=5, log_map=False),
    ConditionalConfig(k=500),  # capped at the rank
    ConditionalConfig(k=4, rotation=False),
    ConditionalConfig(weighting="prompt", k=3),
]
# a value per prompt (uneven groups) for the weighted configurations
VALUES = [f"v{i % 7 if i % 3 else 0}" for i in range(60)]


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


@pytest.mark.parametrize("values", [None, VALUES], ids=["no values", "values"])
@pytest.mark.parametrize("config", CONFIGS + [ConditionalConfig(weighting="value_mean")],
                         ids=repr)
def test_fast_path_equals_literal_on_random_embeddings(config, values):
    prompts, images = embeddings()
    literal = conditional_similarity_literal(images[:25], images, prompts, gallery_mean(images),
                                             config, values)
    W = projection_matrix(prompts, gallery_mean(images), config, values)
    np.testing.assert_allclose(project(images[:25], W) @ project(images, W).T, literal,
                               atol=1e-5)
    asymmetric = asymmetric_similarity_literal(images[:25], images, prompts,
                                               gallery_mean(images), config, values)
    np.testing.assert_allclose(project(images[:25], W) @ project(images, W, normalise=False).T,
                               asymmetric, atol=1e-5)


def test_no_rotation_ablation_is_the_literal_definition_with_identity():
    """rotation=False: f(v) = V_k V_k^T log_{mu_c}(v), written out here from METHODS.md."""
    prompts, images = embeddings(seed=8)
    config = ConditionalConfig(k=4, rotation=False, weighting="prompt")
    mu_c = unit(prompts.mean(axis=0))
    logs = log_map(prompts, mu_c)
    V = np.linalg.svd(logs)[2][:4].T
    f = unit(log_map(images, mu_c) @ V @ V.T)
    expected = f[:20] @ f.T
    got = conditional_similarity_literal(images[:20], images, prompts, gallery_mean(images),
                                         config)
    np.testing.assert_allclose(got, expected, atol=1e-10)
    rotated = conditional_similarity_literal(images[:20], images, prompts, gallery_mean(images),
                                             ConditionalConfig(k=4, weighting="prompt"))
    assert np.abs(rotated - expected).max() > 1e-3  # the rotation does change the comparison


def test_asymmetric_ablation_is_cosine_of_the_projected_query_and_the_aligned_image():
    """cos(f(q), H g): the query projected, the gallery image only rotated (as GeneCIS)."""
    prompts, images = embeddings(seed=9)
    config = ConditionalConfig(k=3)
    mu_v = gallery_mean(images)
    mu_c, V = condition_subspace(prompts, config)
    H = householder_alignment(mu_v, mu_c)
    fq = unit(log_map(images[:15] @ H.T, mu_c) @ V @ V.T)
    expected = fq @ unit(images @ H.T).T
    got = asymmetric_similarity_literal(images[:15], images, prompts, mu_v, config)
    np.testing.assert_allclose(got, expected, atol=1e-10)
    symmetric = conditional_similarity_literal(images[:15], images, prompts, mu_v, config)
    assert np.abs(got - symmetric).max() > 1e-3


def test_value_weighting_ignores_how_often_a_value_is_spelled():
    """weighting="value": spelling one value's prompts three times over changes nothing;
    weighting="prompt" (the paper's plain mean) is pulled towards that value."""
    prompts, _ = embeddings(seed=10, n_prompts=40)
    values = [f"v{i % 4}" for i in range(40)]
    repeated = np.concatenate([prompts, prompts[::4], prompts[::4]])  # every v0 prompt x 3
    repeated_values = values + ["v0"] * 20
    for weighting, same in (("value", True), ("prompt", False)):
        config = ConditionalConfig(k=3, weighting=weighting, prompts_per_value=None)
        mu_a, V_a = condition_subspace(prompts, config, values)
        mu_b, V_b = condition_subspace(repeated, config, repeated_values)
        close = np.allclose(V_a @ V_a.T, V_b @ V_b.T, atol=1e-8) and np.allclose(mu_a, mu_b)
        assert close is same, weighting


def test_value_mean_weighting_is_the_paper_method_on_the_value_means():
    prompts, images = embeddings(seed=11)
    means = unit(np.stack([prompts[np.array(VALUES) == v].mean(axis=0)
                           for v in dict.fromkeys(VALUES)]))
    mu_v = gallery_mean(images)
    got = projection_matrix(prompts, mu_v, ConditionalConfig(k=3, weighting="value_mean",
                                                              prompts_per_value=None), VALUES)
    expected = projection_matrix(means, mu_v, ConditionalConfig(k=3, weighting="prompt"))
    np.testing.assert_allclose(got @ got.T, expected @ expected.T, atol=1e-10)


def test_prompts_per_value_keeps_the_first_prompts_of_each_value():
    prompts, images = embeddings(seed=14)
    values = [None if i % 10 == 9 else f"v{i % 3}" for i in range(60)]
    kept = [i for i, v in enumerate(values)
            if v is None or values[:i + 1].count(v) <= 5]  # written out: first 5 of each value
    assert len(kept) == 6 + 3 * 5
    mu_v = gallery_mean(images)
    capped = projection_matrix(prompts, mu_v, ConditionalConfig(k=4, prompts_per_value=5), values)
    by_hand = projection_matrix(prompts[kept], mu_v, ConditionalConfig(k=4, prompts_per_value=None),
                                [values[i] for i in kept])
    np.testing.assert_allclose(capped @ capped.T, by_hand @ by_hand.T, atol=1e-10)
    every = projection_matrix(prompts, mu_v, ConditionalConfig(k=4, prompts_per_value=None),
                              values)
    assert np.abs(capped @ capped.T - every @ every.T).max() > 1e-3
    with pytest.raises(ValueError, match="prompts_per_value"):
        ConditionalConfig(prompts_per_value=0)


def test_combined_projection_is_the_mean_of_the_per_condition_similarities():
    prompts, images = embeddings(seed=12)
    other, _ = embeddings(seed=13)
    mu_v = gallery_mean(images)
    Ws = [projection_matrix(p, mu_v, ConditionalConfig(k=k)) for p, k in ((prompts, 3),
                                                                         (other, 5))]
    expected = np.mean([conditional_similarity_literal(images[:10], images, p, mu_v,
                                                       ConditionalConfig(k=k))
                        for p, k in ((prompts, 3), (other, 5))], axis=0)
    got = project_combined(images[:10], Ws) @ project_combined(images, Ws).T
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_fast_path_equals_literal_on_bundled_model_embeddings():
    from sharpclip.concepts import load_vocabulary
    from sharpclip.data import shapes
    from sharpclip.models.loader import load_model

    model = load_model("bundled", device="cpu")
    samples = shapes.generate(shapes.ShapesConfig(size=40, seed=3, image_size=64))
    images = model.encode_images([s.image for s in samples])
    prompts = model.encode_texts(load_vocabulary().prompts_for("colour+texture"))
    for config in (ConditionalConfig(), ConditionalConfig(k=50), ConditionalConfig(log_map=False),
                   ConditionalConfig(rotation=False)):
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
    with pytest.raises(ValueError, match="weighting must be"):
        ConditionalConfig(weighting="values")
    with pytest.raises(ValueError, match="combine must be"):
        ConditionalConfig(combine="max")
    with pytest.raises(ValueError, match="3 prompt values for 5 prompts"):
        condition_subspace(unit(np.eye(5) + 1), ConditionalConfig(), ["a", "b", "c"])
    same = np.tile(unit(np.arange(1.0, 5.0)), (5, 1))
    with pytest.raises(ValueError, match="two distinct prompts"):
        condition_subspace(same)
    W = np.zeros((4, 2))
    assert not project(np.ones((3, 4)), W).any()  # no component: zeros, not NaN
