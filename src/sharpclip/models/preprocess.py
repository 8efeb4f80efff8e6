"""Image preprocessing with Pillow, driven by a checkpoint's ``preprocessor_config.json``.

Reproduces what transformers' ``CLIPImageProcessor`` / ``SiglipImageProcessor`` do: convert to
RGB, resize (CLIP: shortest edge; SigLIP: to a fixed height x width), centre crop, rescale to
[0, 1], normalise by mean/std, channels first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ImagePreprocessor:
    """Resize/crop/normalise settings. ``shortest_edge`` None means resize to ``resize_hw``."""

    crop_hw: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    shortest_edge: int | None = None
    resize_hw: tuple[int, int] | None = None
    resample: int = 3  # PIL.Image.BICUBIC
    do_center_crop: bool = True
    rescale_factor: float = 1 / 255

    @classmethod
    def from_config(cls, config: dict) -> ImagePreprocessor:
        """Build from the dict stored in a checkpoint's ``preprocessor_config.json``."""
        size = config.get("size", {"shortest_edge": 224})
        if isinstance(size, int):
            size = {"shortest_edge": size}
        shortest = size.get("shortest_edge")
        resize_hw = None if shortest else (int(size["height"]), int(size["width"]))
        crop = config.get("crop_size", size)
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        do_crop = bool(config.get("do_center_crop", shortest is not None))
        crop_hw = (int(crop["height"]), int(crop["width"])) if do_crop else resize_hw
        if crop_hw is None:
            raise ValueError(f"preprocessor config has neither crop_size nor height/width: {config}")
        return cls(
            crop_hw=crop_hw,
            mean=tuple(config.get("image_mean", (0.48145466, 0.4578275, 0.40821073))),
            std=tuple(config.get("image_std", (0.26862954, 0.26130258, 0.27577711))),
            shortest_edge=int(shortest) if shortest else None,
            resize_hw=resize_hw,
            resample=int(config.get("resample", 3)),
            do_center_crop=do_crop,
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
        )

    @classmethod
    def from_directory(cls, path: Path) -> ImagePreprocessor:
        """Read ``preprocessor_config.json`` from a checkpoint directory."""
        file = Path(path) / "preprocessor_config.json"
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: a checkpoint needs its image processor config")
        return cls.from_config(json.loads(file.read_text()))

    def _resize(self, image: Image.Image) -> Image.Image:
        if self.shortest_edge is None:
            h, w = self.resize_hw  # type: ignore[misc]
            return image.resize((w, h), resample=self.resample)
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.shortest_edge * long / short)
        size = (self.shortest_edge, new_long) if w <= h else (new_long, self.shortest_edge)
        return image.resize(size, resample=self.resample)

    def _center_crop(self, array: np.ndarray) -> np.ndarray:
        ch, cw = self.crop_hw
        h, w = array.shape[:2]
        if h < ch or w < cw:  # pad like transformers does, centred, with zeros
            padded = np.zeros((max(h, ch), max(w, cw), 3), array.dtype)
            top, left = (padded.shape[0] - h) // 2, (padded.shape[1] - w) // 2
            padded[top:top + h, left:left + w] = array
            array, h, w = padded, padded.shape[0], padded.shape[1]
        top, left = (h - ch) // 2, (w - cw) // 2
        return array[top:top + ch, left:left + cw]

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One image -> float32 array (3, H, W) ready for the vision tower."""
        array = np.asarray(self._resize(image.convert("RGB")), dtype=np.float32)
        if self.do_center_crop:
            array = self._center_crop(array)
        array = array * self.rescale_factor
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)

    def batch(self, images: list[Image.Image]) -> np.ndarray:
        """Images -> float32 array (B, 3, H, W)."""
        return np.stack([self(image) for image in images])
