"""Encode stages of ingest: what one decoded image becomes in each vector set.

A stage names its vector set, prepares model-ready pixel arrays from a decoded image (in a decode
worker, so every file is decoded once whatever the stages), and records how its vectors are made
(the set's parameters, checked when a collection is indexed again). All stages embed through the
collection's image tower, batched together.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from sharpclip.data.regions import RegionGrid, region_crops
from sharpclip.methods.calibration import CVEConfig, blend, cve_bias
from sharpclip.store.collection import CALIBRATED_SET, IMAGE_SET, REGIONS_SET


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


@dataclass(frozen=True)
class Calibrated:
    """The ``calibrated`` set: CVE's ``v_hat`` per file (METHODS.md §3a), from the whole image's
    pixels (shared with the ``image`` stage: decoded and sent once)."""

    config: CVEConfig = field(default_factory=CVEConfig)
    name = CALIBRATED_SET
    same_pixels_as = IMAGE_SET

    def prepare(self, image: Image.Image, preprocess) -> np.ndarray:
        return preprocess(image)[None]

    def params(self) -> dict:
        return {"method": "cve", **asdict(self.config)}

    def encode(self, model, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(plain embeddings, v_hat) of preprocessed pixels (N, 3, H, W): one pass up to the
        pooling step, which runs twice (unbiased: exactly the plain embedding; biased)."""
        import torch

        from sharpclip.models.calibrated import pooling_inputs, rerun_pooling

        plain, calibrated = [], []
        for at in range(0, len(pixels), max(model.batch_size, 1)):
            chunk = torch.from_numpy(np.ascontiguousarray(pixels[at:at + model.batch_size]))
            inputs = pooling_inputs(model, chunk.to(model.device))
            bias = cve_bias(inputs.attention, inputs.grid, self.config, inputs.leading_keys)
            plain.append(rerun_pooling(model, inputs, np.zeros_like(bias)))
            calibrated.append(rerun_pooling(model, inputs, bias))
        plain_v = np.concatenate(plain)
        return plain_v, blend(plain_v, np.concatenate(calibrated), self.config.rho)


def stages_for(regions: RegionGrid | None, calibrate: CVEConfig | None = None) -> tuple:
    """The stages of a run: the whole image always, region crops when a grid is given, CVE's
    calibrated embedding when a config is given."""
    stages = [WholeImage()]
    if regions is not None:
        stages.append(Regions(regions))
    if calibrate is not None:
        stages.append(Calibrated(calibrate))
    return tuple(stages)


def embed(model, stages: dict, arrays: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Vectors per set for the batch's pixel arrays (``arrays[set]``: one array per item, in the
    order of the set's rows). Plain sets go through the image tower together; the ``calibrated``
    set runs CVE, and where its pixels are an ``image`` item's own (a new file), that item's image
    vector comes from the same pass."""
    out: dict[str, np.ndarray] = {}
    calibrated = arrays.get(CALIBRATED_SET) or []
    if calibrated:
        stage = stages[CALIBRATED_SET]
        images = arrays.get(IMAGE_SET) or []
        position = {id(a): i for i, a in enumerate(images)}
        shared = [a for a in calibrated if id(a) in position]
        own = [a for a in calibrated if id(a) not in position]
        hat_of: dict[int, np.ndarray] = {}
        if shared:
            plain, hat = stage.encode(model, np.concatenate(images))
            out[IMAGE_SET] = plain
            hat_of.update((id(a), hat[i]) for i, a in enumerate(images))
        if own:
            hat_of.update(zip(map(id, own), stage.encode(model, np.concatenate(own))[1]))
        out[CALIBRATED_SET] = np.stack([hat_of[id(a)] for a in calibrated])
    plain_sets = [n for n, parts in arrays.items() if parts and n not in out and n != CALIBRATED_SET]
    if plain_sets:
        stacked = [np.concatenate(arrays[name]) for name in plain_sets]
        pixels = np.concatenate(stacked) if len(stacked) > 1 else stacked[0]
        step = max(model.batch_size, 1)
        vectors = np.concatenate([model.encode_pixels(pixels[i:i + step])
                                  for i in range(0, len(pixels), step)])
        out.update(zip(plain_sets, np.split(vectors, np.cumsum([len(a) for a in stacked])[:-1])))
    return out
