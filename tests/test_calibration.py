"""Calibration (METHODS.md §3): the maths on hand-made cases, the re-run's identity on every model
type and two grid sizes, the calibrated vector set, and DCC through the pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scenes import write_scenes
from sharpclip.collection import Collection
from sharpclip.data import shapes
from sharpclip.data.imagefiles import load_rgb
from sharpclip.ingest import IndexConfig
from sharpclip.ingest.stages import Calibrated
from sharpclip.methods.calibration import (
    DECAY,
    RETAIN,
    SUPPRESS,
    CVEConfig,
    DCCConfig,
    attention_concentration,
    bands,
    blend,
    dcc_scores,
    general_positions,
    key_bias,
    local_deviation,
    mask_positions,
    token_generality,
)
from sharpclip.models import load_model
from sharpclip.models.calibrated import (
    encode_token_ids,
    pooling_inputs,
    rerun_pooling,
    text_tokens_for_dcc,
)
from sharpclip.query.calibration import DiscriminativeText
from sharpclip.query.gallery import ArrayGallery
from sharpclip.query.pipeline import QueryPlan, TextEncoder, run_query
from sharpclip.store.collection import CALIBRATED_SET
from tiny_checkpoints import save_tiny_clip, save_tiny_siglip


def test_local_deviation_against_a_literal_neighbourhood_mean():
    rng = np.random.default_rng(0)
    a = rng.random((2, 12))
    got = local_deviation(a, (3, 4), eta=0.7)
    for b in range(2):
        grid = a[b].reshape(3, 4)
        for r in range(3):
            for c in range(4):
                near = [grid[y, x] for y in range(r - 1, r + 2) for x in range(c - 1, c + 2)
                        if (y, x) != (r, c) and 0 <= y < 3 and 0 <= x < 4]
                expected = grid[r, c] + 0.7 * (grid[r, c] - np.mean(near))
                assert got[b, r * 4 + c] == pytest.approx(expected)


def test_bands_on_a_hand_made_attention_map():
    scores = np.arange(20, dtype=float)[None]  # percentile 80 -> 15.2, 95 -> 18.05
    got = bands(scores, 80, 95)[0]
    assert (got[:16] == RETAIN).all() and (got[16:19] == DECAY).all() and got[19] == SUPPRESS
    assert (bands(scores, 100, 100) == RETAIN).all()
    bias = key_bias(got[None], 0.5, leading_keys=1)[0]
    assert bias[0] == 0 and (bias[1:17] == 0).all()
    assert bias[17:20] == pytest.approx([math.log(0.5)] * 3) and bias[20] == -np.inf


def test_blend_and_concentration_by_hand():
    v, c = np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]])
    assert blend(v, c, 0.5)[0] == pytest.approx([2 ** -0.5, 2 ** -0.5])
    assert blend(v, c, 0.0)[0] == pytest.approx([1, 0])
    uniform = np.full((1, 20), 0.05)
    assert attention_concentration(uniform)[0] == pytest.approx(0.1)
    peaked = np.array([[0.9] + [0.1 / 19] * 19])
    assert attention_concentration(peaked)[0] == pytest.approx(0.9 + 0.1 / 19)


def test_generality_general_tokens_and_masking_keep_positions():
    corpus = [[1, 5, 6, 2], [1, 5, 7, 2], [1, 5, 6, 8, 2]]
    generality = token_generality(corpus, ignore=[1, 2])
    assert generality == {5: 1.0, 6: 2 / 3, 7: 1 / 3, 8: 1 / 3}
    ids = np.array([1, 5, 6, 9, 2, 0])
    content = np.array([False, True, True, True, False, False])
    attention = np.array([0.1, 0.2, 0.5, 0.9, 0.1, 0.0])
    # b*f: 5 -> 0.2, 6 -> 0.333, 9 (never seen) -> 0; ceil(0.3 * 3) = 1 token
    assert general_positions(attention, ids, content, generality, 0.3).tolist() == [2]
    assert general_positions(attention, ids, content, generality, 0.5).tolist() == [1, 2]
    masked = mask_positions(ids, np.array([1, 2]), pad_id=0)
    assert masked.tolist() == [1, 0, 0, 9, 2, 0] and ids.tolist() == [1, 5, 6, 9, 2, 0]
    assert dcc_scores(np.array([1.0, 0]), np.array([0, 1.0]), np.eye(2), 0.25).tolist() == [0.75, 0.25]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {"bundled": load_model("bundled"),
            "clip 5x5": load_model(str(save_tiny_clip(root / "c5", image_size=40, patch=8))),
            "clip 4x4": load_model(str(save_tiny_clip(root / "c4", image_size=32, patch=8))),
            "siglip": load_model(str(save_tiny_siglip(root / "s")))}


@pytest.mark.parametrize("name", ["bundled", "clip 5x5", "clip 4x4", "siglip"])
def test_rerun_without_bias_reproduces_the_plain_embedding(checkpoints, name):
    model = checkpoints[name]
    images = [s.image for s in shapes.generate(shapes.ShapesConfig(size=3, seed=2))]
    inputs = pooling_inputs(model, torch.from_numpy(model.preprocess.batch(images)))
    side = model.preprocess.crop_hw[0] // model.model.config.vision_config.patch_size
    assert inputs.grid == (side, side) and inputs.attention.shape == (3, side * side)
    assert inputs.leading_keys == (0 if model.model_type == "siglip" else 1)
    identity = key_bias(bands(local_deviation(inputs.attention, inputs.grid), 100, 100), 1.0,
                        inputs.leading_keys)  # decay 1, nothing suppressed
    np.testing.assert_allclose(rerun_pooling(model, inputs, identity), model.encode_images(images),
                               atol=1e-5)
    biased = rerun_pooling(model, inputs, key_bias(bands(inputs.attention, 50, 90), 0.1,
                                                   inputs.leading_keys))
    assert np.abs(biased - model.encode_images(images)).max() > 1e-4  # the bias does something
    texts = ["a red circle", "two large blue squares on a white background"]
    tokens = text_tokens_for_dcc(model, texts)
    np.testing.assert_allclose(encode_token_ids(model, tokens.input_ids, tokens.attention_mask,
                                                tokens.eot), model.encode_texts(texts), atol=1e-5)


def test_index_calibrate_stores_v_hat_and_adds_it_without_touching_images(tmp_path, model):
    folder = tmp_path / "in"
    paths = write_scenes(folder, 5, seed=21)
    plain = IndexConfig(workers=0, batch_size=2, progress=False)
    with Collection.create(tmp_path / "c.sc", model) as coll:
        coll.add([folder], config=IndexConfig(workers=0, batch_size=2, progress=False,
                                              calibrate=CVEConfig()))
        pixels = model.preprocess.batch([load_rgb(p) for p in paths])
        expected_plain, expected_hat = Calibrated().encode(model, pixels)
        ids = [coll.item(p).id for p in paths]
        rows, _ = coll.rows_for_items(CALIBRATED_SET, ids)
        np.testing.assert_allclose(coll.read_vectors(CALIBRATED_SET)[1][rows], expected_hat, atol=1e-5)
        np.testing.assert_allclose(np.stack([coll.vectors()[coll.item(p).row] for p in paths]),
                                   model.encode_images([load_rgb(p) for p in paths]), atol=1e-5)
        np.testing.assert_allclose(expected_plain, model.encode_pixels(pixels), atol=1e-5)
    with Collection.create(tmp_path / "d.sc", model) as coll:
        coll.add([folder], config=plain)
        before = (tmp_path / "d.sc" / "vectors" / "image.f32").read_bytes()
        report = coll.add([folder], config=IndexConfig(workers=0, progress=False,
                                                       calibrate=CVEConfig()))
        assert report.completed == 5 and report.embedded == 0
        assert (tmp_path / "d.sc" / "vectors" / "image.f32").read_bytes() == before
        rows, _ = coll.rows_for_items(CALIBRATED_SET, [coll.item(p).id for p in paths])
        np.testing.assert_allclose(coll.read_vectors(CALIBRATED_SET)[1][rows], expected_hat, atol=1e-5)


def test_dcc_only_reorders_the_shortlist_and_both_galleries_agree(tmp_path, model):
    folder = tmp_path / "in"
    paths = write_scenes(folder, 30, seed=22)
    with Collection.create(tmp_path / "c.sc", model) as coll:
        coll.add([folder], config=IndexConfig(workers=0, progress=False, calibrate=CVEConfig()))
        text = "a small red striped circle"
        disc = DiscriminativeText(model, ["a red circle", "a blue square", "a small star"])
        plan = QueryPlan(text=text, k=5, calibrate=DCCConfig(shortlist=12))
        images = [load_rgb(p) for p in paths]
        _, v_hat = Calibrated().encode(model, model.preprocess.batch(images))
        array = ArrayGallery(model.encode_images(images), sets={"calibrated": v_hat})
        got = run_query(plan, array, TextEncoder(model), discriminative=disc)
        shortlist = array.nearest(model.encode_texts([text])[0], 12, vector_set="calibrated")[1]
        u = model.encode_texts([text])[0]
        u_disc, masked = disc([text])
        fused = 0.5 * v_hat[shortlist] @ u + 0.5 * v_hat[shortlist] @ u_disc[0]
        assert got.ids.tolist() == shortlist[np.argsort(-fused)[:5]].tolist()  # only the shortlist
        np.testing.assert_allclose(got.scores, np.sort(fused)[::-1][:5], atol=1e-5)
        assert masked[0]
        captions = tmp_path / "captions.txt"
        captions.write_text("a red circle\n\na blue square\na small star\n")
        hits = coll.search(text=text, k=5, calibrate=DCCConfig(shortlist=12), captions=captions).hits
        id_to_index = {coll.item(p).id: i for i, p in enumerate(paths)}
        assert [id_to_index[h.id] for h in hits] == got.ids.tolist()
        assert set(hits[0].why) == {"calibrated", "calibrate"}


def test_calibrate_without_the_set_says_how_to_add_it(tmp_path, model, capsys):
    from sharpclip.cli import main

    folder = tmp_path / "in"
    write_scenes(folder, 3, seed=23)
    coll = str(tmp_path / "c.sc")
    assert main(["index", str(folder), "-c", coll, "--workers", "0", "-q"]) == 0
    capsys.readouterr()
    assert main(["search", "a red circle", "-c", coll, "--calibrate"]) == 1
    err = capsys.readouterr().err
    assert "--calibrate" in err and "sharpclip index" in err and len(err.strip().splitlines()) == 1
