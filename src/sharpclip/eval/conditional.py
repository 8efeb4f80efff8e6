"""The ``conditional`` evaluation task (CONTRACT.md): image-to-image search under a condition.

Protocol (METHODS.md section 1, the paper's): Shapes scenes of 1-4 identical objects in which
shape, colour, size, texture and count vary independently (held-out test split); a seeded 1:9
query/database split; for a query and a condition, the relevant database items are those with the
same value of that condition; mAP per condition. Methods: ``plain`` (cosine of the raw image
embeddings: one ranking for every condition), ``clay`` (conditional similarity with the
vocabulary's prompts) and ``clay_nolog`` (the same without the log map). The result also holds a
sweep over k and ``center`` (``sweep``), the evidence for the defaults of
:class:`~sharpclip.methods.conditional.ConditionalConfig`.

The array stage (:func:`evaluate_embeddings`) is separate from generation and encoding
(:func:`run_conditional`), so it can be checked on synthetic embeddings.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from sharpclip.data import shapes
from sharpclip.eval import retrieval
from sharpclip.eval.metrics import mean_average_precision
from sharpclip.methods.conditional import (
    ConditionalConfig,
    gallery_mean,
    project,
    projection_matrix,
)

CONDITIONS = ("shape", "colour", "size", "texture", "count")
SWEEP_KS = (1, 2, 3, 4, 5, 6, 8, 12, 16, 32, 50)
SWEEP_VARIANCE = (0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
QUERY_FRACTION = 0.1


def _single_threaded_blas():
    """One BLAS thread for the array stage: its SVDs and products are small, and a multi-threaded
    OpenBLAS beside torch's OpenMP pool on a busy machine made each 120 x 128 SVD take ~0.7 s
    instead of ~2 ms. Uses threadpoolctl when installed (it comes with scikit-learn)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(1, user_api="blas")


def scene_labels(samples: Sequence[shapes.ShapesSample]) -> dict[str, np.ndarray]:
    """The value of every condition for every scene (count as the strings "1".."4")."""
    objects = [s.spec.objects[0] for s in samples]
    return {
        "shape": np.array([o.shape for o in objects]),
        "colour": np.array([o.colour for o in objects]),
        "size": np.array([o.size for o in objects]),
        "texture": np.array([o.fill for o in objects]),
        "count": np.array([str(s.spec.count) for s in samples]),
    }


