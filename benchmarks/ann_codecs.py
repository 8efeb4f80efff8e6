"""sharpclip's graph codecs side by side in one run: the graph's walk alone, and the whole search.

For each of ``--codecs`` an ``AnnIndex`` over ``--n`` x ``--dim`` clustered unit vectors
(``peers.py``'s data: ``mixture``, 5,000 clusters, fresh queries) is built with the defaults
(M 32, efConstruction 100; the tuner's held-out vectors added last, as a collection builds it),
saved, and memory-mapped as a collection's reader opens it. Then, per breadth, each codec is
timed one query at a time on one thread:

- ``walk``: faiss's search of the graph alone, k results by the codes' own scores;
- ``search``: ``AnnIndex.search`` as a collection calls it, the graph's best
  ``RERANK_POOL[codec]`` x k scored again exactly from the float32 file;
- ``search, pool P``: the same with P x k re-scored (``--pools``);
- ``hnswlib`` (``--hnswlib``): the same M and efConstruction, as a reference.

The sweep over breadths is repeated ``--rounds`` times, every setting in turn within each breadth,
so a change in the machine's load reaches them alike; a setting's p50 is the median of its
rounds' medians. Recall@10 against exact search over all the rows.

``--tune-sets S`` checks the tuner against the fresh queries: on each of S further sets of
``--tune-queries`` fresh vectors (default 500, the held-out sample's size), the breadth
``tune_ef_search`` chooses (its lower bound over the queries' effective number of trials), the
breadth that counting every (query, neighbour) pair as an independent trial would have chosen
(the rule before 2026-12-08), and the recall of the timed queries at each.

Run: python benchmarks/ann_codecs.py [--n 250000] [--queries 1000] [--breadths 24 32 40 48 64]
     [--codecs fp16 sq8] [--pools 4] [--rounds 2] [--hnswlib] [--tune-sets 4 [--tune-queries 500]]
     [--work DIR]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # single-thread queries (before numpy loads)

import argparse
import datetime
import importlib.util
import platform
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from search import mixture

from sharpclip.store import search_index
from sharpclip.store.search_index import CODECS, AnnIndex, SearchConfig, exact_topk
from sharpclip.store.tuning import (
    DEFAULT_RECALL,
    EF_GRID,
    TUNE_QUERIES,
    add_tuned,
    recall_at_k,
    recall_lower_bound,
    tune_ef_search,
)


def built(codec: str, x: np.ndarray, work: Path, m: int, ef_construction: int) -> AnnIndex:
    """The ``codec`` graph over ``x`` as a reader opens it (built and saved in ``work`` unless it
    is there already)."""
    file = work / f"{codec}-m{m}-efc{ef_construction}.faiss"
    if not file.exists():
        index = AnnIndex(x.shape[1], SearchConfig(hnsw_m=m, ef_construction=ef_construction,
                                                  codec=codec))
        add_tuned(index, x, np.arange(len(x)), progress=False)
        index.save(file)
    index = AnnIndex.load(file, mmap=True)
    index.config = SearchConfig(**{**index.config.__dict__, "threads": 1})
    return index


def walk(index: AnnIndex, k: int):
    """faiss's search of the graph alone: k results by the codes' scores, with the search
    parameters ``AnnIndex.search`` keeps per breadth (made once, not per query)."""
    scores, ids = np.empty((1, k), np.float32), np.empty((1, k), np.int64)

    def search(q, ef):
        kept = index._search_params(ef)  # held while faiss runs, as AnnIndex.search does
        index.index_.search_c(1, faiss.swig_ptr(q[None]), k, faiss.swig_ptr(scores),
                              faiss.swig_ptr(ids), kept[1])
        return index.rows_[ids[0]]
    return search


def full(index: AnnIndex, x: np.ndarray, k: int, pool: int | None = None):
    """``AnnIndex.search`` re-scored from ``x`` (``pool`` x k candidates instead of the codec's
    own ``RERANK_POOL``)."""
    def search(q, ef):
        kept = search_index.RERANK_POOL
        if pool is not None:
            search_index.RERANK_POOL = dict.fromkeys(kept, pool)
        try:
            return index.search(q, k, vectors=x, ef_search=ef)[1][0]
        finally:
            search_index.RERANK_POOL = kept
    return search


def tuner_check(index: AnnIndex, x: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                sets: int, size: int, k: int) -> list[str]:
    """Table rows: per set of ``size`` fresh vectors, the breadth the tuner chooses and the one
    the all-pairs rule would have, each with the recall of ``queries`` there."""
    out = []
    for seed in range(100, 100 + sets):
        held = mixture(size, x.shape[1], seed, 5000)
        chosen = tune_ef_search(index, x, held, DEFAULT_RECALL, k)
        held_truth = exact_topk(x, held, k)[1]
        all_pairs = None
        for ef in (e for e in EF_GRID if e >= k):
            recall = recall_at_k(index.search(held, k, vectors=x, ef_search=ef)[1], held_truth)
            if recall_lower_bound(recall, len(held) * k) >= DEFAULT_RECALL:
                all_pairs = ef
                break

        def fresh(ef):
            return recall_at_k(index.search(queries, k, vectors=x, ef_search=ef)[1], truth)
        out.append(f"| {index.config.codec} | {seed} | {chosen.ef_search} ({chosen.recall:.3f}, "
                   f"bound {chosen.lower_bound:.3f}, {chosen.trials:.0f} trials) | "
                   f"{fresh(chosen.ef_search):.3f} | {all_pairs} | "
                   f"{fresh(all_pairs) if all_pairs else float('nan'):.3f} |")
    return out


def hnswlib_search(x: np.ndarray, work: Path, m: int, ef_construction: int, k: int):
    import hnswlib

    file = work / f"hnswlib-m{m}-efc{ef_construction}.bin"
    index = hnswlib.Index(space="ip", dim=x.shape[1])
    if file.exists():
        index.load_index(str(file))
    else:
        index.init_index(max_elements=len(x), M=m, ef_construction=ef_construction)
        index.add_items(np.ascontiguousarray(x), np.arange(len(x)), num_threads=os.cpu_count())
        index.save_index(str(file))
    index.set_num_threads(1)

    def search(q, ef):
        index.set_ef(max(ef, k))
        return index.knn_query(q, k=k)[0][0].astype(np.int64)
    return search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=250_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--m", type=int, default=SearchConfig.hnsw_m)
    parser.add_argument("--ef-construction", type=int, default=SearchConfig.ef_construction)
    parser.add_argument("--breadths", type=int, nargs="+", default=[24, 32, 40, 48, 64])
    parser.add_argument("--codecs", nargs="+", choices=CODECS, default=["fp16", "sq8"])
    parser.add_argument("--pools", type=int, nargs="*", default=[],
                        help="also search with these many x k candidates re-scored")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hnswlib", action="store_true", help="add hnswlib as a reference")
    parser.add_argument("--tune-sets", type=int, default=0,
                        help="check the tuner on this many sets of fresh held-out vectors")
    parser.add_argument("--tune-queries", type=int, default=TUNE_QUERIES,
                        help="vectors per set (default: as many as the tuner holds out)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the data and the graphs here, reused by the next run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args, args.work or Path(tmp))


def run(args, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    file = work / f"vectors-{args.n}x{args.dim}.f32"
    if not file.exists():
        x = np.memmap(file, np.float32, "w+", shape=(args.n, args.dim))
        mixture(args.n, args.dim, 0, 5000, out=x)
        x.flush()
        del x
    x = np.memmap(file, np.float32, "r", shape=(args.n, args.dim))
    queries = mixture(args.queries, args.dim, 1, 5000)
    truth = exact_topk(x, queries, args.k)[1]
    settings, checks = {}, []
    for codec in args.codecs:
        index = built(codec, x, work, args.m, args.ef_construction)
        checks += tuner_check(index, x, queries, truth, args.tune_sets, args.tune_queries,
                              args.k)
        settings[f"{codec} walk"] = walk(index, args.k)
        settings[f"{codec} search"] = full(index, x, args.k)
        for pool in args.pools:
            settings[f"{codec} search, pool {pool}"] = full(index, x, args.k, pool)
    if args.hnswlib and importlib.util.find_spec("hnswlib") is not None:
        settings["hnswlib"] = hnswlib_search(x, work, args.m, args.ef_construction, args.k)
    faiss.omp_set_num_threads(1)
    print(f"{datetime.datetime.now():%Y-%m-%dT%H:%M} {platform.machine()}, {os.cpu_count()} "
          f"cores, load average {os.getloadavg()[0]:.1f}; {args.n:,} x {args.dim} mixture, "
          f"{args.queries} fresh queries, k={args.k}, M={args.m} efConstruction="
          f"{args.ef_construction}, {args.rounds} rounds; ready in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    p50s = {(name, ef): [] for name in settings for ef in args.breadths}
    recalls = {}
    for _ in range(args.rounds):
        for ef in args.breadths:
            for name, search in settings.items():
                search(queries[0], ef)  # warm-up
                found, times = [], []
                for q in queries:
                    began = time.perf_counter()
                    found.append(search(q, ef))
                    times.append(time.perf_counter() - began)
                p50s[name, ef].append(1e3 * float(np.median(times)))
                recalls[name, ef] = recall_at_k(np.array(found), truth)
    print("\n| setting | efSearch | p50 ms (median of rounds) | p50 ms per round | recall@10 |"
          "\n|---|---|---|---|---|")
    for ef in args.breadths:
        for name in settings:
            rounds = p50s[name, ef]
            print(f"| {name} | {ef} | {np.median(rounds):.3f} | "
                  f"{' '.join(f'{r:.3f}' for r in rounds)} | {recalls[name, ef]:.3f} |")
    if checks:
        print(f"\nThe tuner on {args.tune_queries} fresh vectors per set, target {DEFAULT_RECALL}, "
              f"and the recall of the {args.queries} timed queries at the breadth chosen:\n\n"
              "| codec | set (seed) | tuner's efSearch (held-out recall, bound, trials) | "
              "recall of the timed queries | all-pairs rule's efSearch | recall of the timed "
              "queries |\n|---|---|---|---|---|---|")
        print("\n".join(checks))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
