"""Training augmentation with Pillow (METHODS.md §4a): resize to 1.125 S, random S x S crop,
horizontal flip, colour jitter (brightness, contrast, saturation; hue is left alone so that
colour stays a property of the image)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

RESIZE_FACTOR = 1.125


@dataclass(frozen=True)
class Augmentation:
    """Output side ``side`` (the model's input); jitter strengths as fractions."""

    side: int
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    flip: bool = True

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        """One random augmentation of ``image`` (an ``side`` x ``side`` RGB image)."""
        big = round(RESIZE_FACTOR * self.side)
        scale = big / min(image.size)
        image = image.resize((max(big, round(image.width * scale)),
                              max(big, round(image.height * scale))), Image.BICUBIC)
        left = int(rng.integers(image.width - self.side + 1))
        top = int(rng.integers(image.height - self.side + 1))
        image = image.crop((left, top, left + self.side, top + self.side))
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        for enhance, strength in ((ImageEnhance.Brightness, self.brightness),
                                  (ImageEnhance.Contrast, self.contrast),
                                  (ImageEnhance.Color, self.saturation)):
            if strength:
                image = enhance(image).enhance(float(rng.uniform(1 - strength, 1 + strength)))
        return image
