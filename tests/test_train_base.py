import numpy as np
import torch

from sharpclip.models import load_model
from sharpclip.models.train_base import BaseTrainConfig, train_base, train_tokenizer

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
