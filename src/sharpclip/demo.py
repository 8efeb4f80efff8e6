"""``sharpclip demo``: an offline tour on the bundled model (generate, index in memory, search;
then one binding query, plain vs part re-ranked, through a real collection on disk)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from sharpclip.concepts import load_vocabulary
from sharpclip.data import shapes
from sharpclip.data.regions import RegionGrid
from sharpclip.eval.retrieval import run_retrieval
from sharpclip.methods.conditional import gallery_mean, project, projection_matrix
from sharpclip.models import load_model

TEXT_QUERIES = ("a red circle", "a blue striped square", "a yellow star on a black background")


def _describe(spec: shapes.SceneSpec) -> str:
    o = spec.objects[0]
    return f"{o.size} {o.colour} {o.fill} {o.shape} on {spec.background}"


def _conditional_query(model, vectors: np.ndarray, gallery: list) -> None:
    """The same image query, compared only in colour (METHODS.md §1, fast path)."""
    prompts, values = load_vocabulary().labelled_prompts_for("colour")
    W = projection_matrix(model.encode_texts(prompts), gallery_mean(vectors), prompt_values=values)
    projected = project(vectors, W)
    scores = projected @ projected[0]
    print(f"\nimage query #0 under --condition colour ({len(prompts)} prompts, k={W.shape[1]}):")
    for i in np.argsort(-scores)[1:6]:
        print(f"  {scores[i]:.3f}  #{i:<4d} {_describe(gallery[i].spec)}")


def _binding_query(model, seed: int, scenes: int = 40) -> None:
    """Two-object scenes and their colour-swapped twins, indexed with regions into a temporary
    collection; one scene's caption searched plain and with ``--rerank parts`` (METHODS.md §2a)."""
    from sharpclip.collection import Collection
    from sharpclip.ingest import IndexConfig

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="sharpclip-demo-") as tmp:
        folder = Path(tmp) / "pairs"
        folder.mkdir()
        first = None
        for i in range(scenes):
            spec = shapes.random_spec(rng, "pair")
            while spec.objects[0].colour == spec.objects[1].colour:
                spec = shapes.random_spec(rng, "pair")
            render_seed = int(rng.integers(2**32))
            for tag, variant in (("scene", spec), ("twin", shapes.binding_twin(spec))):
                image = shapes.render(variant, model.preprocess.crop_hw[0],
                                      np.random.default_rng(render_seed), "varied")
                image.save(folder / f"{i:02d}-{tag}.png")
            first = first or spec
        text = shapes.captions(first, rng, n=1)[0]
        config = IndexConfig(workers=0, progress=False, regions=RegionGrid())
        with Collection.create(Path(tmp) / "pairs.sc", model) as coll:
            coll.add([folder], config=config)
            print(f"\nbinding query over {2 * scenes} two-object scenes on disk (each with its "
                  f"colour-swapped twin), indexed with --regions: {text!r}")
            for label, options in (("plain", {}), ("--rerank parts", {"rerank": "parts"})):
                hits = coll.search(text=text, k=len(list(folder.iterdir())), **options).hits
                names = [Path(h.path).name for h in hits]
                print(f"  {label:15s} true scene at rank {names.index('00-scene.png') + 1}, "
                      f"its twin at rank {names.index('00-twin.png') + 1}; top 3: "
                      + ", ".join(names[:3]))


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
    _binding_query(model, seed)
    result = run_retrieval(model, seed=seed, size=gallery_size)
    print("\nretrieval metrics (plain, test split):")
    for group, metrics in result["methods"]["plain"].items():
        print("  " + group + ": " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
