"""``load_model``: a Hugging Face CLIP or SigLIP checkpoint behind one embedding interface."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sharpclip.models.preprocess import ImagePreprocessor
from sharpclip.models.tokens import TokenOutput, image_tokens, text_tokens

SUPPORTED = ("clip", "siglip")
BUNDLED_DIR = Path(__file__).parent / "bundled"


class ModelLoadError(RuntimeError):
    """A model spec could not be resolved or loaded; the message says what to do."""


def _resolve(spec: str) -> Path:
    if spec == "bundled":
        if not (BUNDLED_DIR / "config.json").is_file():
            raise ModelLoadError(
                f"the bundled model is missing from {BUNDLED_DIR}; train it with "
                "`sharpclip train base --out DIR` or pass --model DIR"
            )
        return BUNDLED_DIR
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"{spec} is not a model directory (expected config.json inside)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec))
    except Exception as error:  # noqa: BLE001 -- offline, unknown id, auth: one clear line
        raise ModelLoadError(
            f"could not download model {spec!r} from the Hugging Face hub "
            f"({type(error).__name__}); pass a local checkpoint directory with --model DIR"
        ) from None


def _read_json(file: Path) -> dict:
    """A checkpoint's JSON file as a dict, or a ModelLoadError naming the file."""
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelLoadError(f"{file}: cannot read this checkpoint file ({error}); restore it "
                             "or download the checkpoint again") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{file}: expected a JSON object; restore it or download the "
                             "checkpoint again")
    return data


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    for name in ("config.json", "preprocessor_config.json"):
        file = path / name
        if file.is_file():
            digest.update(json.dumps(json.loads(file.read_text()), sort_keys=True).encode())
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    for file in weights:
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


@dataclass
class EmbeddingModel:
    """A loaded CLIP/SigLIP model: encodes images and texts to L2-normalised float32 arrays."""

    name: str
    path: Path
    model: object
    tokenizer: object
    preprocess: ImagePreprocessor
    model_type: str
    fingerprint: str
    device: str
    batch_size: int = 64

    @property
    def dim(self) -> int:
        """Width of the joint embedding space."""
        return int(self.model.config.projection_dim) if self.model_type == "clip" else int(
            self.model.config.text_config.hidden_size
        )

    def _normalise(self, features) -> np.ndarray:
        import torch

        features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.cpu().numpy().astype(np.float32)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed pixel arrays (B, 3, H, W) -> unit embeddings (B, dim)."""
        import torch

        with torch.inference_mode():
            tensor = torch.from_numpy(pixels).to(self.device)
            out = self.model.get_image_features(pixel_values=tensor)
            return self._normalise(out.pooler_output)

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        """PIL images -> unit embeddings (N, dim), in batches of ``batch_size``."""
        parts = [
            self.encode_pixels(self.preprocess.batch(images[i:i + self.batch_size]))
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def tokenize(self, texts: list[str]) -> dict:
        """Token ids as the checkpoint's own processor makes them (SigLIP pads to max length)."""
        padding = "max_length" if self.model_type == "siglip" else True
        return self.tokenizer(list(texts), padding=padding, truncation=True, return_tensors="pt")

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Strings -> unit embeddings (N, dim), in batches of ``batch_size``."""
        import torch

        parts = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                tokens = {k: v.to(self.device) for k, v in self.tokenize(texts[i:i + self.batch_size]).items()}
                if self.model_type == "siglip":
                    tokens.pop("attention_mask", None)  # SigLIP is trained without one
                parts.append(self._normalise(self.model.get_text_features(**tokens).pooler_output))
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)


    def image_token_outputs(self, images: list[Image.Image]) -> TokenOutput:
        """Last-layer token states and CLS attention of the vision tower (see models/tokens.py)."""
        import torch

        with torch.inference_mode():
            pixels = torch.from_numpy(self.preprocess.batch(images)).to(self.device)
            return image_tokens(self, pixels)

    def text_token_outputs(self, texts: list[str]) -> TokenOutput:
        """Last-layer token states, EOT index and EOT attention of the text tower."""
        import torch

        with torch.inference_mode():
            return text_tokens(self, texts)


def load_model(spec: str = "bundled", device: str | None = None) -> EmbeddingModel:
    """Load ``bundled``, a local HF checkpoint directory, or a hub id (CLIP or SigLIP)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, CLIPModel, SiglipModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading a local checkpoint takes well under a second

    path = _resolve(spec)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    model_type = _read_json(config_file).get("model_type")
    if (path / "preprocessor_config.json").is_file():
        _read_json(path / "preprocessor_config.json")
    if model_type not in SUPPORTED:
        raise ModelLoadError(
            f"{path}: model_type {model_type!r} is not supported; use a CLIP or SigLIP checkpoint"
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cls = CLIPModel if model_type == "clip" else SiglipModel
    try:
        config = AutoConfig.from_pretrained(path)
        model = cls.from_pretrained(path, config=config, attn_implementation="eager")
    except (OSError, ValueError, RuntimeError) as error:
        message = " ".join(str(error).split())[:300]
        raise ModelLoadError(f"{path}: the checkpoint cannot be loaded ({type(error).__name__}: "
                             f"{message}); restore it or download it again") from None
    model = model.to(device).eval()
    return EmbeddingModel(
        name=spec,
        path=path,
        model=model,
        tokenizer=AutoTokenizer.from_pretrained(path),
        preprocess=ImagePreprocessor.from_directory(path),
        model_type=model_type,
        fingerprint=_fingerprint(path),
        device=device,
    )
