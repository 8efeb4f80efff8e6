"""An ONNX Runtime copy of a checkpoint's text tower, so that a plain text search needs neither
torch nor transformers (their import costs ~4.4 CPU-seconds per CLI process).

The copy lives in the collection's ``cache/`` as ``text-<fingerprint>.onnx``, the checkpoint's
``tokenizer.json`` beside it, and a JSON sidecar holding both files' SHA-256, the model type, the
width and the tokenizer settings (so a hub checkpoint need not be resolved). It is written only
after the exported graph and the ``tokenizers``-library tokenisation were checked equal to the torch
path on probe texts, so a checkpoint whose tokenizer cannot be reproduced gets no copy (and keeps
the torch path). A missing, damaged or stale copy, or no onnxruntime, gives ``None``: the caller
falls back to torch. A refused export is remembered in the sidecar (with the library versions it
was tried with), so later searches do not pay for exporting and checking again until one of them
changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

PROBES = ("a red cube", "", "A BLUE ball left of a green cone, on a wooden table!",
          "word " * 200, "naïve café 123 ❤")
TOLERANCE = 1e-5


def copy_paths(cache_dir: Path, fingerprint: str) -> tuple[Path, Path, Path]:
    """The ONNX file, the tokenizer file and the JSON sidecar for a model fingerprint."""
    stem = cache_dir / f"text-{fingerprint}"
    return (stem.with_suffix(".onnx"), stem.with_suffix(".tokenizer.json"),
            stem.with_suffix(".json"))


def _sha256(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


class OnnxTextModel:
    """The text side of an :class:`~sharpclip.models.EmbeddingModel` run by ONNX Runtime:
    ``encode_texts`` gives the same unit vectors (within 1e-5)."""

    batch_size = 64

    def __init__(self, session, tokenizer, model_type: str, dim: int, fingerprint: str):
        self._session = session
        self._tokenizer = tokenizer
        self.model_type = model_type
        self.dim = dim
        self.fingerprint = fingerprint

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Token ids (and CLIP's attention mask) as int64 arrays, as the HF tokenizer makes them."""
        encodings = self._tokenizer.encode_batch(list(texts))
        tokens = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64)}
        if self.model_type == "clip":
            tokens["attention_mask"] = np.array([e.attention_mask for e in encodings], np.int64)
        return tokens

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Strings -> unit embeddings (N, dim), in batches of ``batch_size``."""
        parts = [self._session.run(None, self.tokenize(texts[i:i + self.batch_size]))[0]
                 for i in range(0, len(texts), self.batch_size)]
        return (np.concatenate(parts).astype(np.float32) if parts
                else np.zeros((0, self.dim), np.float32))


def _tokenizer(file: Path, settings: dict):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(file))
    tokenizer.enable_truncation(max_length=settings["max_length"])
    tokenizer.enable_padding(pad_id=settings["pad_id"], pad_token=settings["pad_token"],
                             length=settings["max_length"] if settings["pad_to_max"] else None)
    return tokenizer


def load_copy(cache_dir: Path, fingerprint: str) -> OnnxTextModel | None:
    """The ONNX text model stored for ``fingerprint``, or None when it is missing, damaged,
    stale or onnxruntime/tokenizers cannot load it (the caller then uses torch)."""
    onnx_file, tokenizer_file, meta_file = copy_paths(cache_dir, fingerprint)
    try:
        meta = json.loads(meta_file.read_text())
        if "refused" in meta:  # no copy can be made for this checkpoint: torch serves
            return None
        if (meta.get("fingerprint") != fingerprint or _sha256(onnx_file) != meta["sha256"]
                or _sha256(tokenizer_file) != meta["tokenizer_sha256"]):
            logger.info("ONNX text copy %s is damaged or stale; using torch", onnx_file)
            return None
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(onnx_file), options,
                                               providers=["CPUExecutionProvider"])
        tokenizer = _tokenizer(tokenizer_file, meta["tokenizer"])
        return OnnxTextModel(session, tokenizer, meta["model_type"], int(meta["dim"]), fingerprint)
    except Exception as error:  # noqa: BLE001 -- any failure means: use the torch path
        if not isinstance(error, FileNotFoundError):
            logger.info("ONNX text copy %s unusable (%s); using torch", onnx_file, error)
        return None


def _tokenizer_settings(model) -> dict | None:
    """The ``tokenizers`` settings reproducing ``model.tokenize``, or None if there is no
    tokenizer.json or no pad token (then the checkpoint keeps the torch path)."""
    hf = model.tokenizer
    if not (model.path / "tokenizer.json").is_file() or hf.pad_token_id is None:
        return None
    max_length = int(hf.model_max_length)
    if max_length > 1_000_000:  # "no limit": the text tower's positions are the limit
        max_length = int(model.model.config.text_config.max_position_embeddings)
    return {"max_length": max_length, "pad_id": int(hf.pad_token_id),
            "pad_token": str(hf.pad_token), "pad_to_max": model.model_type == "siglip"}


class _TextTower:
    """``get_text_features`` -> unit vectors, as a module for ``torch.onnx.export``."""

    def __new__(cls, model):
        import torch

        class Tower(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model.model

            def forward(self, input_ids, attention_mask=None):
                out = self.model.get_text_features(input_ids=input_ids,
                                                   attention_mask=attention_mask).pooler_output
                return torch.nn.functional.normalize(out.float(), dim=-1)

        return Tower().eval()


def _versions() -> dict:
    """The versions of what an export depends on (a refusal holds only while they stay)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("sharpclip", "torch", "transformers", "onnx", "onnxruntime", "tokenizers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def refused(cache_dir: Path, fingerprint: str) -> str | None:
    """Why no copy could be made for ``fingerprint`` with the libraries installed now, if an
    earlier :func:`write_copy` found so; else None."""
    try:
        meta = json.loads(copy_paths(cache_dir, fingerprint)[2].read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("fingerprint") != fingerprint:
        return None
    return meta.get("refused") if meta.get("versions") == _versions() else None


def _refuse(meta_file: Path, fingerprint: str, reason: str) -> None:
    """Remember (atomically) that no copy can be made; a cache that cannot be written forgets."""
    tmp = meta_file.with_name(f".{meta_file.name}.{os.getpid()}.refused")
    try:
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "refused": reason,
                                   "versions": _versions()}))
        os.replace(tmp, meta_file)
    except OSError:
        tmp.unlink(missing_ok=True)


