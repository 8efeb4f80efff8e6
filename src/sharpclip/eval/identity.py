"""The ``identity`` evaluation task (CONTRACT.md): text-to-image search with several images per
identity, for calibration (METHODS.md §3, CalibCLIP).

Searched through the product's query pipeline (an :class:`~sharpclip.query.gallery.ArrayGallery`
in memory, :func:`~sharpclip.query.pipeline.run_query` per query), so the benchmark measures what
``sharpclip search`` does with and without ``--calibrate``. Two parts:

- **Identity** (a text-based person-retrieval style protocol). ``size`` images of the held-out
  test split, ``views`` renderings (fresh jitter: position, rotation, scale, shade, noise) per
  identity (``ShapesConfig(kind="identity")``: single-object scenes, counts 1-4). Gallery: every
  rendering. Queries: up to ``captions`` distinct captions per identity (the first caption of each
  of its first views). A hit is any image of the same identity; two identities the generator drew
  with the same specification are one identity (their images cannot be told apart by label).
- **Pair** (the ``retrieval`` task's two-object scenes, test split): one caption per scene;
  relevant = every scene with what the caption names
  (:func:`~sharpclip.eval.retrieval.matches`). Its metrics carry the prefix ``pair_``.

Methods, each a query plan over a gallery:

- ``plain``: cosine search over the plain image vectors;
- ``cve``: the same search over CVE's ``v_hat`` (the ``calibrated`` set, §3a), no DCC;
- ``dcc``: DCC's re-ranking (§3b) of the top K against the *plain* vectors (given to the
  pipeline as its ``calibrated`` set);
- ``cve+dcc``: what ``search --calibrate`` does: candidates from ``v_hat``, re-ranked by DCC.

Metrics: ``recall@{1,5,10}``, ``map``, ``minp`` (per query: #positives / rank of the last
positive). Rankings: the pipeline returns its top ``depth`` (the shortlist K); the gallery items it
did not return follow in the candidate set's cosine order (plain vectors for ``plain``/``dcc``,
``v_hat`` for ``cve``/``cve+dcc``), so mAP and mINP are defined over the whole gallery.

The DCC reference corpus (token generality) is the product's default: the concept vocabulary's
prompts (``reference_corpus()``), unless ``corpus`` is given.

The sweep (:func:`sweep`, seed 0 only) varies one setting at a time around a base; the tower
runs once per image (the pooling step's inputs are kept) and once per text.

Run: python -m sharpclip.eval.identity [--seed 1] [--size 2000] [--out DIR]
     python -m sharpclip.eval.identity --sweep [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from sharpclip.data import shapes
from sharpclip.eval import retrieval
from sharpclip.eval.metrics import (
    mean_average_precision,
    mean_inverse_negative_penalty,
    rank_order,
    ranked_scores,
    recall_at_k,
)
from sharpclip.methods.calibration import CVEConfig, DCCConfig, blend, cve_bias

DEFAULT_SIZE = 2000
"""Identity gallery images at the default size (500 identities of 4 views); the pair part adds
``size // 2`` scenes."""
VIEWS = 4
CAPTIONS = 2
METHODS = ("plain", "cve", "dcc", "cve+dcc")
KS = (1, 5, 10)
PARTS = ("identity", "pair")
DEFAULT_CVE = CVEConfig()
DEFAULT_DCC = DCCConfig()


@dataclass
class Part:
    """A gallery of rendered scenes and the text queries over it; ``relevant`` (Q, N)."""

    name: str
    images: list
    queries: list[str]
    relevant: np.ndarray
    labels: np.ndarray  # (N,) the gallery's identity (distinct specification) index


def identity_relevance(query_identity: Sequence[int], gallery_identity: Sequence[int]) -> np.ndarray:
    """(Q, N): query q is relevant to every gallery image of its identity."""
    return np.asarray(query_identity)[:, None] == np.asarray(gallery_identity)[None, :]


