"""What calibration costs (METHODS.md §3, CalibCLIP), side by side in one run.

**Index time.** The same preprocessed batch of ``--n`` Shapes images through
``model.encode_pixels`` (plain index) and through ``Calibrated().encode`` (CVE: one pass up to the
pooling step, which then runs twice: unbiased for the plain vector, biased for ``v_hat``); images
per second each, and CVE's time / plain's. Goal: <= 1.3.

**Query time.** ``--queries`` captions through :func:`~sharpclip.query.pipeline.run_query` over
an in-memory gallery of those images (k = 20), every memo cleared before each query:

- plain: the query's text encoding + cosine top-k (the reference);
- DCC: + top-K (K = 100) over ``v_hat``, DCC's masked re-encoding of the query
  (``DiscriminativeText``, built once per process) and the fused re-ranking;
- DCC as ``search.py`` runs it today: the ``DiscriminativeText`` (the reference corpus tokenized,
  token generality counted) built for every query.

Modes interleaved per round (the machine's load hits all alike); the median round is reported
(index: seconds per pass; query: median ms per query within the round).

Run: .venv/bin/python benchmarks/calibration.py [--n 1000] [--queries 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import numpy as np

from sharpclip.data import shapes
from sharpclip.ingest.stages import Calibrated
from sharpclip.methods.calibration import DCCConfig
from sharpclip.models import load_model
from sharpclip.query.calibration import DiscriminativeText, reference_corpus
from sharpclip.query.gallery import ArrayGallery
from sharpclip.query.pipeline import QueryPlan, TextEncoder, run_query


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _plain_pass(model, pixels: np.ndarray) -> np.ndarray:
    step = model.batch_size
    return np.concatenate([model.encode_pixels(pixels[i:i + step])
                           for i in range(0, len(pixels), step)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="images")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="bundled")
    args = parser.parse_args()
    model = load_model(args.model)
    samples = list(shapes.generate(shapes.ShapesConfig(kind="identity", size=args.n,
                                                       seed=args.seed, split="test")))
    pixels = model.preprocess.batch([s.image for s in samples])
    captions = list(dict.fromkeys(s.captions[0] for s in samples))[:args.queries]
    stage, dcc = Calibrated(), DCCConfig()
    plain, v_hat = stage.encode(model, pixels)  # warm-up, and the gallery
    np.testing.assert_allclose(plain, _plain_pass(model, pixels), atol=1e-5)
    corpus = reference_corpus()
    built = DiscriminativeText(model, corpus, dcc)
    plain_gallery = ArrayGallery(plain)
    calibrated_gallery = ArrayGallery(plain, sets={"calibrated": v_hat})

    def plain_query(text: str) -> None:
        run_query(QueryPlan(text=text, k=20), plain_gallery, TextEncoder(model))

    def dcc_query(text: str) -> None:
        built._memo.clear()
        run_query(QueryPlan(text=text, k=20, calibrate=dcc), calibrated_gallery,
                  TextEncoder(model), discriminative=built)

    def dcc_as_search(text: str) -> None:  # search.py: a DiscriminativeText per search
        run_query(QueryPlan(text=text, k=20, calibrate=dcc), calibrated_gallery,
                  TextEncoder(model), discriminative=DiscriminativeText(model, reference_corpus(),
                                                                        dcc))

    index = {"plain": [], "cve": []}
    query = {"plain": [], "dcc": [], "dcc (search.py)": []}
    modes = {"plain": plain_query, "dcc": dcc_query, "dcc (search.py)": dcc_as_search}
    for text in captions[:3]:  # warm-up
        for fn in modes.values():
            fn(text)
    for r in range(args.rounds):
        order = ("plain", "cve") if r % 2 == 0 else ("cve", "plain")
        for name in order:
            fn = (lambda: _plain_pass(model, pixels)) if name == "plain" else \
                (lambda: stage.encode(model, pixels))
            index[name].append(_seconds(fn))
        names = list(modes)
        names = names[r % len(names):] + names[:r % len(names)]
        per = {name: [] for name in names}
        for text in captions:
            for name in names:
                start = time.perf_counter()
                modes[name](text)
                per[name].append(1e3 * (time.perf_counter() - start))
        for name in names:
            query[name].append(float(np.median(per[name])))
    seconds = {k: float(np.median(v)) for k, v in index.items()}
    ms = {k: float(np.median(v)) for k, v in query.items()}
    print(f"{platform.platform()} ({platform.processor() or platform.machine()}), "
          f"{datetime.date.today()}; torch threads: {_threads()}; model {model.fingerprint}; "
          f"{args.n} images, {len(captions)} queries, {args.rounds} rounds")
    print()
    print("| index time | images/s | s per pass | ÷ plain |")
    print("|---|---|---|---|")
    for name, label in (("plain", "plain (`encode_pixels`)"), ("cve", "CVE (`Calibrated().encode`)")):
        print(f"| {label} | {args.n / seconds[name]:.0f} | {seconds[name]:.2f} | "
              f"{seconds[name] / seconds['plain']:.2f} |")
    print()
    print("| query time (k=20) | ms per query | ÷ plain |")
    print("|---|---|---|")
    for name, label in (("plain", "plain text query"), ("dcc", "DCC, K=100 (DiscriminativeText built once)"),
                        ("dcc (search.py)", "DCC as search.py does it (DiscriminativeText per query)")):
        print(f"| {label} | {ms[name]:.2f} | {ms[name] / ms['plain']:.2f} |")
    build = float(np.median([_seconds(lambda: DiscriminativeText(model, corpus, dcc))
                             for _ in range(5)])) * 1e3
    print()
    print(f"building a DiscriminativeText over the vocabulary's {len(corpus)} prompts: "
          f"{build:.1f} ms (median of 5)")
    print(f"index goal CVE/plain <= 1.3: {'met' if seconds['cve'] / seconds['plain'] <= 1.3 else 'NOT met'}")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
