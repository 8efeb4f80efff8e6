import os
from dataclasses import asdict, replace

import numpy as np
import torch

from sharpclip.data import shapes
from sharpclip.finetune.infonce import multi_positive_loss
from sharpclip.models import load_model
from sharpclip.models.train_base import (
    BaseTrainConfig,
    _batch,
    _partial_attributes,
    _partial_caption,
    train_base,
    train_tokenizer,
)

TINY = BaseTrainConfig(steps=2, batch_size=8, width=32, layers=1, heads=2, projection_dim=16,
                       vocab_size=300, image_size=32)


def test_tokenizer_never_fails_and_ends_with_eos():
    tok = train_tokenizer(TINY, n_captions=400)
    for text in ["a red pentagon", "zebra-crossing ünïcode", "🐈🐈", "日本語のテキスト", ""]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.unk_token_id is None or tok.unk_token_id not in ids


def test_trained_checkpoint_loads_and_pools_at_eos(tmp_path):
    train_base(TINY, tmp_path)
    model = load_model(str(tmp_path), device="cpu")
    texts = ["a red striped pentagon", "🐈 emoji"]
    tokens = model.tokenize(texts)
    hidden = model.model.text_model(**tokens).last_hidden_state
    eos = (tokens["input_ids"] == model.tokenizer.eos_token_id).int().argmax(dim=1)
    pooled = model.model.text_projection(hidden[torch.arange(len(texts)), eos])
    expected = torch.nn.functional.normalize(pooled, dim=-1).detach().numpy()
    np.testing.assert_allclose(model.encode_texts(texts), expected, atol=1e-5)
    np.testing.assert_array_equal(model.text_token_outputs(texts).eot_index, eos.numpy())


def test_training_is_deterministic_from_seed(tmp_path):
    train_base(TINY, tmp_path / "a")
    train_base(TINY, tmp_path / "b")
    a = load_model(str(tmp_path / "a"), device="cpu").fingerprint
    assert a == load_model(str(tmp_path / "b"), device="cpu").fingerprint


def test_resume_after_kill_ends_with_the_uninterrupted_weights(tmp_path):
    import subprocess
    import sys

    config = replace(TINY, steps=5, checkpoint_every=2)
    train_base(config, tmp_path / "whole", progress=False)
    script = ("from pathlib import Path; from sharpclip.models.train_base import "
              f"train_base, BaseTrainConfig; train_base(BaseTrainConfig(**{asdict(config)!r}), "
              f"Path({str(tmp_path / 'broken')!r}), progress=False)")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, check=False,
                         env={**os.environ, "SHARPCLIP_CRASH_AT": "finetune_checkpoint_saved:2",
                              "OMP_NUM_THREADS": str(torch.get_num_threads())})  # same sums
    assert run.returncode != 0 and (tmp_path / "broken" / ".checkpoint" / "state.pt").is_file()
    train_base(config, tmp_path / "broken", resume=True, progress=False)
    a = load_model(str(tmp_path / "whole"), device="cpu").fingerprint
    assert a == load_model(str(tmp_path / "broken"), device="cpu").fingerprint


def _preprocessor(size):
    from transformers import CLIPImageProcessor

    from sharpclip.models.preprocess import ImagePreprocessor

    processor = CLIPImageProcessor(size={"shortest_edge": size},
                                   crop_size={"height": size, "width": size})
    return ImagePreprocessor.from_config(processor.to_dict())


def test_multi_positive_loss_reduces_to_clip_loss_and_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.5, 1.5, 0.0]])
    eye = torch.eye(3, dtype=torch.bool)
    clip = (torch.nn.functional.cross_entropy(logits, torch.arange(3))
            + torch.nn.functional.cross_entropy(logits.T, torch.arange(3))) / 2
    torch.testing.assert_close(multi_positive_loss(logits, eye), clip)
    # caption 2 also describes image 0: caption 2 targets images 0 and 2 equally, and image 0
    # targets captions 0 and 2 equally
    positives = eye.clone()
    positives[2, 0] = True
    log_t = torch.log_softmax(logits, 1)
    log_i = torch.log_softmax(logits.T, 1)
    text = -(log_t[0, 0] + log_t[1, 1] + (log_t[2, 0] + log_t[2, 2]) / 2) / 3
    image = -((log_i[0, 0] + log_i[0, 2]) / 2 + log_i[1, 1] + log_i[2, 2]) / 3
    torch.testing.assert_close(multi_positive_loss(logits, positives), (text + image) / 2)


def test_batch_shape_groups_differ_only_in_shape_and_partial_positives_match_labels():
    config = BaseTrainConfig(batch_size=64, shape_groups=4, partial_caption_fraction=0.5,
                             image_size=32)
    rng = np.random.default_rng(3)
    pixels, texts, positives = _batch(config, rng, _preprocessor(32))
    assert pixels.shape == (64, 3, 32, 32) and len(texts) == 64
    assert positives.diagonal().all()
    # group members are rendered with the same jitter: pixels differ only where the shapes do
    first, second = pixels[0], pixels[1]
    assert 0 < np.mean(np.any(first != second, axis=0)) < 0.5
    partial = [i for i in range(64) if positives[i].sum() > 1]
    assert partial, "expected some partial captions with several positives"
    for i in partial:
        words = texts[i].split()
        assert not any(n in words for n in ("two", "three", "four", "left", "above"))


def test_partial_caption_names_exactly_the_chosen_attributes():
    obj = shapes.ShapeObject("pentagon", "red", "large", "striped")
    rng = np.random.default_rng(0)
    for _ in range(50):
        attributes = _partial_attributes(rng)
        caption = _partial_caption(obj, attributes, rng)
        assert ("red" in caption) == ("colour" in attributes)
        assert ("large" in caption) == ("size" in attributes)
        assert (("pentagon" in caption) or ("five-sided" in caption)) == ("shape" in attributes)
        assert ("strip" in caption) == ("fill" in attributes)
