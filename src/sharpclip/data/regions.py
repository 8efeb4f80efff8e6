"""Region crops of an image: the candidate parts of geometry-aware re-ranking (METHODS.md §2a).

A *grid* is a sequence of levels, each a set of boxes in relative coordinates:

- ``whole``: the whole image (1 box);
- ``halves``: left, right, top and bottom halves (4 boxes);
- ``2x2``: the four quadrants (4 boxes);
- ``3x3``: nine overlapping windows of half the width and height, at offsets 0, 1/4 and 1/2
  (9 boxes).

Levels are written joined by ``+`` (``whole+2x2+3x3``). A crop is padded to a square with the
image's border colour (the median of its outermost pixels) rather than stretched: a stretched crop
changes the object's shape, which the text tower reads as another shape (a prototype found padding
far better).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

LEVELS: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "whole": ((0.0, 0.0, 1.0, 1.0),),
    "halves": ((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0), (0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0)),
    "2x2": tuple((x / 2, y / 2, x / 2 + 0.5, y / 2 + 0.5) for y in range(2) for x in range(2)),
    "3x3": tuple((x / 4, y / 4, x / 4 + 0.5, y / 4 + 0.5) for y in range(3) for x in range(3)),
}
# Chosen on the binding benchmark's varied layouts, seed 0 (docs/methods/geometry.md): halves beat
# 2x2 and 3x3 windows there, and adding them to halves cost a little.
DEFAULT_GRID = "whole+halves"


@dataclass(frozen=True)
class RegionGrid:
    """Which boxes to crop, as ``+``-joined level names (see the module docstring)."""

    spec: str = DEFAULT_GRID

    def __post_init__(self) -> None:
        levels = self.spec.split("+")
        unknown = [level for level in levels if level not in LEVELS]
        if unknown or len(set(levels)) != len(levels):
            raise ValueError(f"region grid {self.spec!r}: use distinct levels from "
                             f"{', '.join(LEVELS)} joined by '+', e.g. {DEFAULT_GRID}")

    @property
    def relative_boxes(self) -> np.ndarray:
        """(R, 4) boxes (x0, y0, x1, y1) as fractions of the width and height."""
        return np.array([box for level in self.spec.split("+") for box in LEVELS[level]])

    def __len__(self) -> int:
        return len(self.relative_boxes)

    def boxes(self, width: int, height: int) -> np.ndarray:
        """(R, 4) integer pixel boxes (x0, y0, x1, y1) for an image of this size; each box
        holds at least one pixel."""
        scale = np.array([width, height, width, height], dtype=np.float64)
        boxes = np.rint(self.relative_boxes * scale).astype(np.int64)
        boxes[:, 2] = np.maximum(boxes[:, 2], boxes[:, 0] + 1)
        boxes[:, 3] = np.maximum(boxes[:, 3], boxes[:, 1] + 1)
        return boxes


def border_colour(image: Image.Image) -> tuple[int, int, int]:
    """The per-channel median of the image's outermost pixels (its background, usually)."""
    array = np.asarray(image.convert("RGB"))
    edge = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
    return tuple(int(v) for v in np.median(edge, axis=0))


def crop_padded(image: Image.Image, box, fill: tuple[int, int, int] | None = None) -> Image.Image:
    """The ``box`` (x0, y0, x1, y1) of ``image``, centred on a square canvas of ``fill`` (default
    the image's border colour), so that the crop keeps its aspect ratio."""
    x0, y0, x1, y1 = (int(v) for v in box)
    crop = image.convert("RGB").crop((x0, y0, x1, y1))
    side = max(crop.width, crop.height)
    if crop.width == crop.height:
        return crop
    canvas = Image.new("RGB", (side, side), fill if fill is not None else border_colour(image))
    canvas.paste(crop, ((side - crop.width) // 2, (side - crop.height) // 2))
    return canvas


def region_crops(image: Image.Image, grid: RegionGrid) -> list[Image.Image]:
    """One padded crop per box of ``grid``, in the grid's order."""
    fill = border_colour(image)
    return [crop_padded(image, box, fill) for box in grid.boxes(image.width, image.height)]
