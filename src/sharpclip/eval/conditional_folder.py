"""A self-check for a condition the user defines (``sharpclip eval conditional --concepts FILE
--data DIR``): the ``conditional`` protocol (eval/conditional.py) on the user's own folder, in
which each subfolder holds the images of one value of the condition, so a user can see whether
conditional search (``clay``) ranks same-value images above plain cosine before relying on it.

I/O lives here (listing and decoding the folder); the measurement is
:func:`~sharpclip.eval.conditional.evaluate_embeddings`. Unreadable images are skipped and
counted; a folder that cannot be measured is a one-line ``ValueError`` naming it and the fix.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sharpclip.data.imagefiles import ImageFileError, find_images, load_rgb
from sharpclip.eval.conditional import evaluate_embeddings, query_split


def read_value_folders(data: Path | str) -> tuple[dict[str, list], list[str]]:
    """``({value: [RGB images]}, skipped)`` from ``data``'s subfolders (one per value, images
    found recursively); ``skipped`` holds one message per unreadable image."""
    data = Path(data).expanduser()
    if not data.is_dir():
        raise ValueError(f"{data}: no such folder; give a folder with one subfolder of images "
                         "per value of the condition")
    folders = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{data}: no subfolders; put the images of each value of the condition "
                         "in a subfolder named after the value")
    if len(folders) == 1:
        raise ValueError(f"{data}: only one value folder ({folders[0].name}); a condition needs "
                         "at least two values, each in its own subfolder")
    images, skipped = {}, []
    for folder in folders:
        loaded = []
        for path in find_images(folder):
            try:
                loaded.append(load_rgb(path))
            except ImageFileError as error:
                skipped.append(str(error))
        if not loaded:
            raise ValueError(f"{folder}: no readable images in this value folder; add images "
                             "of this value or remove the folder")
        images[folder.name] = loaded
    return images, skipped


def user_condition(concepts: Path | str | None, condition: str | None = None) -> str:
    """The condition to check: ``condition``, or the only one the user file defines."""
    from sharpclip.concepts import read_vocabulary_file

    if condition is not None:
        return condition
    if concepts is None:
        raise ValueError("give the condition the folder is labelled by: --concepts FILE (your "
                         "own) or --condition NAME (a built-in one)")
    defined = sorted(read_vocabulary_file(concepts))
    if len(defined) != 1:
        raise ValueError(f"{concepts}: defines {len(defined)} conditions ({', '.join(defined)}); "
                         "name the one the folder is labelled by with --condition")
    return defined[0]


def run_folder_conditional(model, data: Path | str, concepts: Path | str | None = None,
                           condition: str | None = None, seed: int = 0) -> dict:
    """plain vs clay mAP on the user's folder for the user's condition; returns results.json."""
    from sharpclip.concepts import load_vocabulary, prompt_set_hash

    name = user_condition(concepts, condition)
    vocabulary = load_vocabulary(concepts)
    labelled = vocabulary.concept(name).labelled_prompts()
    name = vocabulary.resolve(name)
    start = time.perf_counter()
    by_value, skipped = read_value_folders(data)
    labels = np.array([value for value, images in by_value.items() for _ in images])
    q, db = query_split(len(labels), seed)
    if not (labels[q][:, None] == labels[db][None, :]).any():
        raise ValueError(f"{data}: no query image has another image of its value among the "
                         "others; add more images to each value folder")
    vectors = model.encode_images([image for images in by_value.values() for image in images])
    encode_images = time.perf_counter() - start
    prompts = model.encode_texts([p for p, _ in labelled])
    body = evaluate_embeddings(vectors, {name: labels}, {name: prompts}, seed, ks=(),
                               variances=(), prompt_values={name: [v for _, v in labelled]},
                               pairs=(), methods=("clay",))
    body["params"]["data"] = {**body.pop("split"),
                              "values": {v: len(i) for v, i in by_value.items()},
                              "skipped": skipped,
                              "prompt_set": prompt_set_hash([p for p, _ in labelled])[:16]}
    return {"task": "conditional", "model": model.fingerprint, "seed": seed,
            "size": len(labels), "data": str(data), "condition": name,
            "methods": body["methods"], "params": body["params"],
            "timing_s": {"encode_images": round(encode_images, 3),
                         **{k: round(v, 3) for k, v in body.pop("timing_s").items()}}}
