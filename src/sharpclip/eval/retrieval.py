"""The ``retrieval`` evaluation task (CONTRACT.md): caption <-> image retrieval on Shapes.

Single-object scenes (test split) and two-object scenes are evaluated separately. A hit for a
caption is any image whose labels match every attribute the caption names; zero-shot accuracy is
reported per attribute with plain prompts ("a photo of a pentagon").
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from sharpclip.data import shapes
from sharpclip.eval.metrics import recall_at_k

KS = (1, 5, 10)
ZEROSHOT_PROMPTS = {
    "shape": ("a photo of a {}", shapes.SHAPES),
    "colour": ("a photo of a {} shape", tuple(shapes.COLOURS)),
    "fill": ("a photo of a {} shape", shapes.FILLS),
    "size": ("a photo of a {} shape", shapes.SIZES),
    "background": ("a shape on a {} background", tuple(shapes.BACKGROUNDS)),
}


def named_attributes(caption: str, spec: shapes.SceneSpec) -> dict:
    """The attributes of ``spec`` that ``caption`` names (as produced by :func:`shapes.captions`)."""
    words = caption.split()
    objects = [
        (o.shape, o.colour, o.fill, o.size if any(s in words for s in shapes.SIZES) else None)
        for o in spec.objects
    ]
    return {
        "objects": objects,
        "relation": spec.relation,
        "background": spec.background if "background" in words else None,
        "position": spec.position if f"on the {spec.position}" in caption else None,
    }


_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _object_matches(named: tuple, obj: shapes.ShapeObject) -> bool:
    shape, colour, fill, size = named
    return (shape, colour, fill) == (obj.shape, obj.colour, obj.fill) and size in (None, obj.size)


def matches(named: dict, spec: shapes.SceneSpec) -> bool:
    """True when ``spec`` has every attribute in ``named`` (pairs: either reading of the relation)."""
    if named["background"] not in (None, spec.background):
        return False
    if named["position"] not in (None, spec.position) or len(named["objects"]) != len(spec.objects):
        return False
    if spec.relation is None:
        return spec.count == 1 and _object_matches(named["objects"][0], spec.objects[0])
    a, b = named["objects"]
    direct = named["relation"] == spec.relation and _object_matches(a, spec.objects[0]) \
        and _object_matches(b, spec.objects[1])
    swapped = _INVERSE[named["relation"]] == spec.relation and _object_matches(b, spec.objects[0]) \
        and _object_matches(a, spec.objects[1])
    return direct or swapped


def _scenes(kind: str, size: int, seed: int, image_size: int) -> list[shapes.ShapesSample]:
    config = shapes.ShapesConfig(kind=kind, size=size, seed=seed, split="test",
                                 image_size=image_size, max_count=1)
    return list(shapes.generate(config))


def _retrieval(model, samples: list[shapes.ShapesSample]) -> dict[str, float]:
    texts = [s.captions[0] for s in samples]
    named = [named_attributes(t, s.spec) for t, s in zip(texts, samples)]
    relevant = np.array([[matches(n, s.spec) for s in samples] for n in named])
    sim = model.encode_texts(texts) @ model.encode_images([s.image for s in samples]).T
    out = {}
    for k, v in recall_at_k(sim, relevant, KS).items():
        out[f"image_retrieval_recall@{k}"] = v
    for k, v in recall_at_k(sim.T, relevant.T, KS).items():
        out[f"text_retrieval_recall@{k}"] = v
    return out


def zeroshot_accuracy(model, samples: list[shapes.ShapesSample]) -> dict[str, float]:
    """Per-attribute zero-shot classification accuracy on single-object scenes."""
    images = model.encode_images([s.image for s in samples])
    out = {}
    for attribute, (template, values) in ZEROSHOT_PROMPTS.items():
        classes = model.encode_texts([template.format(v) for v in values])
        predicted = (images @ classes.T).argmax(axis=1)
        truth = [getattr(s.spec.objects[0], attribute, None) or getattr(s.spec, attribute)
                 for s in samples]
        out[attribute] = float(np.mean([values[p] == t for p, t in zip(predicted, truth)]))
    return out


def run_retrieval(model, seed: int = 0, size: int = 1000) -> dict:
    """Run the task; returns the results.json document."""
    image_size = model.preprocess.crop_hw[0]
    start = time.perf_counter()
    single = _scenes("single", size, seed, image_size)
    pair = _scenes("pair", max(100, size // 2), seed, image_size)
    plain = {"single": _retrieval(model, single), "pair": _retrieval(model, pair),
             "zeroshot_accuracy": zeroshot_accuracy(model, single)}
    return {"task": "retrieval", "model": model.fingerprint, "seed": seed, "size": size,
            "methods": {"plain": plain}, "params": {"plain": {}},
            "timing_s": {"plain": round(time.perf_counter() - start, 2)}}


def to_markdown(result: dict) -> str:
    """A Markdown table of every metric of every method."""
    lines = [(f"task `{result['task']}`, model `{result['model']}`, seed {result['seed']}, "
             f"size {result['size']}"), "", "| method | metric | value |", "|---|---|---|"]
    for method, groups in result["methods"].items():
        for group, metrics in groups.items():
            for name, value in metrics.items():
                lines.append(f"| {method} | {group}.{name} | {value:.3f} |")
    return "\n".join(lines) + "\n"


def write_results(result: dict, out: Path, markdown: str | None = None) -> None:
    """Write results.json and results.md (``markdown``, default this task's table) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(to_markdown(result) if markdown is None else markdown)
