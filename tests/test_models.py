import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, SiglipModel

from sharpclip.models import ModelLoadError, load_model
from tiny_checkpoints import save_tiny_clip, save_tiny_siglip


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {"clip": save_tiny_clip(root / "clip"), "siglip": save_tiny_siglip(root / "siglip")}


def _images():
    rng = np.random.default_rng(0)
    sizes = [(50, 37), (37, 50), (64, 64), (20, 30)]
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_preprocess_matches_transformers(checkpoints, kind):
    path = checkpoints[kind]
    model = load_model(str(path), device="cpu")
    reference = AutoImageProcessor.from_pretrained(path, use_fast=False)
    for image in _images():
        expected = reference(images=image, return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(model.preprocess(image), expected, atol=1e-4)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_embeddings_match_transformers(checkpoints, kind):
    path = checkpoints[kind]
    model = load_model(str(path), device="cpu")
    cls = CLIPModel if kind == "clip" else SiglipModel
    reference = cls.from_pretrained(path).eval()
    processor = AutoImageProcessor.from_pretrained(path, use_fast=False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    images, texts = _images(), ["a red circle", "unknown wörds 🐈 and emoji", "a"]
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        img = reference.get_image_features(pixel_values=pixels).pooler_output
        padding = "max_length" if kind == "siglip" else True
        tokens = tokenizer(texts, padding=padding, truncation=True, return_tensors="pt")
        if kind == "siglip":
            tokens.pop("attention_mask")
        txt = reference.get_text_features(**tokens).pooler_output
    img = torch.nn.functional.normalize(img, dim=-1).numpy()
    txt = torch.nn.functional.normalize(txt, dim=-1).numpy()
    np.testing.assert_allclose(model.encode_images(images), img, atol=1e-4)
    np.testing.assert_allclose(model.encode_texts(texts), txt, atol=1e-4)
    emb = model.encode_texts(texts)
    assert emb.dtype == np.float32 and emb.shape[1] == model.dim
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_batching_does_not_change_embeddings(checkpoints):
    model = load_model(str(checkpoints["clip"]), device="cpu")
    images = _images()
    full = model.encode_images(images)
    model.batch_size = 1
    np.testing.assert_allclose(model.encode_images(images), full, atol=1e-5)


def test_fingerprint_is_stable_and_weight_sensitive(checkpoints, tmp_path):
    a = load_model(str(checkpoints["clip"]), device="cpu").fingerprint
    assert a == load_model(str(checkpoints["clip"]), device="cpu").fingerprint
    other = save_tiny_clip(tmp_path / "other")  # same config, new random weights
    assert load_model(str(other), device="cpu").fingerprint != a


def test_unreachable_hub_id_fails_with_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="openai/clip-vit-base-patch32.*--model DIR"):
        load_model("openai/clip-vit-base-patch32")


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_clip_token_outputs_pool_to_the_embeddings(checkpoints):
    model = load_model(str(checkpoints["clip"]), device="cpu")
    images, texts = _images(), ["a red circle", "two green hexagons and more"]
    img = model.image_token_outputs(images)
    assert img.grid == (5, 5) and img.attention.shape == (len(images), 25)
    assert np.all(img.attention >= 0) and np.all(img.attention.sum(axis=1) <= 1 + 1e-5)
    proj = model.model.visual_projection.weight.detach().numpy()
    pooled = img.states[:, 0] @ proj.T
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled, model.encode_images(images), atol=1e-4)
    txt = model.text_token_outputs(texts)
    # this checkpoint has eos_token_id == 2: transformers' legacy rule pools at the highest id
    ids = model.tokenize(texts)["input_ids"].numpy()
    np.testing.assert_array_equal(txt.eot_index, ids.argmax(axis=1))
    proj = model.model.text_projection.weight.detach().numpy()
    pooled = txt.states[np.arange(len(texts)), txt.eot_index] @ proj.T
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled, model.encode_texts(texts), atol=1e-4)


def test_siglip_token_outputs_shapes(checkpoints):
    model = load_model(str(checkpoints["siglip"]), device="cpu")
    img = model.image_token_outputs(_images())
    assert img.grid == (4, 4) and img.attention.shape == (4, 16)
    np.testing.assert_allclose(img.attention.sum(axis=1), 1.0, atol=1e-5)
    txt = model.text_token_outputs(["a red circle"])
    assert txt.eot_index[0] == txt.states.shape[1] - 1
