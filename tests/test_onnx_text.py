"""The ONNX text-tower copy: equal to the torch path, used by the CLI's plain text search without
importing torch, and ignored (torch serves) when missing, damaged, stale or unloadable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sharpclip.cli import main
from sharpclip.collection import Collection
from sharpclip.models import load_model
from sharpclip.models.onnx_text import copy_paths, load_copy, write_copy
from tiny_checkpoints import save_tiny_clip, save_tiny_siglip

TEXTS = ["a green cone", "", "two red cubes and one blue sphere on the left " * 6, "ünïcode ✓",
         "x"]
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module", params=["bundled", "clip", "siglip"])
def checkpoint(request, tmp_path_factory):
    if request.param == "bundled":
        return load_model("bundled")
    path = tmp_path_factory.mktemp(request.param)
    (save_tiny_clip if request.param == "clip" else save_tiny_siglip)(path)
    return load_model(str(path))


def test_copy_equals_torch_path(checkpoint, tmp_path):
    assert write_copy(checkpoint, tmp_path)
    copy = load_copy(tmp_path, checkpoint.fingerprint)
    assert copy is not None and copy.dim == checkpoint.dim
    reference = checkpoint.tokenize(TEXTS)
    tokens = copy.tokenize(TEXTS)
    assert np.array_equal(tokens["input_ids"], reference["input_ids"].numpy())
    got, want = copy.encode_texts(TEXTS), checkpoint.encode_texts(TEXTS)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5
    for text in TEXTS:  # one at a time (other padding) as in a CLI query
        assert np.abs(copy.encode_texts([text]) - checkpoint.encode_texts([text])).max() <= 1e-5


def _damage(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("harm", ["onnx", "tokenizer", "stale", "sidecar", "missing"])
def test_unusable_copy_is_ignored(model, tmp_path, harm):
    assert write_copy(model, tmp_path)
    onnx_file, tokenizer_file, meta_file = copy_paths(tmp_path, model.fingerprint)
    if harm == "onnx":
        _damage(onnx_file)
    elif harm == "tokenizer":
        _damage(tokenizer_file)
    elif harm == "stale":
        meta = json.loads(meta_file.read_text())
        meta["fingerprint"] = "0" * 16
        meta_file.write_text(json.dumps(meta))
    elif harm == "sidecar":
        meta_file.write_text("{not json")
    else:
        onnx_file.unlink()
    assert load_copy(tmp_path, model.fingerprint) is None


def test_no_onnxruntime_means_no_copy(model, tmp_path, monkeypatch):
    assert write_copy(model, tmp_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    assert load_copy(tmp_path, model.fingerprint) is None


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx_cli")
    assert main(["shapes", "--out", str(root / "img"), "--size", "24"]) == 0
    with Collection.create(root / "c.sc", "bundled") as coll:
        coll.add([root / "img"])
    return root / "c.sc"


def _search_json(coll: Path, capsys, *extra: str) -> list[tuple[str, float]]:
    assert main(["search", "a red cube", "-c", str(coll), "-k", "10", "--json", *extra]) == 0
    return [(h["path"], h["score"]) for h in json.loads(capsys.readouterr().out)["hits"]]


def _same_hits(a, b) -> bool:
    return [p for p, _ in a] == [p for p, _ in b] and np.allclose(
        [s for _, s in a], [s for _, s in b], rtol=0, atol=1e-5)


def test_cli_fast_search_equals_torch_search(collection, capsys):
    cache = collection / "cache"
    for file in copy_paths(cache, Collection.open(collection).info.fingerprint):
        file.unlink(missing_ok=True)
    torch_hits = _search_json(collection, capsys)  # no copy: torch serves, then writes the copy
    onnx_file, _, meta_file = copy_paths(cache, Collection.open(collection).info.fingerprint)
    assert onnx_file.is_file() and meta_file.is_file()
    assert _same_hits(_search_json(collection, capsys), torch_hits)
    assert _same_hits(_search_json(collection, capsys, "--exact"),
                      _search_json(collection, capsys, "--exact", "--model", "bundled"))
    _damage(onnx_file)  # damaged: torch serves the same answer and rewrites the copy
    assert _same_hits(_search_json(collection, capsys), torch_hits)
    assert load_copy(cache, Collection.open(collection).info.fingerprint) is not None


def test_cli_fast_search_does_not_import_torch(collection, capsys):
    _search_json(collection, capsys)  # makes sure the copy exists
    script = ("import sys; from sharpclip.cli import main; "
              f"main(['search', 'a red cube', '-c', {str(collection)!r}, '-k', '3']); "
              "print('torch' in sys.modules, 'transformers' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         check=True).stdout.splitlines()
    assert len(out) == 4 and out[-1] == "False False"


def test_tokenizer_that_differs_gets_no_copy_and_is_not_tried_again(model, tmp_path,
                                                                    monkeypatch):
    import torch

    from sharpclip.models import onnx_text

    settings = onnx_text._tokenizer_settings(model)
    monkeypatch.setattr(onnx_text, "_tokenizer_settings",
                        lambda m: {**settings, "max_length": settings["max_length"] - 4})
    exports = []
    export = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: exports.append(1) or export(*a, **k))
    assert not write_copy(model, tmp_path)  # the long probe truncates differently
    _, _, meta_file = copy_paths(tmp_path, model.fingerprint)
    assert list(tmp_path.iterdir()) == [meta_file] and len(exports) == 1
    assert "tokens equal False" in onnx_text.refused(tmp_path, model.fingerprint)
    assert load_copy(tmp_path, model.fingerprint) is None
    assert not write_copy(model, tmp_path) and len(exports) == 1  # remembered: not re-exported
    meta = json.loads(meta_file.read_text())
    meta["versions"]["onnxruntime"] = "0.0.1"  # another library version: worth a new try
    meta_file.write_text(json.dumps(meta))
    assert onnx_text.refused(tmp_path, model.fingerprint) is None
    assert not write_copy(model, tmp_path) and len(exports) == 2
    monkeypatch.setattr(onnx_text, "_tokenizer_settings", lambda m: settings)
    meta_file.unlink()  # the refusal deleted: the copy is made
    assert write_copy(model, tmp_path) and load_copy(tmp_path, model.fingerprint) is not None


def test_an_export_that_fails_is_remembered(model, tmp_path, monkeypatch):
    import torch

    from sharpclip.models import onnx_text

    exports = []

    def failing(*args, **kwargs):
        exports.append(1)
        raise RuntimeError("an operator ONNX cannot express")

    monkeypatch.setattr(torch.onnx, "export", failing)
    assert not write_copy(model, tmp_path) and not write_copy(model, tmp_path)
    assert len(exports) == 1 and "RuntimeError" in onnx_text.refused(tmp_path, model.fingerprint)
