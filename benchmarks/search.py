"""Search latency: exact top-K against the memory-bandwidth limit, and the HNSW index (vs IVF).

Run: nice .venv/bin/python benchmarks/search.py [--sizes 100000 1000000] [--dim 512] [--queries 200]
     [--data spectrum|mixture] [--ivf]

Data: synthetic unit vectors written to a float32 memmap (the collection's storage format) and
read back through it; queries are fresh draws from the same distribution.

- ``spectrum`` (default): a continuum with no clusters, like a cloud of real embeddings: Gaussian
  with a power-law variance spectrum (the i-th coordinate has variance ``i ** -alpha``,
  ``--alpha 1``), normalised.
- ``mixture``: ``--clusters`` random unit centres, each point a centre plus a Gaussian offset of
  norm ~0.8 in a 64-dimensional subspace shared by all clusters plus isotropic noise of norm
  ~0.25, normalised. Discrete clusters flatter IVF once it has about as many lists as there are
  clusters, and the 64-dimensional blobs are hard for graph search.

Recall on real embeddings has to be measured on them; these two bracket the behaviour.

Exact search: one query at a time, ``exact_topk`` over the memmap, compared with one plain scan of
the same bytes (``ndarray.sum``; on one thread, and on all cores over row ranges), timed in turn
in the same run; the ratio (exact / the faster scan, the memory-bandwidth reference) has the goal
<= 1.5. ANN: ``AnnIndex`` (HNSW over ``--codec`` vectors, a compressed graph's beam re-ranked
exactly from the memmap as the collection does) and, with ``--ivf``, faiss IVF-Flat with
``4 * sqrt(N)`` lists, both searched one query at a time on one thread; recall@10 against
``exact_topk``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np

from sharpclip.store.search_index import AnnIndex, SearchConfig, exact_topk


def mixture(n: int, dim: int, seed: int, clusters: int, out: np.ndarray | None = None,
            intrinsic: int = 64, spread: float = 0.8, noise: float = 0.25) -> np.ndarray:
    """``n`` unit vectors from the ``mixture`` distribution (module docstring)."""
    structure = np.random.default_rng(12345)  # the same clusters for data and queries
    centres = structure.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = structure.standard_normal((intrinsic, dim)).astype(np.float32) / np.sqrt(dim * intrinsic)
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), np.float32) if out is None else out
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        part = (centres[rng.integers(0, clusters, m)]
                + spread * (rng.standard_normal((m, intrinsic), dtype=np.float32) @ basis)
                + (noise / np.sqrt(dim)) * rng.standard_normal((m, dim), dtype=np.float32))
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        x[start:start + m] = part
    return x


def spectrum(n: int, dim: int, seed: int, alpha: float, out: np.ndarray | None = None) -> np.ndarray:
    """``n`` unit vectors from the ``spectrum`` distribution (module docstring)."""
    scale = np.arange(1, dim + 1, dtype=np.float32) ** np.float32(-alpha / 2)
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), np.float32) if out is None else out
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        part = rng.standard_normal((m, dim), dtype=np.float32) * scale
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        x[start:start + m] = part
    return x


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.platform()}, {cpu}, {os.cpu_count()} CPUs, {ram:.0f} GiB RAM, "
            f"numpy {np.__version__}, faiss {faiss.__version__}, "
            f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def scan(x: np.ndarray, pool: ThreadPoolExecutor | None) -> None:
    """One plain pass over the bytes of ``x``: ``sum`` on one thread, or on row ranges in a
    thread pool (numpy releases the GIL while reducing)."""
    if pool is None:
        x.sum(dtype=np.float32)
        return
    bounds = np.linspace(0, len(x), pool._max_workers + 1).astype(int)
    list(pool.map(lambda i: x[bounds[i]:bounds[i + 1]].sum(dtype=np.float32),
                  range(len(bounds) - 1)))


def scan_vs_exact(x: np.ndarray, queries: np.ndarray, k: int, reps: int,
                  pool: ThreadPoolExecutor) -> tuple[float, float, float]:
    """Median ms of a one-thread scan, an all-cores scan and one exact single-query search of
    ``x``, timed in turn, rep after rep."""
    times: dict[str, list[float]] = {"scan1": [], "scan": [], "exact": []}
    scan(x, pool)  # warm the page cache
    for i in range(reps):
        query = queries[i % len(queries)]
        for name, run in (("scan1", lambda: scan(x, None)), ("scan", lambda: scan(x, pool)),
                          ("exact", lambda q=query: exact_topk(x, q, k))):
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    return tuple(float(np.median(v)) * 1e3 for v in times.values())


def latencies(search, queries: np.ndarray, k: int) -> tuple[np.ndarray, float, float]:
    """Rows found, p50 and p99 ms, searching one query at a time."""
    found, times = [], []
    search(queries[:1], k)  # warm-up
    for q in queries:
        t = time.perf_counter()
        found.append(search(q[None], k)[0])
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return np.stack(found), float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def ann_rows(x: np.ndarray, queries: np.ndarray, k: int, args) -> list[str]:
    n = len(x)
    _, truth = exact_topk(x, queries, k)
    out = []
    config = SearchConfig(hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                          codec=args.codec)
    rerank = None if args.codec == "flat" else x  # a compressed graph's beam is re-ranked
    t = time.perf_counter()
    index = AnnIndex.build(x, np.arange(n), config)
    build = time.perf_counter() - t
    per_vector = index.nbytes() / n
    for ef in args.ef_search:
        index.config = dataclasses.replace(config, ef_search=ef)
        found, p50, p99 = latencies(lambda q, k: index.search(q, k, vectors=rerank)[1], queries,
                                    k)
        out.append(f"| {n:,} | HNSW-{args.codec} M={args.hnsw_m} efC={args.ef_construction} | "
                   f"efSearch={ef} | {build:.0f} | {p50:.2f} | {p99:.2f} | "
                   f"{recall(found, truth):.3f} | {per_vector:.0f} |")
        print(out[-1], flush=True)
    if args.ivf:
        nlist = int(4 * np.sqrt(n))
        t = time.perf_counter()
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(x.shape[1]), x.shape[1], nlist,
                                 faiss.METRIC_INNER_PRODUCT)
        train = np.sort(np.random.default_rng(0).choice(n, min(n, 40 * nlist), replace=False))
        ivf.train(np.ascontiguousarray(x[train]))
        for start in range(0, n, 100_000):
            ivf.add(np.ascontiguousarray(x[start:start + 100_000]))
        build = time.perf_counter() - t
        per_vector = faiss.serialize_index(ivf).nbytes / n

        faiss.omp_set_num_threads(1)  # one thread per query, as AnnIndex searches
        for nprobe in args.nprobe:
            ivf.nprobe = nprobe
            found, p50, p99 = latencies(lambda q, k: ivf.search(q, k)[1], queries, k)
            out.append(f"| {n:,} | IVF-Flat nlist={nlist} | nprobe={nprobe} | {build:.0f} | "
                       f"{p50:.2f} | {p99:.2f} | {recall(found, truth):.3f} | {per_vector:.0f} |")
            print(out[-1], flush=True)
        faiss.omp_set_num_threads(os.cpu_count() or 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200, help="ANN queries (latency, recall)")
    parser.add_argument("--exact-reps", type=int, default=15, help="timed exact searches per size")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--data", choices=["spectrum", "mixture"], default="spectrum")
    parser.add_argument("--alpha", type=float, default=1.0, help="spectrum: variance decay")
    parser.add_argument("--clusters", type=int, default=5000, help="mixture: number of clusters")
    parser.add_argument("--ann-sizes", type=int, nargs="*", default=None,
                        help="sizes to build ANN indexes for (default: the largest size)")
    parser.add_argument("--hnsw-m", type=int, default=SearchConfig.hnsw_m)
    parser.add_argument("--ef-construction", type=int, default=SearchConfig.ef_construction)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--codec", choices=["flat", "sq8", "fp16"], default=SearchConfig.codec,
                        help="how the graph stores vectors (the 2026-11-23 tables: flat)")
    parser.add_argument("--ivf", action="store_true", help="also measure faiss IVF-Flat")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--workdir", default=None, help="where the memmap goes (default: a temp dir)")
    args = parser.parse_args()
    sizes = sorted(args.sizes)
    ann_sizes = args.ann_sizes if args.ann_sizes is not None else [sizes[-1]]

    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}")
    workdir = Path(tempfile.mkdtemp(prefix="sharpclip-bench-", dir=args.workdir))
    try:
        path = workdir / "vectors.f32"
        n_max = max(sizes + ann_sizes)
        x = np.memmap(path, np.float32, "w+", shape=(n_max, args.dim))
        t = time.perf_counter()
        if args.data == "spectrum":
            def draw(n, seed, out=None):
                return spectrum(n, args.dim, seed, args.alpha, out)
            described = f"spectrum alpha={args.alpha}"
        else:
            def draw(n, seed, out=None):
                return mixture(n, args.dim, seed, args.clusters, out)
            described = f"mixture of {args.clusters} clusters"
        draw(n_max, seed=0, out=x)
        x.flush()
        del x
        x = np.memmap(path, np.float32, "r", shape=(n_max, args.dim))
        queries = draw(args.queries, seed=1)
        print(f"data: {n_max:,} x {args.dim} float32 memmap, {described}, "
              f"generated in {time.perf_counter() - t:.0f} s; k={args.k}")
        cores = os.cpu_count() or 1
        print(f"\n| rows | GB | scan 1 thread ms | scan {cores} threads ms | exact search ms | "
              "ratio exact / faster scan (goal <= 1.5) | bytes/vector |\n"
              "|---|---|---|---|---|---|---|")
        with ThreadPoolExecutor(cores) as pool:
            for n in sizes:
                scan1, scan_all, exact = scan_vs_exact(x[:n], queries, args.k, args.exact_reps,
                                                       pool)
                print(f"| {n:,} | {n * args.dim * 4 / 1e9:.2f} | {scan1:.1f} | {scan_all:.1f} | "
                      f"{exact:.1f} | {exact / min(scan1, scan_all):.2f} | {args.dim * 4} |",
                      flush=True)
        print("\n| rows | index | search setting | build s | p50 ms | p99 ms | recall@10 | "
              "bytes/vector |\n|---|---|---|---|---|---|---|---|")
        for n in ann_sizes:
            ann_rows(x[:n], queries, args.k, args)
        print(f"\nload average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
