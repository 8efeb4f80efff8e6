"""Encode stages of ingest: what one decoded image becomes in each vector set.

A stage names its vector set, prepares model-ready pixel arrays from a decoded image (in a decode
worker, so every file is decoded once whatever the stages), and records how its vectors are made
(the set's parameters, checked when a collection is indexed again). All stages embed through the
collection's image tower, batched together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from sharpclip.data.regions import RegionGrid, region_crops
from sharpclip.store.collection import IMAGE_SET, REGIONS_SET


@dataclass(frozen=True)
class WholeImage:
    """The ``image`` set: one vector per file, the checkpoint's own preprocessing."""

    name = IMAGE_SET

    def prepare(self, image: Image.Image, preprocess) -> np.ndarray:
        """(1, 3, H, W) pixels of the whole image."""
        return preprocess(image)[None]

    def params(self) -> dict:
        return {}


@dataclass(frozen=True)
class Regions:
    """The ``regions`` set: one vector per box of ``grid``, each crop padded to a square with the
    image's border colour, then preprocessed like a whole image (METHODS.md §2a)."""

    grid: RegionGrid = field(default_factory=RegionGrid)
    name = REGIONS_SET

    def prepare(self, image: Image.Image, preprocess) -> np.ndarray:
        """(R, 3, H, W) pixels, one per region of the grid, in the grid's order."""
        return np.stack([preprocess(crop) for crop in region_crops(image, self.grid)])

    def params(self) -> dict:
        return {"grid": self.grid.spec}


def stages_for(regions: RegionGrid | None) -> tuple:
    """The stages of a run: the whole image always, region crops when a grid is given."""
    return (WholeImage(),) if regions is None else (WholeImage(), Regions(regions))
