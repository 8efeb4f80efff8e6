"""Training data for fine-tuning: a folder with one subfolder per class, or a Shapes set.

- **Folder**: ``DATA/CLASS/*.jpg``; the class names are the subfolder names (``_`` and ``-`` read
  as spaces for zero-shot prompts). Unreadable images are skipped and counted; a class left
  without images is dropped and counted; fewer than two classes is an error.
- **Shapes set** (``sharpclip shapes --out DIR``, a ``labels.jsonl`` inside): single-object scenes,
  class = the object's colour, fill and shape ("red striped pentagon"); captions = the set's own.
- **Captions** (``--captions FILE``): one caption per line; a line ``IMAGE<TAB>CAPTION`` also
  pairs the caption with that image (a path relative to DATA). Every caption joins the pool that
  MCIP mines pseudo-captions from; paired ones are Re-A's image-caption pairs.

For training, images are held in memory resized so that their shorter side is ``hold_side``
pixels (the augmentation's 1.125 x the model's input side), which bounds memory whatever the
files' size; with ``hold_side=None`` (evaluation) only their paths are kept and each is decoded
again when encoded, so the checkpoint's processor sees the original file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sharpclip.data import shapes
from sharpclip.data.imagefiles import (
    ImageFileError,
    content_hash,
    find_images,
    load_rgb,
    path_key,
)


class TrainingDataError(ValueError):
    """The training data cannot be used; the message names the path and what to do."""


@dataclass
class TrainingSet:
    """Labelled images (held small), their classes and captions."""

    images: list  # PIL images held in memory, or paths decoded on demand (see image())
    labels: np.ndarray  # (N,) index into class_names
    class_names: tuple[str, ...]
    pairs: list[tuple[int, str]] = field(default_factory=list)  # (image index, caption)
    pool: tuple[str, ...] = ()  # distinct captions for pseudo-caption mining
    digest: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    source: str = ""
    files: dict[str, int] = field(default_factory=dict)  # path relative to the data -> image

    def image(self, index: int) -> Image.Image:
        """The ``index``-th image as RGB (decoded from its file if only the path is held)."""
        held = self.images[index]
        return held if isinstance(held, Image.Image) else load_rgb(held)

    def summary(self) -> str:
        """One line: how many images, classes, captions and skipped files."""
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        return (f"{len(self.images)} images in {len(self.class_names)} classes, "
                f"{len(self.pairs)} image-caption pairs, {len(self.pool)} pool captions{skipped}")


def hold(image: Image.Image, side: int | None, path: Path):
    """``image`` resized (bicubic) so that its shorter side is ``side`` (aspect ratio kept); with
    ``side`` None, ``path`` (the image is decoded again when needed)."""
    if side is None:
        return path
    scale = side / min(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.BICUBIC) if size != image.size else image.copy()


def class_prompt_name(folder: str) -> str:
    """A class folder's name as words ("golden_retriever" -> "golden retriever")."""
    return " ".join(folder.replace("_", " ").replace("-", " ").split())


def shapes_class_name(obj: shapes.ShapeObject) -> str:
    """The class name of a Shapes object: colour, fill and shape ("red striped pentagon")."""
    fill = {"outline": "outlined"}.get(obj.fill, obj.fill)
    return f"{obj.colour} {fill} {obj.shape}"


