"""The ``finetune`` evaluation task (CONTRACT.md; METHODS.md §4): fine-tune the model with each
recipe on Shapes classes and evaluate on classes never trained on.

Data (from the seed): a class is an object's colour, fill and shape ("red striped pentagon",
8 x 8 x 4 = 256 classes); its images vary in size, position, background and rendering jitter.
About a quarter of the classes (by a seeded hash) are test classes; the rest train. Metrics on
the test classes (:mod:`sharpclip.eval.folder`): i2i mAP (query excluded), k-NN accuracy (k = 21),
zero-shot accuracy over the test class names, and text -> image R@5 with one caption per test
image that names its class *and* its size and background ("a large red striped pentagon on a
black background"; a hit: any image with every attribute the caption names). Those are the
attributes the class labels leave free, which ArcFace teaches the image tower to ignore: the
captions measure what image-to-image training costs text search.

Methods: ``base`` and the recipes ``gpr``, ``2sft``, ``mcip``, ``mcip+rea`` (METHODS.md §4). ``2sft``
is run as ``rea`` on the ``gpr`` model and ``mcip+rea`` as ``rea`` on the ``mcip`` model: the loop
draws its batches per objective, so this is exactly what the recipes train (tested).

Run: sharpclip eval finetune [--seed 1] [--out DIR]
"""

from __future__ import annotations

import copy
import itertools
import time
import zlib
from dataclasses import asdict

import numpy as np

from sharpclip.data import shapes
from sharpclip.eval.folder import model_metrics
from sharpclip.eval.retrieval import matches, named_attributes
from sharpclip.finetune.data import TrainingSet, shapes_class_name
from sharpclip.finetune.recipes import FinetuneConfig
from sharpclip.finetune.run import finetune, hold_side

METHODS = ("base", "gpr", "2sft", "mcip", "mcip+rea")
TEST_FRACTION = 0.25
VIEWS = 8  # renderings per training class
TEST_VIEWS = 24  # per test class: many images of a class, few with the size and background asked


def class_split(seed: int, test_fraction: float = TEST_FRACTION) -> tuple[list, list]:
    """The Shapes classes (ShapeObject templates, size aside) split into train and test by a
    seeded hash: disjoint, about ``test_fraction`` of them for testing."""
    train, test = [], []
    for shape, colour, fill in itertools.product(shapes.SHAPES, shapes.COLOURS, shapes.FILLS):
        obj = shapes.ShapeObject(shape, colour, "small", fill)
        bucket = zlib.crc32(f"{seed}:{shapes_class_name(obj)}".encode()) % 10_000
        (test if bucket < test_fraction * 10_000 else train).append(obj)
    return train, test


def render_classes(objects: list, views: int, seed: int, image_size: int,
                   part: str) -> tuple[TrainingSet, list]:
    """``views`` renderings per class (random size, position, background) of ``image_size``
    pixels; the set and the scene specifications."""
    rng = np.random.default_rng([seed, {"train": 0, "test": 1}[part]])
    images, labels, pairs, specs = [], [], [], []
    for label, template in enumerate(objects):
        for _ in range(views):
            obj = shapes.ShapeObject(template.shape, template.colour,
                                     shapes.SIZES[rng.integers(len(shapes.SIZES))], template.fill)
            spec = shapes.SceneSpec(
                (obj,), count=1, position=shapes.POSITIONS[rng.integers(len(shapes.POSITIONS))],
                background=list(shapes.BACKGROUNDS)[rng.integers(len(shapes.BACKGROUNDS))])
            image = shapes.render(spec, image_size, rng)
            pairs.extend((len(images), c) for c in shapes.captions(spec, rng))
            images.append(image)
            labels.append(label)
            specs.append(spec)
    names = tuple(shapes_class_name(o) for o in objects)
    pool = tuple(dict.fromkeys(c for _, c in pairs))
    return TrainingSet(images, np.array(labels), names, pairs=pairs, pool=pool,
                       digest=f"shapes-finetune-{part}-seed{seed}-views{views}",
                       source=f"Shapes finetune task, {part} classes, seed {seed}"), specs


def query_caption(spec: shapes.SceneSpec, rng: np.random.Generator) -> str:
    """A caption naming the object's class, size and the background."""
    phrase = shapes.object_phrase(spec.objects[0], rng, with_size=True)
    return f"{phrase} on a {spec.background} background"


def shapes_queries(specs: list, seed: int) -> tuple[list[str], np.ndarray]:
    """Text -> image queries: one :func:`query_caption` per test image; relevant = every image
    that has the attributes the caption names."""
    rng = np.random.default_rng([seed, 2])
    texts = [query_caption(spec, rng) for spec in specs]
    relevant = np.array([[matches(named_attributes(t, specs[i]), s) for s in specs]
                         for i, t in enumerate(texts)])
    return texts, relevant


def run_finetune_eval(load, model_spec: str = "bundled", seed: int = 0,
                      config: FinetuneConfig | None = None, views: int = VIEWS,
                      test_views: int = TEST_VIEWS, methods: tuple[str, ...] = METHODS,
                      progress: bool = False) -> dict:
    """Run the task; ``load`` loads a model spec. Returns the results.json document."""
    config = config or FinetuneConfig(seed=seed)
    base = load(model_spec)
    image_size = max(base.preprocess.crop_hw)
    train_objects, test_objects = class_split(seed)
    training, _ = render_classes(train_objects, views, seed, hold_side(base), "train")
    test, specs = render_classes(test_objects, test_views, seed, image_size, "test")
    queries = shapes_queries(specs, seed)
    results, timing, provenance = {}, {}, {}
    trained: dict[str, object] = {"base": base}
    chains = {"gpr": ("base", "gpr"), "2sft": ("gpr", "rea"), "mcip": ("base", "mcip"),
              "mcip+rea": ("mcip", "rea")}
    for method in methods:
        start = time.perf_counter()
        if method != "base":
            parent, recipe = chains[method]
            if parent not in trained:
                raise ValueError(f"method {method} needs {parent} first in the method list")
            model = copy.deepcopy(trained[parent])
            provenance[method] = finetune(recipe, model, training, None, config,
                                          progress=progress)
            trained[method] = model
        results[method] = model_metrics(trained[method], test, queries=queries)
        timing[method] = round(time.perf_counter() - start, 1)
    return {"task": "finetune", "model": base.fingerprint, "seed": seed, "size": len(test.images),
            "methods": results,
            "data": {"train_classes": len(train_objects), "test_classes": len(test_objects),
                     "train_images": len(training.images), "test_images": len(test.images),
                     "views": views, "test_views": test_views, "queries": len(queries[0])},
            "params": {"finetune": asdict(config)},
            "stages": {m: p["stages"] for m, p in provenance.items()},
            "timing_s": timing}


def to_markdown(result: dict) -> str:
    """One row per method, one column per metric."""
    from sharpclip.eval.folder import METRICS

    data = result["data"]
    lines = [(f"task `finetune`, model `{result['model']}`, seed {result['seed']}: "
              f"{data['train_classes']} train classes ({data['train_images']} images), "
              f"{data['test_classes']} disjoint test classes ({data['test_images']} images)"), "",
             "| method | " + " | ".join(METRICS) + " | seconds |", "|---" * (len(METRICS) + 2) + "|"]
    for method, metrics in result["methods"].items():
        cells = " | ".join(f"{metrics[m]:.3f}" for m in METRICS)
        lines.append(f"| {method} | {cells} | {result['timing_s'][method]} |")
    return "\n".join(lines) + "\n"