def identity_part(seed: int, size: int = DEFAULT_SIZE, image_size: int = 64, views: int = VIEWS,
                  captions: int = CAPTIONS) -> Part:
    """The identity part: ``size`` test-split renderings, ``views`` per identity (the last
    identity may have fewer), up to ``captions`` distinct queries per identity."""
    if views < 1 or captions < 1:
        raise ValueError(f"views and captions must be >= 1 (got {views}, {captions})")
    config = shapes.ShapesConfig(kind="identity", size=size, seed=seed, split="test",
                                 image_size=image_size, views=views)
    samples = list(shapes.generate(config))
    label_of: dict[str, int] = {}
    labels = np.array([label_of.setdefault(s.spec.key(), len(label_of)) for s in samples])
    queries, query_labels = [], []
    by_identity: dict[int, list[str]] = {}
    for sample, label in zip(samples, labels):
        texts = by_identity.setdefault(sample.identity, [])
        if len(texts) < captions and sample.captions[0] not in texts:
            texts.append(sample.captions[0])
            queries.append(sample.captions[0])
            query_labels.append(int(label))
    return Part("identity", [s.image for s in samples], queries,
                identity_relevance(query_labels, labels), labels)


def pair_part(seed: int, size: int, image_size: int = 64) -> Part:
    """The ``retrieval`` task's two-object scenes (test split), one caption per scene."""
    samples = retrieval._scenes("pair", size, seed, image_size)
    queries = [s.captions[0] for s in samples]
    named = [retrieval.named_attributes(t, s.spec) for t, s in zip(queries, samples)]
    relevant = np.array([[retrieval.matches(n, s.spec) for s in samples] for n in named])
    label_of: dict[str, int] = {}
    labels = np.array([label_of.setdefault(s.spec.key(), len(label_of)) for s in samples])
    return Part("pair", [s.image for s in samples], queries, relevant, labels)