def query_split(n: int, seed: int,
                query_fraction: float = QUERY_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Seeded 1:9 split of ``n`` items: ``(query indices, database indices)``."""
    order = np.random.default_rng(seed).permutation(n)
    n_query = min(max(1, round(n * query_fraction)), n - 1)
    return np.sort(order[:n_query]), np.sort(order[n_query:])


def condition_map(scores: np.ndarray, query_labels: np.ndarray, db_labels: np.ndarray) -> float:
    """mAP where a database item is relevant when it shares the query's value.

    Queries whose value no database item has are left out (they have no defined AP).
    """
    relevant = query_labels[:, None] == db_labels[None, :]
    keep = relevant.any(axis=1)
    return mean_average_precision(scores[keep], relevant[keep])


def _clay_maps(query: np.ndarray, database: np.ndarray, labels_q: Mapping[str, np.ndarray],
               labels_db: Mapping[str, np.ndarray], prompts: Mapping[str, np.ndarray],
               config: ConditionalConfig) -> tuple[dict[str, float], dict[str, int]]:
    mu_v = gallery_mean(database)
    maps, ks = {}, {}
    for condition, prompt_embeddings in prompts.items():
        W = projection_matrix(prompt_embeddings, mu_v, config)
        scores = project(query, W) @ project(database, W).T
        maps[condition] = condition_map(scores, labels_q[condition], labels_db[condition])
        ks[condition] = int(W.shape[1])
    return maps, ks


def _summary(maps: dict[str, float]) -> dict:
    return {"map": maps, "map_mean": float(np.mean(list(maps.values())))}


def _sweep(query, database, labels_q, labels_db, prompts, config, ks, variances) -> dict:
    rows = []
    for center in (False, True):
        for k in ks:
            cfg = replace(config, k=int(k), center=center)
            maps, _ = _clay_maps(query, database, labels_q, labels_db, prompts, cfg)
            rows.append({"rule": "fixed", "k": int(k), "center": center, **_summary(maps)})
        for threshold in variances:
            cfg = replace(config, k=None, explained_variance=float(threshold), center=center)
            maps, used = _clay_maps(query, database, labels_q, labels_db, prompts, cfg)
            rows.append({"rule": "explained_variance", "threshold": float(threshold),
                         "center": center, "k_used": used, **_summary(maps)})
    best = max(rows, key=lambda row: row["map_mean"])
    return {"metric": "map_mean", "log_map": config.log_map, "rows": rows,
            "best": {key: best[key] for key in ("rule", "k", "threshold", "center", "map_mean")
                     if key in best}}


def evaluate_embeddings(
    images: np.ndarray, labels: Mapping[str, np.ndarray], prompts: Mapping[str, np.ndarray],
    seed: int = 0, config: ConditionalConfig | None = None,
    ks: Sequence[int] = SWEEP_KS, variances: Sequence[float] = SWEEP_VARIANCE,
) -> dict:
    """The array stage: methods, params, sweep and timing from embeddings and labels.

    ``images``: (N, d) unit image embeddings; ``labels``: condition -> (N,) values;
    ``prompts``: condition -> (n, d) unit prompt embeddings. Empty ``ks`` and ``variances``
    skip the sweep.
    """
    with _single_threaded_blas():
        return _evaluate(images, labels, prompts, seed, config or ConditionalConfig(), ks,
                         variances)


def _evaluate(images, labels, prompts, seed, config, ks, variances) -> dict:
    q_idx, db_idx = query_split(len(images), seed)
    query, database = images[q_idx], images[db_idx]
    labels_q = {c: np.asarray(v)[q_idx] for c, v in labels.items()}
    labels_db = {c: np.asarray(v)[db_idx] for c, v in labels.items()}
    timing, methods, params = {}, {}, {}

    start = time.perf_counter()
    plain_scores = query @ database.T
    methods["plain"] = _summary({c: condition_map(plain_scores, labels_q[c], labels_db[c])
                                 for c in prompts})
    timing["plain"] = time.perf_counter() - start
    params["plain"] = {}

    for name, cfg in (("clay", config), ("clay_nolog", replace(config, log_map=False))):
        start = time.perf_counter()
        maps, used = _clay_maps(query, database, labels_q, labels_db, prompts, cfg)
        timing[name] = time.perf_counter() - start
        methods[name] = _summary(maps)
        params[name] = {**asdict(cfg), "k_used": used,
                        "prompts": {c: len(p) for c, p in prompts.items()}}

    result = {"methods": methods, "params": params,
              "split": {"queries": len(q_idx), "database": len(db_idx)}}
    if len(ks) or len(variances):
        start = time.perf_counter()
        result["sweep"] = _sweep(query, database, labels_q, labels_db, prompts, config, ks,
                                 variances)
        timing["sweep"] = time.perf_counter() - start
    result["timing_s"] = timing
    return result


def run_conditional(
    model, seed: int = 0, size: int = 5000, ks: Sequence[int] = SWEEP_KS,
    variances: Sequence[float] = SWEEP_VARIANCE, config: ConditionalConfig | None = None,
    conditions: Sequence[str] = CONDITIONS, vocabulary=None,
) -> dict:
    """Generate the scenes, encode them and the prompts, evaluate; returns results.json."""
    from sharpclip.concepts import load_vocabulary, prompt_set_hash

    vocabulary = vocabulary or load_vocabulary()
    start = time.perf_counter()
    data = shapes.ShapesConfig(kind="single", size=size, seed=seed, split="test",
                               image_size=model.preprocess.crop_hw[0], max_count=4)
    samples = list(shapes.generate(data))
    images = model.encode_images([s.image for s in samples])
    encode_images = time.perf_counter() - start

    start = time.perf_counter()
    prompt_sets = {c: vocabulary.prompts(c) for c in conditions}
    prompts = {c: model.encode_texts(p) for c, p in prompt_sets.items()}
    encode_prompts = time.perf_counter() - start

    all_labels = scene_labels(samples)
    labels = {c: all_labels[vocabulary.resolve(c)] for c in conditions}
    body = evaluate_embeddings(images, labels, prompts, seed, config, ks, variances)
    timing = {"encode_images": encode_images, "encode_prompts": encode_prompts,
              **body.pop("timing_s")}
    body["params"]["data"] = {"kind": data.kind, "max_count": data.max_count,
                              "split": data.split, "image_size": data.image_size,
                              **body.pop("split"),
                              "prompt_sets": {c: prompt_set_hash(p)[:16]
                                              for c, p in prompt_sets.items()}}
    return {"task": "conditional", "model": model.fingerprint, "seed": seed, "size": size,
            "methods": body["methods"], "params": body["params"],
            **({"sweep": body["sweep"]} if "sweep" in body else {}),
            "timing_s": {k: round(v, 3) for k, v in timing.items()}}


def _cell(row: dict) -> str:
    if row["rule"] == "fixed":
        return f"k={row['k']}"
    return f"ev>={row['threshold']:g}"


def to_markdown(result: dict) -> str:
    """Markdown: the methods' mAP per condition, then the k/center sweep (if present)."""
    conditions = list(next(iter(result["methods"].values()))["map"])
    header = "| method | " + " | ".join(conditions) + " | map_mean |"
    rule = "|---" * (len(conditions) + 2) + "|"
    lines = [(f"task `{result['task']}`, model `{result['model']}`, seed {result['seed']}, "
              f"size {result['size']}"), "", header, rule]
    for method, metrics in result["methods"].items():
        cells = " | ".join(f"{metrics['map'][c]:.3f}" for c in conditions)
        lines.append(f"| {method} | {cells} | {metrics['map_mean']:.3f} |")
    clay = result.get("params", {}).get("clay")
    if clay:
        k = clay["k"] if clay["k"] is not None else \
            f"explained variance >= {clay['explained_variance']}"
        used = ", ".join(f"{c} {v}" for c, v in clay["k_used"].items())
        lines += ["", f"clay: k = {k} (used: {used}), center = {str(clay['center']).lower()}"]
    sweep = result.get("sweep")
    if sweep:
        lines += ["", f"sweep (clay, log map {str(sweep['log_map']).lower()}; mAP):", "",
                  "| rule | center | " + " | ".join(conditions) + " | map_mean |",
                  "|---" * (len(conditions) + 3) + "|"]
        for row in sweep["rows"]:
            cells = " | ".join(f"{row['map'][c]:.3f}" for c in conditions)
            lines.append(f"| {_cell(row)} | {str(row['center']).lower()} | {cells} | "
                         f"{row['map_mean']:.3f} |")
    return "\n".join(lines) + "\n"


def write_results(result: dict, out: Path) -> None:
    """Write ``results.json`` and ``results.md`` (this task's table) into ``out``."""
    retrieval.write_results(result, out, to_markdown(result))
