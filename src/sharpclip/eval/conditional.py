"""The ``conditional`` evaluation task (CONTRACT.md): image-to-image search under a condition.

Protocol (METHODS.md section 1, the paper's): Shapes scenes of 1-4 identical objects in which
shape, colour, size, texture and count vary independently (held-out test split); a seeded 1:9
query/database split; for a query and a condition, the relevant database items are those with the
same value of that condition, and for a pair of conditions (``colour+shape``) those with the same
value of every named condition; mAP per condition and per pair. Methods: ``plain`` (cosine of the
raw image embeddings: one ranking for every condition), ``clay`` (the defaults of
:class:`~sharpclip.methods.conditional.ConditionalConfig`, pairs by the mean of the per-condition
similarities), ``clay_pooled`` (pairs by pooled prompts and one SVD, as the paper; single
conditions are the same as ``clay``) and the ablations ``clay_nolog`` (no log map),
``clay_asym`` (only the query projected, as GeneCIS), ``clay_norot`` (no rotation H) and
``clay_k50`` (the paper's k = 50, with every prompt). The result also holds a sweep over the k
rule, the number of prompts per value, the prompt weighting and ``center`` on single conditions
(``sweep``), the evidence for the defaults.

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
    WEIGHTINGS,
    ConditionalConfig,
    gallery_mean,
    project,
    projection_matrix,
)

CONDITIONS = ("shape", "colour", "size", "texture", "count")
PAIRS = ("colour+shape", "colour+texture", "shape+count", "size+colour")
SWEEP_KS = (1, 2, 3, 4, 5, 6, 8, 16, 50)
SWEEP_CAPS = (4, 8, 16, None)  # prompts per value
SWEEP_VARIANCE = (0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
QUERY_FRACTION = 0.1
# method -> (ConditionalConfig overrides of the defaults, asymmetric)
METHODS = {
    "clay": ({}, False),
    "clay_pooled": ({"combine": "pooled"}, False),
    "clay_nolog": ({"log_map": False}, False),
    "clay_asym": ({}, True),
    "clay_norot": ({"rotation": False}, False),
    "clay_k50": ({"k": 50, "prompts_per_value": None}, False),  # the paper's k, every prompt
}


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


def joint_labels(labels: Mapping[str, np.ndarray], spec: str) -> np.ndarray:
    """Integer labels for ``"a+b"``: two items share one exactly when they have the same value
    of every named condition."""
    columns = np.stack([np.asarray(labels[c]).astype(str) for c in spec.split("+")], axis=1)
    return np.unique(columns, axis=0, return_inverse=True)[1].reshape(-1)


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


def _clay_maps(query, database, labels_q, labels_db, prompts, values, config,
               asymmetric=False, pairs=()) -> tuple[dict[str, float], dict[str, int]]:
    """mAP per condition and per pair, and the k used, for one configuration."""
    mu_v = gallery_mean(database)
    maps, ks, scores = {}, {}, {}

    def similarity(prompt_embeddings, prompt_values):
        W = projection_matrix(prompt_embeddings, mu_v, config, prompt_values)
        return project(query, W) @ project(database, W, normalise=not asymmetric).T, W.shape[1]

    for condition, prompt_embeddings in prompts.items():
        scores[condition], ks[condition] = similarity(prompt_embeddings, values.get(condition))
        maps[condition] = condition_map(scores[condition], labels_q[condition],
                                        labels_db[condition])
    for spec in pairs:
        names = spec.split("+")
        if config.combine == "mean":
            pair_scores = np.mean([scores[c] for c in names], axis=0)
        else:
            pooled_values = [f"{c}={v}" if v is not None else None for c in names
                             for v in (values.get(c) or [None] * len(prompts[c]))]
            pair_scores, ks[spec] = similarity(np.concatenate([prompts[c] for c in names]),
                                               pooled_values)
        maps[spec] = condition_map(pair_scores, labels_q[spec], labels_db[spec])
    return maps, ks


def _summary(maps: dict[str, float]) -> dict:
    single = [v for c, v in maps.items() if "+" not in c]
    pairs = [v for c, v in maps.items() if "+" in c]
    return {"map": maps, "map_mean": float(np.mean(single)),
            **({"map_mean_pairs": float(np.mean(pairs))} if pairs else {})}


def _sweep(query, database, labels_q, labels_db, prompts, values, config, ks, variances,
           caps) -> dict:
    rows = []
    # prompts per value, then every weighting with all prompts, then centring with the defaults
    settings = [*({"prompts_per_value": cap} for cap in caps),
                *({"prompts_per_value": None, "weighting": w} for w in WEIGHTINGS
                  if w != config.weighting), {"center": True}]
    for setting in settings:
        base = replace(config, **setting)
        described = {"prompts_per_value": base.prompts_per_value, "weighting": base.weighting,
                     "center": base.center}
        for k in ks:
            maps, _ = _clay_maps(query, database, labels_q, labels_db, prompts, values,
                                 replace(base, k=int(k)))
            rows.append({"rule": "fixed", "k": int(k), **described, **_summary(maps)})
        for threshold in variances:
            cfg = replace(base, k=None, explained_variance=float(threshold))
            maps, used = _clay_maps(query, database, labels_q, labels_db, prompts, values,
                                    cfg)
            rows.append({"rule": "explained_variance", "threshold": float(threshold),
                         **described, "k_used": used, **_summary(maps)})
    best = max(rows, key=lambda row: row["map_mean"])
    return {"metric": "map_mean", "log_map": config.log_map, "rows": rows,
            "best": {key: best[key] for key in ("rule", "k", "threshold", "prompts_per_value",
                                                "weighting", "center", "map_mean")
                     if key in best}}


def evaluate_embeddings(
    images: np.ndarray, labels: Mapping[str, np.ndarray], prompts: Mapping[str, np.ndarray],
    seed: int = 0, config: ConditionalConfig | None = None,
    ks: Sequence[int] = SWEEP_KS, variances: Sequence[float] = SWEEP_VARIANCE,
    prompt_values: Mapping[str, Sequence] | None = None, pairs: Sequence[str] | None = None,
    methods: Sequence[str] = tuple(METHODS), caps: Sequence[int | None] = SWEEP_CAPS,
) -> dict:
    """The array stage: methods, params, sweep and timing from embeddings and labels.

    ``images``: (N, d) unit image embeddings; ``labels``: condition -> (N,) values;
    ``prompts``: condition -> (n, d) unit prompt embeddings; ``prompt_values``: condition ->
    each prompt's value (enables the prompt weighting); ``pairs``: ``"a+b"`` specs of
    conditions in ``prompts`` (default: those of :data:`PAIRS` it can measure); ``methods``: which of :data:`METHODS` run beside ``plain``.
    ``caps``: the prompts-per-value settings of the sweep. Empty ``ks`` and ``variances`` skip
    the sweep.
    """
    if pairs is None:
        pairs = [spec for spec in PAIRS if set(spec.split("+")) <= set(prompts)]
    unknown = [spec for spec in pairs if not set(spec.split("+")) <= set(prompts)]
    if unknown:
        raise ValueError(f"pair {unknown[0]!r} names a condition without prompts")
    with _single_threaded_blas():
        return _evaluate(images, labels, prompts, dict(prompt_values or {}), seed,
                         config or ConditionalConfig(), ks, variances, tuple(pairs), methods,
                         tuple(caps))


def _evaluate(images, labels, prompts, values, seed, config, ks, variances, pairs,
              methods, caps) -> dict:
    q_idx, db_idx = query_split(len(images), seed)
    query, database = images[q_idx], images[db_idx]
    labels = {**{c: np.asarray(labels[c]) for c in prompts},
              **{spec: joint_labels(labels, spec) for spec in pairs}}
    labels_q = {c: v[q_idx] for c, v in labels.items()}
    labels_db = {c: v[db_idx] for c, v in labels.items()}
    timing, results, params = {}, {}, {}

    start = time.perf_counter()
    plain_scores = query @ database.T
    results["plain"] = _summary({c: condition_map(plain_scores, labels_q[c], labels_db[c])
                                 for c in labels})
    timing["plain"] = time.perf_counter() - start
    params["plain"] = {}

    for name in methods:
        overrides, asymmetric = METHODS[name]
        cfg = replace(config, **overrides)
        start = time.perf_counter()
        maps, used = _clay_maps(query, database, labels_q, labels_db, prompts, values, cfg,
                                asymmetric, pairs)
        timing[name] = time.perf_counter() - start
        results[name] = _summary(maps)
        params[name] = {**asdict(cfg), "asymmetric": asymmetric, "k_used": used,
                        "prompts": {c: len(p) for c, p in prompts.items()}}

    result = {"methods": results, "params": params,
              "split": {"queries": len(q_idx), "database": len(db_idx)}}
    if len(ks) or len(variances):
        start = time.perf_counter()
        result["sweep"] = _sweep(query, database, labels_q, labels_db, prompts, values, config,
                                 ks, variances, caps)
        timing["sweep"] = time.perf_counter() - start
    result["timing_s"] = timing
    return result


def run_conditional(
    model, seed: int = 0, size: int = 5000, ks: Sequence[int] = SWEEP_KS,
    variances: Sequence[float] = SWEEP_VARIANCE, config: ConditionalConfig | None = None,
    conditions: Sequence[str] = CONDITIONS, vocabulary=None, pairs: Sequence[str] | None = None,
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
    labelled = {c: vocabulary.concept(c).labelled_prompts() for c in conditions}
    prompt_sets = {c: [p for p, _ in pv] for c, pv in labelled.items()}
    prompts = {c: model.encode_texts(p) for c, p in prompt_sets.items()}
    encode_prompts = time.perf_counter() - start

    all_labels = scene_labels(samples)
    labels = {c: all_labels[vocabulary.resolve(c)] for c in conditions}
    body = evaluate_embeddings(images, labels, prompts, seed, config, ks, variances,
                               {c: [v for _, v in pv] for c, pv in labelled.items()}, pairs)
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


def _table(result: dict, columns: list[str], mean_key: str) -> list[str]:
    lines = ["| method | " + " | ".join(columns) + f" | {mean_key} |",
             "|---" * (len(columns) + 2) + "|"]
    for method, metrics in result["methods"].items():
        cells = " | ".join(f"{metrics['map'][c]:.3f}" for c in columns)
        lines.append(f"| {method} | {cells} | {metrics[mean_key]:.3f} |")
    return lines


def to_markdown(result: dict) -> str:
    """Markdown: the methods' mAP per condition, per pair, then the sweep (if present)."""
    keys = list(next(iter(result["methods"].values()))["map"])
    conditions = [c for c in keys if "+" not in c]
    pairs = [c for c in keys if "+" in c]
    lines = [(f"task `{result['task']}`, model `{result['model']}`, seed {result['seed']}, "
              f"size {result['size']}"
              + (f", data `{result['data']}`" if "data" in result else "")), "",
             *_table(result, conditions, "map_mean")]
    if pairs:
        lines += ["", *_table(result, pairs, "map_mean_pairs")]
    clay = result.get("params", {}).get("clay")
    if clay:
        k = clay["k"] if clay["k"] is not None else \
            f"explained variance >= {clay['explained_variance']}"
        used = ", ".join(f"{c} {v}" for c, v in clay["k_used"].items())
        cap = clay["prompts_per_value"] or "all"
        lines += ["", (f"clay: k = {k} (used: {used}), prompts per value = {cap}, weighting = "
                       f"{clay['weighting']}, center = {str(clay['center']).lower()}"
                       + (f", pairs = {clay['combine']}" if pairs else ""))]
    skipped = result.get("params", {}).get("data", {}).get("skipped")
    if skipped:
        lines += ["", f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}"]
    sweep = result.get("sweep")
    if sweep:
        lines += ["", f"sweep (clay, log map {str(sweep['log_map']).lower()}; mAP):", "",
                  "| rule | prompts per value | weighting | center | " + " | ".join(conditions)
                  + " | map_mean |", "|---" * (len(conditions) + 5) + "|"]
        for row in sweep["rows"]:
            cells = " | ".join(f"{row['map'][c]:.3f}" for c in conditions)
            cap = "all" if row["prompts_per_value"] is None else row["prompts_per_value"]
            lines.append(f"| {_cell(row)} | {cap} | {row['weighting']} | "
                         f"{str(row['center']).lower()} | {cells} | {row['map_mean']:.3f} |")
    return "\n".join(lines) + "\n"


def write_results(result: dict, out: Path) -> None:
    """Write ``results.json`` and ``results.md`` (this task's table) into ``out``."""
    retrieval.write_results(result, out, to_markdown(result))
