"""Fine-tuning (METHODS.md §4): losses against hand computations, recipes' frozen parameters,
mining, data loading, and end-to-end runs through the command line (2sft, --resume)."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sharpclip.finetune import arcface, infonce, mc_arcmargin, mining
from sharpclip.finetune.augment import Augmentation
from sharpclip.finetune.data import TrainingDataError, TrainingSet, load_training_set
from sharpclip.finetune.recipes import RECIPES, FinetuneConfig, RecipeError, trainable_names
from sharpclip.finetune.run import finetune, hold_side
from sharpclip.models import load_model
from tiny_checkpoints import save_tiny_clip, save_tiny_siglip

# -- ArcFace --------------------------------------------------------------------------------------


def test_arcface_with_zero_margin_is_a_scaled_softmax():
    cos = torch.tensor([[0.3, -0.2, 0.9], [0.1, 0.5, 0.4]])
    labels = torch.tensor([0, 2])
    logits = arcface.arcface_logits(cos, labels, scale=30.0, margin=0.0)
    assert torch.allclose(logits, 30.0 * cos)
    expected = F.cross_entropy(30.0 * cos, labels)
    head = arcface.ArcFaceHead(torch.eye(3), scale=30.0, margin=0.0)
    assert torch.allclose(head(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]),
                               torch.tensor([0, 2])),
                          F.cross_entropy(30.0 * torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]),
                                          torch.tensor([0, 2])))
    assert expected > 0


def test_arcface_margin_hand_computed():
    m = 0.1
    cos = torch.tensor([[0.5, 0.2], [-0.999, 0.3]])
    logits = arcface.arcface_logits(cos, torch.tensor([0, 0]), scale=2.0, margin=m)
    # Row 0: theta = acos(0.5) = pi/3, phi = cos(pi/3 + 0.1); the other class unchanged.
    assert logits[0, 0].item() == pytest.approx(2.0 * math.cos(math.pi / 3 + m), abs=1e-6)
    assert logits[0, 1].item() == pytest.approx(0.4)
    # Row 1: cos_y = -0.999 < cos(pi - m) = -0.995: the linear continuation.
    assert logits[1, 0].item() == pytest.approx(2.0 * (-0.999 - m * math.sin(math.pi - m)), abs=1e-6)


def test_arcface_gradients_reach_features_and_proxies():
    head = arcface.ArcFaceHead(torch.randn(4, 8), margin=0.1)
    features = torch.randn(3, 8, requires_grad=True)
    head(features, torch.tensor([0, 1, 3])).backward()
    assert features.grad.abs().sum() > 0 and head.proxies.grad.abs().sum() > 0


# -- MC-ArcMargin ---------------------------------------------------------------------------------


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def test_caption_positives_share_ids_and_ignore_padding():
    ids = torch.tensor([[5, 7], [7, -1], [9, -1]])
    positives = mc_arcmargin.caption_positives(ids)
    # Flat captions: (0,0)=5 (0,1)=7 (1,0)=7 (1,1)=pad (2,0)=9 (2,1)=pad.
    assert positives.tolist() == [[True, True, True, False, False, False],
                                  [False, True, True, False, False, False],
                                  [False, False, False, False, True, False]]


def _literal_mc_arcmargin(image, captions, ids, s, m):
    batch, per = ids.shape
    flat_ids = ids.reshape(-1).tolist()
    flat = captions.reshape(batch * per, -1)
    losses = []
    for i in range(batch):
        own = {c for c in ids[i].tolist() if c >= 0}
        if not own:
            continue
        logits, targets = [], []
        for j, cid in enumerate(flat_ids):
            if cid < 0:
                continue
            cos = float(image[i] @ flat[j])
            if cid in own:
                theta = math.acos(max(-1.0, min(1.0, cos)))
                phi = math.cos(theta + m) if cos > math.cos(math.pi - m) else cos - m * math.sin(math.pi - m)
                logits.append(s * phi)
                targets.append(1.0)
            else:
                logits.append(s * cos)
                targets.append(0.0)
        targets = np.array(targets) / sum(targets)
        log_prob = np.array(logits) - np.log(np.sum(np.exp(logits)))
        assert targets.sum() == pytest.approx(1.0)  # the multi-positive target sums to 1
        losses.append(-(targets * log_prob).sum())
    return float(np.mean(losses))


def test_mc_arcmargin_matches_a_literal_computation():
    image = _unit(3, 6, seed=1)
    captions = _unit(3, 4, 6, seed=2)
    ids = torch.tensor([[0, 1, 2, -1], [2, 3, -1, -1], [-1, -1, -1, -1]])
    loss = mc_arcmargin.mc_arcmargin_loss(image, captions, ids, scale=30.0, margin=0.1)
    assert loss.item() == pytest.approx(_literal_mc_arcmargin(image, captions, ids, 30.0, 0.1),
                                        rel=1e-5)


def test_mc_arcmargin_padding_changes_nothing():
    image = _unit(2, 6, seed=3)
    captions = _unit(2, 2, 6, seed=4)
    ids = torch.tensor([[0, 1], [2, 3]])
    padded = torch.cat([captions, _unit(2, 3, 6, seed=5)], dim=1)  # any vectors behind padding
    padded_ids = torch.cat([ids, torch.full((2, 3), -1)], dim=1)
    assert torch.allclose(mc_arcmargin.mc_arcmargin_loss(image, captions, ids),
                          mc_arcmargin.mc_arcmargin_loss(image, padded, padded_ids))


def test_mc_arcmargin_gradients_reach_only_the_images():
    image = _unit(2, 6, seed=6).requires_grad_(True)
    captions = _unit(2, 2, 6, seed=7).requires_grad_(True)
    loss = mc_arcmargin.mc_arcmargin_loss(image, captions, torch.tensor([[0, -1], [1, 2]]))
    grad_image, grad_captions = torch.autograd.grad(loss, [image, captions])
    assert grad_image.abs().sum() > 0
    assert grad_captions[0, 1].abs().sum() == 0  # a padding slot receives nothing


# -- InfoNCE --------------------------------------------------------------------------------------


def test_infonce_matches_cross_entropy_and_clamps_the_temperature():
    image, text = _unit(4, 5, seed=8), _unit(4, 5, seed=9)
    scale = torch.tensor(math.log(20.0), requires_grad=True)
    loss = infonce.symmetric_infonce(image, text, scale)
    logits = 20.0 * text @ image.T
    labels = torch.arange(4)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert scale.grad.abs() > 0
    hot = torch.tensor(math.log(500.0), requires_grad=True)
    clamped = infonce.symmetric_infonce(image, text, hot)
    clamped.backward()
    assert hot.grad.item() == 0.0  # beyond ln 100: no gradient
    reference = infonce.symmetric_infonce(image, text, torch.tensor(math.log(100.0)))
    assert clamped.item() == pytest.approx(reference.item(), rel=1e-6)


# -- recipes: exactly the named parameters change ------------------------------------------------


def _changed_after_one_step(spec: str, recipe: str, tmp_path) -> tuple[set, object]:
    base = load_model(spec)
    before = {n: p.detach().clone() for n, p in base.model.named_parameters()}
    training = _tiny_training_set(base, with_pool=True)
    config = FinetuneConfig(image_steps=1, text_steps=1, batch_size=4, augment=False,
                            image_lr=1e-2, text_lr=1e-2, warmup_fraction=0.0)
    finetune(recipe, base, training, None, config, progress=False)
    changed = {n for n, p in base.model.named_parameters() if not torch.equal(p, before[n])}
    return changed, base.model


def _tiny_training_set(model, with_pool=False) -> TrainingSet:
    side = hold_side(model)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
              for _ in range(8)]
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    names = ("red circle", "blue square", "green star", "pink cross")
    pairs = [(i, f"a photo of a {names[label]}") for i, label in enumerate(labels)]
    pool = tuple(dict.fromkeys(c for _, c in pairs)) + ("a cat", "two dogs") if with_pool else ()
    return TrainingSet(images, labels, names, pairs=pairs, pool=pool, digest="tiny")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {"bundled": "bundled", "clip": str(save_tiny_clip(root / "clip")),
            "siglip": str(save_tiny_siglip(root / "siglip"))}


@pytest.mark.parametrize("kind", ["bundled", "clip", "siglip"])
@pytest.mark.parametrize("recipe", ["gpr", "rea", "mcip"])
def test_each_recipe_changes_exactly_its_parameters(checkpoints, kind, recipe, tmp_path):
    changed, model = _changed_after_one_step(checkpoints[kind], recipe, tmp_path)
    objective = RECIPES[recipe][0]
    named = set(trainable_names(model, objective))
    assert changed == named
    if recipe == "rea":
        last = len(model.text_model.encoder.layers) - 1
        assert all(n.startswith((f"text_model.encoder.layers.{last}.", "text_model.final_layer_norm",
                                 "text_projection", "text_model.head")) or n == "logit_scale"
                   for n in changed)
    else:
        assert all(n.startswith(("vision_model.", "visual_projection.")) for n in changed)


def test_two_stage_recipe_equals_its_stages_run_one_after_the_other(model):
    config = FinetuneConfig(image_steps=2, text_steps=2, batch_size=4)
    training = _tiny_training_set(model)
    both = copy.deepcopy(model)
    finetune("2sft", both, training, None, config, progress=False)
    chained = copy.deepcopy(model)
    finetune("gpr", chained, training, None, config, progress=False)
    finetune("rea", chained, training, None, config, progress=False)
    for (name, a), (_, b) in zip(both.model.named_parameters(), chained.model.named_parameters()):
        assert torch.equal(a, b), name


def test_unknown_recipe_and_missing_pool_are_clear_errors(model):
    with pytest.raises(RecipeError, match="unknown recipe 'arc'"):
        finetune("arc", model, _tiny_training_set(model), None)
    with pytest.raises(RecipeError, match="--captions FILE"):
        finetune("mcip", copy.deepcopy(model), _tiny_training_set(model), None)


# -- mining and augmentation ---------------------------------------------------------------------


def test_mining_keeps_the_top_captions_above_the_threshold():
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    captions = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.6], [-1.0, 0.0]])
    ids, threshold = mining.mine_pseudo_captions(images, captions, top=3, threshold=0.5)
    assert threshold == 0.5
    assert ids.tolist() == [[0, 2, -1], [1, 2, -1]]  # image 0: 0.9, 0.6 (0.2 below); image 1: 0.8, 0.6
    _, by_percentile = mining.mine_pseudo_captions(images, captions, top=2, percentile=50.0)
    assert by_percentile == pytest.approx(np.percentile(images @ captions.T, 50.0))


def test_augmentation_is_seeded_and_keeps_the_input_side():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (72, 90, 3), dtype=np.uint8))
    augment = Augmentation(64)
    a = augment(image, np.random.default_rng(1))
    b = augment(image, np.random.default_rng(1))
    assert a.size == (64, 64) and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(augment(image, np.random.default_rng(2))))


# -- data -----------------------------------------------------------------------------------------


def _write_folder(root, classes=("red_circle", "blue_square"), per_class=3):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
                root / name / f"{i}.png")
    return root


def test_class_folders_skip_unreadable_images_and_empty_classes(tmp_path):
    data = _write_folder(tmp_path / "data")
    (data / "red_circle" / "broken.png").write_bytes(b"not an image")
    (data / "empty_class").mkdir()
    captions = tmp_path / "captions.txt"
    captions.write_text("red_circle/0.png\ta red circle\nmissing.png\ta ghost\na blue square\n")
    training = load_training_set(data, captions, hold_side=36)
    assert training.class_names == ("blue square", "red circle")
    assert len(training.images) == 6 and min(training.images[0].size) == 36
    reasons = dict(training.skipped)
    assert any("broken.png" in p for p in reasons) and any("empty_class" in p for p in reasons)
    assert training.pairs == [(training.files["red_circle/0.png"], "a red circle")]
    assert set(training.pool) == {"a red circle", "a ghost", "a blue square"}


def test_one_class_only_is_a_clear_error(tmp_path):
    data = _write_folder(tmp_path / "data", classes=("only",))
    with pytest.raises(TrainingDataError, match="at least two classes"):
        load_training_set(data)
    with pytest.raises(TrainingDataError, match="not a directory"):
        load_training_set(tmp_path / "nowhere")


# -- end to end through the command line ---------------------------------------------------------


def _cli(*args, env=None, check=True):
    """Run the command line; with this process's torch thread count (which decides the last bits
    of every sum, so weights compare equal only across equal thread counts)."""
    threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    run = subprocess.run([sys.executable, "-m", "sharpclip.cli", *args], capture_output=True,
                         check=False, text=True, env={**os.environ, **threads, **(env or {})},
                         timeout=300)
    if check:
        assert run.returncode == 0, run.stderr
    return run


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "set"
    _cli("shapes", "--out", str(out), "--size", "48", "--seed", "3")
    return out


STEPS = ("--image-steps", "4", "--text-steps", "4", "--batch-size", "8", "--checkpoint-every", "2",
         "-q")


def test_2sft_end_to_end_and_resume_after_kill(shapes_set, tmp_path, model):
    config = FinetuneConfig(image_steps=4, text_steps=4, batch_size=8, checkpoint_every=2)
    whole = tmp_path / "whole"
    finetune("2sft", copy.deepcopy(model), load_training_set(shapes_set, hold_side=hold_side(model)),
             whole, config, progress=False)
    tuned = load_model(str(whole))
    provenance = json.loads((whole / "sharpclip_provenance.json").read_text())
    assert provenance["recipe"] == "2sft"
    assert provenance["base_fingerprint"] == model.fingerprint != tuned.fingerprint
    assert [s["objective"] for s in provenance["stages"]] == ["arcface", "rea"]
    assert set(provenance["metrics_before"]) == set(provenance["metrics_after"])
    assert not (whole / ".checkpoint").exists()
    # The command line, killed after its 3rd checkpoint (step 2 of the rea stage), then resumed:
    # the same weights as the uninterrupted run.
    broken = tmp_path / "broken"
    run = _cli("finetune", "2sft", "--data", str(shapes_set), "--out", str(broken), *STEPS,
               env={"SHARPCLIP_CRASH_AT": "finetune_checkpoint_saved:3"}, check=False)
    assert run.returncode != 0 and (broken / ".checkpoint" / "state.pt").is_file()
    with pytest.raises(RecipeError, match="--resume"):
        finetune("2sft", copy.deepcopy(model), _tiny_training_set(model), broken, config)
    _cli("finetune", "2sft", "--data", str(shapes_set), "--out", str(broken), *STEPS, "--resume")
    a, b = _weights(whole), _weights(broken)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_collection_refuses_the_tuned_model_and_reindex_moves_it(shapes_set, tmp_path, model):
    from sharpclip.collection import Collection
    from sharpclip.ingest import IndexConfig
    from sharpclip.ingest.reindex import reindex

    tuned_dir = tmp_path / "tuned"
    tuned = copy.deepcopy(model)
    training = load_training_set(shapes_set, hold_side=hold_side(model))
    finetune("gpr", tuned, training, tuned_dir, FinetuneConfig(image_steps=2, batch_size=8),
             progress=False)
    coll_dir = tmp_path / "coll"
    with Collection.create(coll_dir, model) as coll:
        coll.add([shapes_set], config=IndexConfig(progress=False))
    run = _cli("search", "a red circle", "-c", str(coll_dir), "--model", str(tuned_dir),
               check=False)
    assert run.returncode == 1 and "sharpclip reindex" in run.stderr
    with Collection.open(coll_dir) as source:
        report = reindex(source, tmp_path / "new", load_model(str(tuned_dir)), progress=False)
        items = {i.path: i for i in source.items()}
    assert report.new == len(items) and report.failed == 0
    with Collection.open(tmp_path / "new", str(tuned_dir)) as new:
        moved = {i.path: i for i in new.items()}
        assert {p: i.hash for p, i in moved.items()} == {p: i.hash for p, i in items.items()}
        hits = new.search(text="a red circle", k=3).hits
        assert len(hits) == 3
        first = load_model(str(tuned_dir)).encode_images([Image.open(hits[0].path).convert("RGB")])
        stored = new.search(image=hits[0].path, k=1).hits[0]
        assert stored.path == hits[0].path and stored.score == pytest.approx(1.0, abs=1e-5)
        assert first.shape == (1, tuned.dim)