def write_copy(model, cache_dir: Path) -> bool:
    """Export ``model``'s text tower into ``cache_dir`` (atomically) after checking it and the
    tokenisation equal to the torch path on :data:`PROBES`; False when they differ or the
    export fails (then only the refusal is written: see :func:`refused`, which makes later
    calls return False at once)."""
    import torch

    settings = _tokenizer_settings(model)
    if settings is None or refused(cache_dir, model.fingerprint):
        return False
    onnx_file, tokenizer_file, meta_file = copy_paths(cache_dir, model.fingerprint)
    tmp, tokenizer_tmp, meta_tmp = (f.with_name(f".{f.name}.{os.getpid()}.tmp")
                                    for f in (onnx_file, tokenizer_file, meta_file))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)  # a read-only collection: no copy
        tokens = model.tokenize(list(PROBES))
        names = ["input_ids", "attention_mask"] if model.model_type == "clip" else ["input_ids"]
        inputs = tuple(tokens[n] for n in names)  # SigLIP is trained without an attention mask
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape checks, fixed per export
            torch.onnx.export(_TextTower(model), inputs, str(tmp), input_names=names,
                              output_names=["embedding"], dynamo=False, opset_version=17,
                              dynamic_axes={n: {0: "batch", 1: "tokens"} for n in names})
        import onnxruntime

        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        shutil.copyfile(model.path / "tokenizer.json", tokenizer_tmp)
        copy = OnnxTextModel(session, _tokenizer(tokenizer_tmp, settings),
                             model.model_type, model.dim, model.fingerprint)
        mine = copy.tokenize(list(PROBES))
        same_tokens = all(np.array_equal(mine[n], tokens[n].numpy()) for n in names)
        got, want = copy.encode_texts(list(PROBES)), model.encode_texts(list(PROBES))
        gap = float(np.abs(got - want).max())
        if not same_tokens or gap > TOLERANCE:
            reason = f"tokens equal {same_tokens}, max gap {gap:.2e}"
            logger.info("no ONNX text copy for %s: %s", model.name, reason)
            _refuse(meta_file, model.fingerprint, reason)
            return False
        meta = {"fingerprint": model.fingerprint, "sha256": _sha256(tmp),
                "tokenizer_sha256": _sha256(tokenizer_tmp), "model_type": model.model_type,
                "dim": model.dim, "tokenizer": settings}
        meta_tmp.write_text(json.dumps(meta))
        os.replace(tmp, onnx_file)  # the sidecar last: a copy without one is never used
        os.replace(tokenizer_tmp, tokenizer_file)
        os.replace(meta_tmp, meta_file)
        return True
    except (OSError, MemoryError) as error:  # a full disk, a read-only collection: next time
        logger.info("no ONNX text copy for %s (%s)", model.name, error)
        return False
    except Exception as error:  # noqa: BLE001 -- an optional speed-up: never fail the search
        reason = f"{type(error).__name__}: {error}"
        logger.info("no ONNX text copy for %s (%s)", model.name, reason)
        _refuse(meta_file, model.fingerprint, reason)
        return False
    finally:
        for leftover in (tmp, tokenizer_tmp, meta_tmp):
            leftover.unlink(missing_ok=True)