def shapes_corpus(seed: int = 1000, size: int = 2000) -> list[str]:
    """An in-domain reference corpus for DCC's token generality: the captions of ``size``
    *train-split* Shapes scenes (3/4 single, 1/4 pairs; never the test split searched here)."""
    single = shapes.ShapesConfig(kind="single", size=size - size // 4, seed=seed, split="train")
    pair = shapes.ShapesConfig(kind="pair", size=size // 4, seed=seed, split="train")
    return [c for config in (single, pair) for s in shapes.generate(config) for c in s.captions]


# --- encoding -----------------------------------------------------------------------------------

def encode_part(model, part: Part, cve: CVEConfig, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(plain vectors, v_hat) of a part's gallery, as the index does it
    (:class:`~sharpclip.ingest.stages.Calibrated`: one pass, the pooling step twice)."""
    from sharpclip.ingest.stages import Calibrated

    stage = Calibrated(cve)
    plain, hat = [], []
    for at in range(0, len(part.images), chunk):
        p, h = stage.encode(model, model.preprocess.batch(part.images[at:at + chunk]))
        plain.append(p)
        hat.append(h)
    return np.concatenate(plain), np.concatenate(hat)


class PoolingCache:
    """The pooling step's inputs of a gallery, kept so CVE settings re-run only the pooling
    (the same functions as :class:`~sharpclip.ingest.stages.Calibrated`); ``v_cal`` memoised per
    band setting, ``v_hat`` blended per ``rho``."""

    def __init__(self, model, images: list, chunk: int = 256):
        import torch

        from sharpclip.models.calibrated import pooling_inputs

        self.model = model
        self.inputs = []
        for at in range(0, len(images), chunk):
            pixels = torch.from_numpy(model.preprocess.batch(images[at:at + chunk]))
            self.inputs.append(pooling_inputs(model, pixels.to(model.device)))
        self.plain = self._rerun(lambda i: np.zeros((len(i.attention), i.leading_keys
                                                     + i.attention.shape[1]), np.float32))
        self._calibrated: dict[tuple, np.ndarray] = {}

    def _rerun(self, bias_of: Callable) -> np.ndarray:
        from sharpclip.models.calibrated import rerun_pooling

        return np.concatenate([rerun_pooling(self.model, i, bias_of(i)) for i in self.inputs])

    def v_hat(self, config: CVEConfig) -> np.ndarray:
        key = (config.eta, config.p_decay, config.p_suppress, config.decay)
        if key not in self._calibrated:
            self._calibrated[key] = self._rerun(
                lambda i: cve_bias(i.attention, i.grid, config, i.leading_keys))
        return blend(self.plain, self._calibrated[key], config.rho)


# --- searching ----------------------------------------------------------------------------------

def part_metrics(scores: np.ndarray, relevant: np.ndarray, prefix: str = "") -> dict[str, float]:
    """R@1/5/10, mAP and mINP from full-gallery scores (Q, N)."""
    out = {f"{prefix}recall@{k}": v for k, v in recall_at_k(scores, relevant, KS).items()}
    out[f"{prefix}map"] = mean_average_precision(scores, relevant)
    out[f"{prefix}minp"] = mean_inverse_negative_penalty(scores, relevant)
    return out


def per_query(scores: np.ndarray, relevant: np.ndarray) -> dict[str, np.ndarray]:
    """Per query: ``recall@1`` (0/1) and ``minp`` (#positives / rank of the last positive);
    their means are :func:`part_metrics`' values."""
    hits = np.take_along_axis(np.asarray(relevant, bool), rank_order(scores), axis=1)
    last = hits.shape[1] - np.argmax(hits[:, ::-1], axis=1)
    return {"recall@1": hits[:, 0].astype(np.float64), "minp": hits.sum(1) / last}


def paired_difference(method: np.ndarray, plain: np.ndarray, resamples: int = 2000,
                      seed: int = 0) -> dict:
    """Mean per-query difference ``method - plain`` and its 95% paired bootstrap interval."""
    diff = np.asarray(method, np.float64) - np.asarray(plain, np.float64)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(len(diff), size=(resamples, len(diff)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"diff": round(float(diff.mean()), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)]}


def method_galleries(plain: np.ndarray, v_hat: np.ndarray, dcc: DCCConfig) -> dict:
    """Per method: (gallery, the candidate set's vectors, the plan's ``calibrate``)."""
    from sharpclip.query.gallery import ArrayGallery

    return {"plain": (ArrayGallery(plain), plain, None),
            "cve": (ArrayGallery(v_hat), v_hat, None),
            "dcc": (ArrayGallery(plain, sets={"calibrated": plain}), plain, dcc),
            "cve+dcc": (ArrayGallery(plain, sets={"calibrated": v_hat}), v_hat, dcc)}


def run_method(queries: Sequence[str], query_vectors: np.ndarray, gallery, candidate_set: np.ndarray,
               calibrate: DCCConfig | None, encode: Callable, discriminative: Callable,
               depth: int) -> tuple[np.ndarray, dict]:
    """Every query through :func:`~sharpclip.query.pipeline.run_query`; returns (full-gallery
    scores (Q, N), diagnostics)."""
    from sharpclip.query.pipeline import QueryPlan, run_query

    base = query_vectors @ candidate_set.T
    scores = np.empty(base.shape, np.float64)
    stage_ms: dict[str, float] = {}
    masked: Counter = Counter()
    masked_count, top1_changed = 0, 0
    for q, text in enumerate(queries):
        plan = QueryPlan(text=text, k=depth, calibrate=calibrate)
        result = run_query(plan, gallery, encode, discriminative=discriminative)
        scores[q] = ranked_scores(result.ids, base[q])
        for stage, ms in result.timing_ms.items():
            stage_ms[stage] = stage_ms.get(stage, 0.0) + ms
        if calibrate is not None:
            words = result.details["calibrate"]["masked_tokens"]
            masked.update(w.lstrip("Ġ").replace("</w>", "") for w in words)
            masked_count += len(words)
            top1_changed += int(result.ids[0] != int(np.argmax(base[q])))
    diagnostics = {"ms_per_query": {k: round(v / len(queries), 3) for k, v in stage_ms.items()}}
    if calibrate is not None:
        diagnostics["dcc"] = {"masked_per_query": round(masked_count / len(queries), 3),
                              "top1_changed": round(top1_changed / len(queries), 4),
                              "masked_most": dict(masked.most_common(8))}
    return scores, diagnostics


@dataclass
class Prepared:
    """Both parts with their plain vectors, query vectors and the text-side helpers."""

    parts: dict[str, Part]
    plain: dict[str, np.ndarray]
    queries: dict[str, np.ndarray]
    encode: Callable
    timing: dict[str, float]


def _prefetch_texts(encode: Callable, discriminative, parts: dict[str, Part],
                    chunk: int = 256) -> dict[str, np.ndarray]:
    texts = list(dict.fromkeys(t for p in parts.values() for t in p.queries))
    for at in range(0, len(texts), chunk):
        encode(texts[at:at + chunk])
        if discriminative is not None:
            discriminative(texts[at:at + chunk])
    return {name: encode(p.queries) for name, p in parts.items()}


def evaluate(prepared: Prepared, v_hat: dict[str, np.ndarray], dcc: DCCConfig,
             discriminative: Callable, methods: Sequence[str] = METHODS,
             depth: int | None = None) -> tuple[dict, dict, dict]:
    """Run ``methods`` over both parts; returns (metrics, diagnostics, timing_s) per method.
    ``diagnostics["vs_plain"]``: each method's per-query R@1 and mINP difference from ``plain``
    (when run) with a 95% paired bootstrap interval."""
    depth = depth or max(dcc.shortlist, max(KS))
    out, diagnostics, timing = {}, {}, {}
    queries: dict[str, dict[str, dict]] = {}
    galleries = {name: method_galleries(prepared.plain[name], v_hat[name], dcc)
                 for name in prepared.parts}
    for method in methods:
        start = time.perf_counter()
        out[method], diagnostics[method] = {}, {}
        for name, part in prepared.parts.items():
            gallery, candidate_set, calibrate = galleries[name][method]
            scores, diag = run_method(part.queries, prepared.queries[name], gallery,
                                      candidate_set, calibrate, prepared.encode, discriminative,
                                      depth)
            out[method].update(part_metrics(scores, part.relevant,
                                            "" if name == "identity" else f"{name}_"))
            diagnostics[method][name] = diag
            queries.setdefault(method, {})[name] = per_query(scores, part.relevant)
        timing[method] = time.perf_counter() - start
    if "plain" in queries:
        diagnostics["vs_plain"] = {
            method: {name: {metric: paired_difference(values, queries["plain"][name][metric])
                            for metric, values in per_part.items()}
                     for name, per_part in by_part.items()}
            for method, by_part in queries.items() if method != "plain"}
    return out, diagnostics, timing


def _parts(model, seed: int, size: int, pair_size: int | None, views: int,
           captions: int) -> dict[str, Part]:
    image_size = model.preprocess.crop_hw[0]
    pair_size = max(1, size // 2) if pair_size is None else pair_size
    parts = {"identity": identity_part(seed, size, image_size, views, captions)}
    if pair_size:
        parts["pair"] = pair_part(seed, pair_size, image_size)
    return parts


def _data_params(parts: dict[str, Part], views: int) -> dict:
    out = {"split": "test", "views": views, "image_size": parts["identity"].images[0].width}
    for name, part in parts.items():
        out[f"{name}_queries"] = len(part.queries)
        out[f"{name}_gallery"] = len(part.images)
        out[f"{name}_relevant_per_query"] = round(float(part.relevant.sum(1).mean()), 3)
    out["identities"] = len(set(parts["identity"].labels.tolist()))
    return out


def run_identity(model, seed: int = 0, size: int = DEFAULT_SIZE, cve: CVEConfig = DEFAULT_CVE,
                 dcc: DCCConfig = DEFAULT_DCC, pair_size: int | None = None, views: int = VIEWS,
                 captions: int = CAPTIONS, corpus: Sequence[str] | None = None,
                 methods: Sequence[str] = METHODS) -> dict:
    """Generate, encode (plain and CVE, as the index does) and search both parts with every
    method; returns the results.json document (CONTRACT.md schema, plus ``diagnostics``).
    ``pair_size`` (default ``size // 2``; 0: no pair part) two-object scenes."""
    from sharpclip.query.calibration import DiscriminativeText, reference_corpus
    from sharpclip.query.pipeline import TextEncoder

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    timing = {}
    start = time.perf_counter()
    parts = _parts(model, seed, size, pair_size, views, captions)
    timing["generate"] = time.perf_counter() - start
    start = time.perf_counter()
    encoded = {name: encode_part(model, part, cve) for name, part in parts.items()}
    timing["encode_images"] = time.perf_counter() - start
    start = time.perf_counter()
    encode = TextEncoder(model)
    discriminative = DiscriminativeText(model, reference_corpus() if corpus is None else corpus,
                                        dcc)
    query_vectors = _prefetch_texts(encode, discriminative, parts)
    timing["encode_texts"] = time.perf_counter() - start
    prepared = Prepared(parts, {n: e[0] for n, e in encoded.items()}, query_vectors, encode, timing)
    metrics, diagnostics, method_timing = evaluate(
        prepared, {n: e[1] for n, e in encoded.items()}, dcc, discriminative, methods)
    diagnostics["cve_vectors"] = {f"{n}_cos_plain_vhat": round(float(np.mean(np.sum(e[0] * e[1], 1))), 4)
                          for n, e in encoded.items()}
    params = {"data": _data_params(parts, views), "cve": asdict(cve), "dcc": asdict(dcc),
              "depth": max(dcc.shortlist, max(KS)),
              "corpus": "vocabulary prompts" if corpus is None else f"{len(corpus)} texts given"}
    return {"task": "identity", "model": model.fingerprint, "seed": seed, "size": size,
            "methods": metrics, "params": params, "diagnostics": diagnostics,
            "timing_s": {k: round(v, 2) for k, v in {**timing, **method_timing}.items()}}


COLUMNS = tuple(f"recall@{k}" for k in KS) + ("map", "minp")


def to_markdown(result: dict) -> str:
    """Two Markdown tables (identity part, pair part): one row per method."""
    data, p = result["params"]["data"], result["params"]
    lines = [(f"task `{result['task']}`, model `{result['model']}`, seed {result['seed']}, "
              f"size {result['size']}: {data['identity_queries']} caption queries over "
              f"{data['identity_gallery']} images of {data['identities']} identities "
              f"({data['views']} views each, {data['identity_relevant_per_query']} relevant per "
              f"query)")]
    for name in PARTS:
        if f"{name}_queries" not in data:
            continue
        prefix = "" if name == "identity" else f"{name}_"
        if name == "pair":
            lines += ["", (f"two-object retrieval: {data['pair_queries']} captions over "
                           f"{data['pair_gallery']} pair scenes "
                           f"({data['pair_relevant_per_query']} relevant per query)")]
        lines += ["", "| method | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
        for method, metrics in result["methods"].items():
            cells = " | ".join(f"{metrics[prefix + c]:.3f}" if prefix + c in metrics else "-"
                               for c in COLUMNS)
            lines.append(f"| {method} | {cells} |")
    vs_plain = result.get("diagnostics", {}).get("vs_plain", {})
    if vs_plain:
        lines += ["", "difference from plain per query (95% paired bootstrap interval):", "",
                  "| method | R@1 | mINP | pair R@1 | pair mINP |", "|---|---|---|---|---|"]
        for method, by_part in vs_plain.items():
            cells = [f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
                     for name in PARTS if name in by_part
                     for d in (by_part[name]["recall@1"], by_part[name]["minp"])]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    cve, dcc = p["cve"], p["dcc"]
    lines += ["", (f"CVE eta={cve['eta']} p={cve['p_decay']}/{cve['p_suppress']} "
                   f"decay={cve['decay']} rho={cve['rho']}; DCC fraction={dcc['fraction']} "
                   f"lam={dcc['lam']} K={dcc['shortlist']}; DCC corpus: {p['corpus']}")]
    return "\n".join(lines) + "\n"


def write_results(result: dict, out) -> None:
    """Write ``results.json`` and ``results.md`` (this task's tables) into ``out``."""
    retrieval.write_results(result, out, to_markdown(result))


# --- the sweep (seed 0 only: the defaults' evidence) -------------------------------------------

SWEEP_COLUMNS = ("recall@1", "recall@10", "map", "minp", "pair_recall@1", "pair_map", "pair_minp")


def sweep(model, seed: int = 0, size: int = DEFAULT_SIZE, pair_size: int | None = None,
          base_cve: CVEConfig = DEFAULT_CVE, base_dcc: DCCConfig = DEFAULT_DCC,
          etas: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
          p_decays: Sequence[float] = (50.0, 70.0, 80.0, 90.0, 100.0),
          p_suppresses: Sequence[float] = (90.0, 95.0, 98.0, 100.0),
          decays: Sequence[float] = (0.25, 0.5, 0.75),
          rhos: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
          fractions: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5),
          lams: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
          shortlists: Sequence[int] = (20, 50, 100, 200),
          joint: Sequence[tuple[CVEConfig, DCCConfig]] = (),
          corpus: Sequence[str] | None = None, groups: Sequence[str] = ("cve", "dcc", "joint"),
          log: Callable[[str], None] | None = None) -> list[dict]:
    """One-at-a-time sweep around ``base_cve``/``base_dcc``: CVE settings (methods ``cve`` and
    ``cve+dcc``), DCC settings (``dcc`` and ``cve+dcc``), then ``joint`` (CVE, DCC) settings
    (``cve+dcc``); ``groups`` picks which of the three run (the base always does). Returns one
    row per (method, setting) with its metrics."""
    from sharpclip.query.calibration import DiscriminativeText, reference_corpus
    from sharpclip.query.pipeline import TextEncoder

    parts = _parts(model, seed, size, pair_size, VIEWS, CAPTIONS)
    caches = {name: PoolingCache(model, part.images) for name, part in parts.items()}
    encode = TextEncoder(model)
    corpus = reference_corpus() if corpus is None else corpus
    query_vectors = _prefetch_texts(encode, None, parts)
    prepared = Prepared(parts, {n: c.plain for n, c in caches.items()}, query_vectors, encode, {})
    texts: dict[float, DiscriminativeText] = {}
    rows: list[dict] = []

    def discriminative(fraction: float) -> DiscriminativeText:
        if fraction not in texts:
            texts[fraction] = DiscriminativeText(model, corpus, replace(base_dcc, fraction=fraction))
            _prefetch_texts(encode, texts[fraction], parts)
        return texts[fraction]

    def record(methods: Sequence[str], setting: str, cve: CVEConfig, dcc: DCCConfig) -> None:
        v_hat = {n: c.v_hat(cve) for n, c in caches.items()}
        metrics, _, timing = evaluate(prepared, v_hat, dcc, discriminative(dcc.fraction), methods)
        for method in methods:
            row = {"method": method, "setting": setting, **metrics[method],
                   "seconds": round(timing[method], 1)}
            rows.append(row)
            if log:
                log(_row_text(row))

    record(METHODS, "base", base_cve, base_dcc)
    cve_settings = (("eta", etas), ("p_decay", p_decays), ("p_suppress", p_suppresses),
                    ("decay", decays), ("rho", rhos)) if "cve" in groups else ()
    dcc_settings = (("fraction", fractions), ("lam", lams),
                    ("shortlist", shortlists)) if "dcc" in groups else ()
    for field, values in cve_settings:
        for value in values:
            if value == getattr(base_cve, field):
                continue
            try:
                cve = replace(base_cve, **{field: value})
            except ValueError:  # p_decay above p_suppress: not a setting
                continue
            record(("cve", "cve+dcc"), f"{field}={value}", cve, base_dcc)
    for field, values in dcc_settings:
        for value in values:
            if value == getattr(base_dcc, field):
                continue
            record(("dcc", "cve+dcc"), f"{field}={value}", base_cve,
                   replace(base_dcc, **{field: value}))
    for cve, dcc in joint if "joint" in groups else ():
        record(("cve+dcc",), _setting(cve, dcc), cve, dcc)
    return rows


def _setting(cve: CVEConfig, dcc: DCCConfig) -> str:
    return (f"eta={cve.eta} p={cve.p_decay:g}/{cve.p_suppress:g} decay={cve.decay} rho={cve.rho} "
            f"fraction={dcc.fraction} lam={dcc.lam} K={dcc.shortlist}")


def _row_text(row: dict) -> str:
    cells = " | ".join(f"{row[c]:.3f}" if c in row else "-" for c in SWEEP_COLUMNS)
    return f"| {row['method']} | {row['setting']} | {cells} | {row['seconds']} |"


def sweep_table(rows: Sequence[dict]) -> str:
    """The sweep as a Markdown table."""
    header = "| method | setting | " + " | ".join(SWEEP_COLUMNS) + " | s |"
    return "\n".join([header, "|---" * (len(SWEEP_COLUMNS) + 3) + "|",
                      *(_row_text(r) for r in rows)]) + "\n"


def _joint(text: str) -> list[tuple[CVEConfig, DCCConfig]]:
    """``eta:p_decay:p_suppress:decay:rho:fraction:lam:K`` items, comma-separated."""
    out = []
    for item in (x for x in text.split(",") if x.strip()):
        eta, pd, ps, decay, rho, fraction, lam, k = item.split(":")
        out.append((CVEConfig(float(eta), float(pd), float(ps), float(decay), float(rho)),
                    DCCConfig(float(fraction), float(lam), int(k))))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m sharpclip.eval.identity``: a run (``--out`` writes results.json/.md) or,
    with ``--sweep``, the seed-0 sweep."""
    import datetime
    import platform

    from sharpclip.models import load_model

    parser = argparse.ArgumentParser(description="the identity task (calibration), or its sweep")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--pair-size", type=int, default=None)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--cve", default=None, help="eta:p_decay:p_suppress:decay:rho (a run's "
                        "or the sweep's base)")
    parser.add_argument("--dcc", default=None, help="fraction:lam:K")
    parser.add_argument("--joint", default="", help="sweep: cve+dcc settings, "
                        "eta:p_decay:p_suppress:decay:rho:fraction:lam:K,...")
    parser.add_argument("--groups", default="cve,dcc,joint", help="sweep: which settings run "
                        "beside the base (cve, dcc, joint)")
    parser.add_argument("--corpus", choices=("vocabulary", "shapes"), default="vocabulary",
                        help="DCC's reference corpus: the concept vocabulary's prompts (the "
                        "product's default) or train-split Shapes captions")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    cve = CVEConfig(*map(float, args.cve.split(":"))) if args.cve else CVEConfig()
    dcc = DCCConfig() if not args.dcc else DCCConfig(
        float(args.dcc.split(":")[0]), float(args.dcc.split(":")[1]), int(args.dcc.split(":")[2]))
    model = load_model(args.model)
    corpus = shapes_corpus() if args.corpus == "shapes" else None
    print(f"{platform.platform()}, {datetime.date.today()}; model {model.fingerprint}, seed "
          f"{args.seed}, size {args.size}", flush=True)
    start = time.perf_counter()
    if args.sweep:
        print(sweep_table([]), end="", flush=True)
        sweep(model, args.seed, args.size, args.pair_size, cve, dcc, joint=_joint(args.joint),
              corpus=corpus, groups=args.groups.split(","),
              log=lambda line: print(line, flush=True))
    else:
        result = run_identity(model, args.seed, args.size, cve, dcc, args.pair_size,
                              corpus=corpus)
        if args.out:
            write_results(result, args.out)
        print(to_markdown(result), end="")
        print(f"timing_s: {result['timing_s']}")
        for method in METHODS:
            for name, diag in result["diagnostics"].get(method, {}).items():
                if "dcc" in diag:
                    print(f"{method} {name} DCC: {diag['dcc']}")
        print(f"CVE vectors: {result['diagnostics']['cve_vectors']}")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
