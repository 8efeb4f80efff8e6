"""``sharpclip demo``: an offline tour on the bundled model (generate, index in memory, search)."""

from __future__ import annotations

import numpy as np

from sharpclip.concepts import load_vocabulary
from sharpclip.data import shapes
from sharpclip.eval.retrieval import run_retrieval
from sharpclip.methods.conditional import gallery_mean, project, projection_matrix
from sharpclip.models import load_model

TEXT_QUERIES = ("a red circle", "a blue striped square", "a yellow star on a black background")


def _describe(spec: shapes.SceneSpec) -> str:
    o = spec.objects[0]
    return f"{o.size} {o.colour} {o.fill} {o.shape} on {spec.background}"


def _conditional_query(model, vectors: np.ndarray, gallery: list) -> None:
    """The same image query, compared only in colour (METHODS.md §1, fast path)."""
    prompts = load_vocabulary().prompts_for("colour")
    W = projection_matrix(model.encode_texts(prompts), gallery_mean(vectors))
    projected = project(vectors, W)
    scores = projected @ projected[0]
    print(f"\nimage query #0 under --condition colour ({len(prompts)} prompts, k={W.shape[1]}):")
    for i in np.argsort(-scores)[1:6]:
        print(f"  {scores[i]:.3f}  #{i:<4d} {_describe(gallery[i].spec)}")


def run_demo(model_spec: str = "bundled", gallery_size: int = 500, seed: int = 0) -> None:
    """Print text and image query hits over a small generated gallery, then retrieval metrics."""
    model = load_model(model_spec)
    print(f"model {model.name} ({model.model_type}, dim {model.dim}, fingerprint {model.fingerprint})")
    config = shapes.ShapesConfig(size=gallery_size, seed=seed, split="test", max_count=1,
                                 image_size=model.preprocess.crop_hw[0])
    gallery = list(shapes.generate(config))
    vectors = model.encode_images([s.image for s in gallery])
    print(f"indexed {len(gallery)} generated scenes in memory")
    for text in TEXT_QUERIES:
        scores = vectors @ model.encode_texts([text])[0]
        print(f"\ntext query: {text!r}")
        for i in np.argsort(-scores)[:5]:
            print(f"  {scores[i]:.3f}  #{i:<4d} {_describe(gallery[i].spec)}")
    query = gallery[0]
    scores = vectors @ vectors[0]
    print(f"\nimage query: #0 ({_describe(query.spec)})")
    for i in np.argsort(-scores)[1:6]:
        print(f"  {scores[i]:.3f}  #{i:<4d} {_describe(gallery[i].spec)}")
    _conditional_query(model, vectors, gallery)
    result = run_retrieval(model, seed=seed, size=gallery_size)
    print("\nretrieval metrics (plain, test split):")
    for group, metrics in result["methods"]["plain"].items():
        print("  " + group + ": " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