def _digest(parts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()[:16]


def _read_captions(file: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(relative image path, caption) pairs and bare pool captions of a captions file."""
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise TrainingDataError(f"{file}: cannot read the captions file ({error}); pass a UTF-8 "
                                "text file with one caption per line") from None
    paired, pool = [], []
    for line in lines:
        if "\t" in line:
            image, caption = line.split("\t", 1)
            if caption.strip():
                paired.append((image.strip(), caption.strip()))
        elif line.strip():
            pool.append(line.strip())
    if not paired and not pool:
        raise TrainingDataError(f"{file}: no captions in it; write one caption per line")
    return paired, pool


def load_training_set(data: str | Path, captions: str | Path | None = None,
                      hold_side: int | None = 72) -> TrainingSet:
    """Read a class-folder tree or a Shapes set (see the module docstring)."""
    data = Path(data).expanduser()
    if not data.is_dir():
        raise TrainingDataError(f"{data}: not a directory; pass a folder with one subfolder per "
                                "class, or a Shapes set (`sharpclip shapes --out DIR`)")
    if (data / "labels.jsonl").is_file():
        training = _load_shapes_set(data, hold_side)
    else:
        training = _load_class_folders(data, hold_side)
    if captions is not None:
        _add_captions(training, Path(captions).expanduser())
    return training


def _load_class_folders(data: Path, hold_side: int) -> TrainingSet:
    folders = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    root = path_key(data)
    images, labels, names, skipped, digest_parts = [], [], [], [], []
    relative_index: dict[str, int] = {}
    for folder in folders:
        files = find_images([folder])
        kept = 0
        for file in files:
            try:
                image = hold(load_rgb(file), hold_side, file)
                relative = os.path.relpath(file, root)
                digest_parts.append(f"{relative}:{content_hash(file)}")
            except (ImageFileError, OSError) as error:
                skipped.append((str(file), getattr(error, "reason", None) or "unreadable"))
                continue
            relative_index[relative] = len(images)
            images.append(image)
            labels.append(len(names))
            kept += 1
        if kept:
            names.append(class_prompt_name(folder.name))
        else:
            skipped.append((str(folder), "empty class (no readable images)"))
    if len(names) < 2:
        found = f"found {len(names)} class with images" if names else "found no class with images"
        raise TrainingDataError(f"{data}: {found}; fine-tuning needs at least two classes, "
                                "one subfolder of images per class")
    return TrainingSet(images, np.array(labels), tuple(names), skipped=skipped, source=str(data),
                       digest=_digest(digest_parts), files=relative_index)


def _load_shapes_set(data: Path, hold_side: int) -> TrainingSet:
    images, labels, pairs, skipped, digest_parts = [], [], [], [], []
    names: dict[str, int] = {}
    relative_index: dict[str, int] = {}
    for number, line in enumerate((data / "labels.jsonl").read_text().splitlines(), 1):
        try:
            record = json.loads(line)
            objects = record["objects"]
            if record.get("relation") is not None or len(objects) != 1:
                skipped.append((record.get("file", f"line {number}"),
                                "not a single-object scene (write the set with --kind single)"))
                continue
            obj = shapes.ShapeObject(**objects[0])
            file = data / record["file"]
            image = hold(load_rgb(file), hold_side, file)
        except (ValueError, KeyError, TypeError) as error:
            raise TrainingDataError(f"{data / 'labels.jsonl'} line {number}: not a Shapes label "
                                    f"({error}); write the set again with `sharpclip shapes`") from None
        except (ImageFileError, OSError) as error:
            skipped.append((str(data / record["file"]), getattr(error, "reason", None) or "unreadable"))
            continue
        digest_parts.append(f"{record['file']}:{content_hash(file)}")
        label = names.setdefault(shapes_class_name(obj), len(names))
        relative_index[record["file"]] = len(images)
        pairs.extend((len(images), caption) for caption in record.get("captions", []))
        images.append(image)
        labels.append(label)
    if len(names) < 2:
        raise TrainingDataError(f"{data}: the Shapes set holds {len(names)} class(es) of "
                                "single-object scenes; fine-tuning needs at least two")
    pool = tuple(dict.fromkeys(caption for _, caption in pairs))
    return TrainingSet(images, np.array(labels), tuple(names), pairs=pairs, pool=pool,
                       skipped=skipped, source=str(data), digest=_digest(digest_parts),
                       files=relative_index)


def _add_captions(training: TrainingSet, file: Path) -> None:
    paired, bare = _read_captions(file)
    for image, caption in paired:
        at = training.files.get(os.path.normpath(image))
        if at is None:
            training.skipped.append((f"{file}: {image}", "caption for an image not in the data"))
        else:
            training.pairs.append((at, caption))
    training.pool = tuple(dict.fromkeys([*training.pool, *(c for _, c in paired), *bare]))
    training.digest = _digest([training.digest, hashlib.sha256(file.read_bytes()).hexdigest()])
