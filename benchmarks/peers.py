"""sharpclip's search side by side with the libraries a user would pick instead, in one run.

Engines (each skipped with a note when its package is missing; ``pip install sharpclip[bench]``
installs them all): sharpclip exact (``exact_topk`` over the float32 memmap) and ANN (``AnnIndex``,
HNSW over ``--codec`` codes, fp16 by default, its best candidates re-scored exactly from the
memmap, efSearch tuned by ``store.tuning`` on held-out vectors), numpy (``x @ q`` +
``argpartition``), faiss ``IndexFlatIP``, hnswlib, usearch (f32, f16, i8), chromadb (its HNSW)
and LanceDB (a plain scan, and an IVF-PQ index re-ranked with ``refine_factor``).

Data: ``--n`` x ``--dim`` clustered unit vectors (``benchmarks/search.py``'s ``mixture``: 5,000
clusters) in a float32 memmap; ``--queries`` fresh draws from the same distribution; k = 10.
Every graph uses the same degree and build width (``--m`` 32, ``--ef-construction`` 100:
sharpclip's default) and is swept over the same search breadths; the summary keeps, per engine,
the fastest setting with recall@10 >= ``--target`` on these queries (for sharpclip also the
breadth its tuner chose).

Measured: recall@10 against exact search; p50/p99 of one query at a time with one thread
(``OPENBLAS_NUM_THREADS=1``, faiss/hnswlib/usearch told so; chromadb and LanceDB run their own
Rust thread pools and cannot be told); build time on all cores; RAM = growth of the process's
anonymous memory (``RssAnon``, which leaves out memory-mapped files; freed memory is returned
with ``malloc_trim`` first) from before the build to after a warm-up search, per vector; disk =
the bytes the engine needs on disk to answer (for sharpclip the vector file plus the index file),
per vector. sharpclip's graph is searched as a collection's reader opens it: loaded from its
saved file, memory-mapped (``--sharpclip-graph in-memory``: the index as built), so its RAM is
the heap beside both mapped files; the others answer from memory as built.

By default each engine is built, timed and dropped before the next is built, so engines are timed
minutes apart and a drift of the machine between them is not shared. ``--rounds R`` (R >= 2)
builds every engine first and keeps it (they must fit in memory together), then times them in
turn R times; each setting's p50 and p99 are the medians of its rounds.

Run: python benchmarks/peers.py [--n 250000] [--dim 512] [--queries 200] [--engines ...]
     [--breadths 16 24 ...] [--rounds 3]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # single-thread queries (before numpy loads)

import argparse
import ctypes
import datetime
import gc
import importlib.util
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from search import mixture

from sharpclip.store.search_index import CODECS, AnnIndex, SearchConfig, exact_topk
from sharpclip.store.tuning import add_tuned, recall_at_k

BREADTHS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384)
BUILD_THREADS = os.cpu_count() or 1


@dataclass
class Engine:
    """A built engine: how to search it under each setting, and what it cost."""

    name: str
    search: Callable[[np.ndarray, int, object], np.ndarray]  # (query (d,), k, setting) -> ids
    settings: list
    label: Callable[[object], str] = str
    build_s: float = 0.0
    disk_bytes: int = 0
    note: str = ""
    keep: list = field(default_factory=list)  # objects that must outlive the build


def anon_bytes() -> int:
    """The process's anonymous resident memory (heap, not memory-mapped files), after giving
    freed heap back to the system."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# -- engines ---------------------------------------------------------------------------------------
# Each maker gets (vectors memmap, its file, a scratch folder, args) and returns an Engine.


def sharpclip_exact(x, file, work, args):
    return Engine("sharpclip exact", lambda q, k, _: exact_topk(x, q, k)[1][0], [None],
                  label=lambda _: "scan", disk_bytes=file.stat().st_size)


def sharpclip_ann(x, file, work, args):
    config = SearchConfig(hnsw_m=args.m, ef_construction=args.ef_construction, codec=args.codec,
                          threads=BUILD_THREADS)
    index = AnnIndex(x.shape[1], config)
    start = time.perf_counter()
    tuning = add_tuned(index, x, np.arange(len(x)), args.target, progress=False)
    build = time.perf_counter() - start
    index.save(work / "sharpclip.faiss")
    if args.sharpclip_graph == "mapped":  # as a collection's reader opens it
        index = AnnIndex.load(work / "sharpclip.faiss", mmap=True)
    index.config = SearchConfig(**{**config.__dict__, "threads": 1})  # queries on one thread
    breadths = sorted({*args.breadths, tuning["ef_search"]})
    return Engine(f"sharpclip HNSW {args.codec} + exact re-rank ({args.sharpclip_graph})",
                  lambda q, k, ef: index.search(q, k, vectors=x, ef_search=ef)[1][0], breadths,
                  label=lambda ef: f"efSearch={ef}" + (" (tuned)" if ef == tuning["ef_search"]
                                                        else ""),
                  build_s=build, keep=[index],
                  disk_bytes=file.stat().st_size + (work / "sharpclip.faiss").stat().st_size,
                  note=f"tuner chose efSearch {tuning['ef_search']} (recall {tuning['recall']:.3f}, "
                       f"lower bound {tuning['lower_bound']:.3f}, on {tuning['queries']} held-out "
                       f"vectors, target {args.target})")


def numpy_scan(x, file, work, args):
    def search(q, k, _):
        scores = x @ q
        top = np.argpartition(-scores, k)[:k]
        return top[np.argsort(-scores[top])]
    return Engine("numpy (x @ q, argpartition)", search, [None], label=lambda _: "scan",
                  disk_bytes=file.stat().st_size)


def faiss_flat(x, file, work, args):
    import faiss

    start = time.perf_counter()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(x))
    build = time.perf_counter() - start
    faiss.omp_set_num_threads(1)
    faiss.write_index(index, str(work / "flat.faiss"))
    return Engine("faiss IndexFlatIP", lambda q, k, _: index.search(q[None], k)[1][0], [None],
                  label=lambda _: "scan", build_s=build, keep=[index],
                  disk_bytes=(work / "flat.faiss").stat().st_size)


def hnswlib_index(x, file, work, args):
    import hnswlib

    index = hnswlib.Index(space="ip", dim=x.shape[1])
    start = time.perf_counter()
    index.init_index(max_elements=len(x), M=args.m, ef_construction=args.ef_construction)
    index.add_items(np.ascontiguousarray(x), np.arange(len(x)), num_threads=BUILD_THREADS)
    build = time.perf_counter() - start
    index.set_num_threads(1)
    index.save_index(str(work / "hnswlib.bin"))

    def search(q, k, ef):
        index.set_ef(max(ef, k))
        return index.knn_query(q, k=k)[0][0].astype(np.int64)
    return Engine("hnswlib", search, list(args.breadths), label=lambda ef: f"ef={ef}", build_s=build,
                  keep=[index], disk_bytes=(work / "hnswlib.bin").stat().st_size)


def usearch_maker(dtype):
    def make(x, file, work, args):
        from usearch.index import Index

        index = Index(ndim=x.shape[1], metric="ip", dtype=dtype, connectivity=args.m,
                      expansion_add=args.ef_construction)
        start = time.perf_counter()
        index.add(np.arange(len(x)), np.ascontiguousarray(x), threads=BUILD_THREADS)
        build = time.perf_counter() - start
        index.save(str(work / f"usearch-{dtype}.usearch"))

        def search(q, k, ef):
            index.expansion_search = max(ef, k)
            return np.asarray(index.search(q, k, threads=1).keys, dtype=np.int64)
        return Engine(f"usearch {dtype}", search, list(args.breadths), label=lambda ef: f"ef={ef}",
                      build_s=build, keep=[index],
                      disk_bytes=(work / f"usearch-{dtype}.usearch").stat().st_size)
    return make


def chromadb_index(x, file, work, args):
    import chromadb

    path = str(work / "chroma")
    client = chromadb.PersistentClient(path=path)
    hnsw = {"space": "ip", "max_neighbors": args.m, "ef_construction": args.ef_construction,
            "ef_search": 64}
    coll = client.create_collection("bench", configuration={"hnsw": hnsw},
                                    embedding_function=None)
    step = client.get_max_batch_size()
    start = time.perf_counter()
    for at in range(0, len(x), step):
        part = np.asarray(x[at:at + step])
        coll.add(ids=[str(i) for i in range(at, at + len(part))], embeddings=part)
    build = time.perf_counter() - start
    state = {"ef": 64, "client": client, "coll": coll}

    def search(q, k, ef):
        if ef != state["ef"]:  # a changed ef_search applies once the index is loaded again
            state["coll"].modify(configuration={"hnsw": {"ef_search": ef}})
            state["client"].clear_system_cache()
            state["client"] = chromadb.PersistentClient(path=path)
            state["coll"] = state["client"].get_collection("bench")
            state["ef"] = ef
        found = state["coll"].query(query_embeddings=q[None], n_results=k, include=[])
        return np.array([int(i) for i in found["ids"][0]], dtype=np.int64)
    return Engine("chromadb (HNSW)", search, list(args.breadths), label=lambda ef: f"ef_search={ef}",
                  build_s=build, keep=[state], disk_bytes=folder_bytes(work / "chroma"))


def _lance_table(x, work):
    import lancedb
    import pyarrow as pa

    db = lancedb.connect(str(work / "lance"))
    flat = pa.array(np.ascontiguousarray(x).reshape(-1))
    data = pa.table({"id": pa.array(np.arange(len(x), dtype=np.int64)),
                     "vector": pa.FixedSizeListArray.from_arrays(flat, x.shape[1])})
    return db, db.create_table("bench", data=data)


def lancedb_scan(x, file, work, args):
    start = time.perf_counter()
    db, table = _lance_table(x, work / "scan")
    build = time.perf_counter() - start

    def search(q, k, _):
        found = (table.search(q).distance_type("dot").limit(k).select(["id", "_distance"])
                 .to_arrow())
        return found["id"].to_numpy()
    return Engine("LanceDB (no index)", search, [None], label=lambda _: "scan", build_s=build,
                  keep=[db, table], disk_bytes=folder_bytes(work / "scan" / "lance"))


def lancedb_ivfpq(x, file, work, args):
    start = time.perf_counter()
    db, table = _lance_table(x, work / "ivfpq")
    table.create_index(metric="dot", index_type="IVF_PQ", num_sub_vectors=x.shape[1] // 16)
    build = time.perf_counter() - start
    settings = [(p, r) for r in (10, 30) for p in (10, 20, 40, 80)]

    def search(q, k, setting):
        nprobes, refine = setting
        found = (table.search(q).distance_type("dot").nprobes(nprobes).refine_factor(refine)
                 .limit(k).select(["id", "_distance"]).to_arrow())
        return found["id"].to_numpy()
    return Engine("LanceDB IVF-PQ + refine", search, settings,
                  label=lambda s: f"nprobes={s[0]} refine={s[1]}", build_s=build,
                  keep=[db, table], disk_bytes=folder_bytes(work / "ivfpq" / "lance"))


ENGINES = {
    "sharpclip-exact": (sharpclip_exact, None),
    "sharpclip-ann": (sharpclip_ann, None),
    "numpy": (numpy_scan, None),
    "faiss-flat": (faiss_flat, "faiss"),
    "hnswlib": (hnswlib_index, "hnswlib"),
    "usearch-f32": (usearch_maker("f32"), "usearch"),
    "usearch-f16": (usearch_maker("f16"), "usearch"),
    "usearch-i8": (usearch_maker("i8"), "usearch"),
    "chromadb": (chromadb_index, "chromadb"),
    "lancedb-scan": (lancedb_scan, "lancedb"),
    "lancedb-ivfpq": (lancedb_ivfpq, "lancedb"),
}


# -- the run ---------------------------------------------------------------------------------------


def measure(engine: Engine, queries: np.ndarray, truth: np.ndarray, k: int) -> list[dict]:
    """One row per setting: p50/p99 ms of single queries and recall@k."""
    rows = []
    for setting in engine.settings:
        engine.search(queries[0], k, setting)  # warm-up (and the setting applied)
        found, times = [], []
        for q in queries:
            start = time.perf_counter()
            ids = engine.search(q, k, setting)
            times.append(time.perf_counter() - start)
            found.append(np.pad(ids[:k], (0, k - len(ids[:k])), constant_values=-1))
        rows.append({"setting": engine.label(setting), "recall": recall_at_k(np.array(found), truth),
                     "p50": 1e3 * float(np.median(times)),
                     "p99": 1e3 * float(np.percentile(times, 99))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=250_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=SearchConfig.ef_construction)
    parser.add_argument("--breadths", type=int, nargs="+", default=list(BREADTHS),
                        help="the search breadths (efSearch / ef) every graph is swept over")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: /tmp)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with 2 or more, every engine is built first and kept, then timed in "
                        "turn this many times (the median of the rounds is reported), so that a "
                        "drift of the machine reaches all alike; all engines must fit in memory "
                        "together")
    parser.add_argument("--codec", choices=CODECS, default=SearchConfig.codec,
                        help="how sharpclip's graph holds the vectors (default: sharpclip's)")
    parser.add_argument("--sharpclip-graph", choices=("mapped", "in-memory"), default="mapped",
                        help="sharpclip's graph searched as a collection's reader opens it "
                        "(memory-mapped from the saved file, the default) or as built, in memory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sharpclip-peers-", dir=args.tmp))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> None:
    start = time.perf_counter()
    file = work / "vectors.f32"
    x = np.memmap(file, np.float32, "w+", shape=(args.n, args.dim))
    mixture(args.n, args.dim, 0, 5000, out=x)
    x.flush()
    x = np.memmap(file, np.float32, "r", shape=(args.n, args.dim))
    queries = mixture(args.queries, args.dim, 1, 5000)
    truth = exact_topk(x, queries, args.k)[1]
    print(f"{datetime.datetime.now():%Y-%m-%dT%H:%M} {platform.machine()}, {os.cpu_count()} "
          f"cores, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}; {args.n:,} x "
          f"{args.dim} mixture (5000 clusters), {args.queries} fresh queries, k={args.k}, "
          f"graphs M={args.m} efConstruction={args.ef_construction}; data made in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    print("\n| engine | setting | build s | p50 ms | p99 ms | recall@10 | RAM B/vector | "
          "disk B/vector |\n|---|---|---|---|---|---|---|---|", flush=True)
    summary, notes, kept = [], [], []
    in_rounds = args.rounds > 1

    def report(engine, rows, ram, disk):
        for row in rows:
            print(f"| {engine.name} | {row['setting']} | {engine.build_s:.0f} | {row['p50']:.2f} | "
                  f"{row['p99']:.2f} | {row['recall']:.3f} | {ram:,.0f} | {disk:,.0f} |", flush=True)
        good = [r for r in rows if r["recall"] >= args.target - 1e-9]
        best = min(good, key=lambda r: r["p50"]) if good else max(rows, key=lambda r: r["recall"])
        summary.append((engine.name, engine.build_s, best, ram, disk, bool(good)))
        if engine.note:
            notes.append(f"{engine.name}: {engine.note}")

    for name in args.engines:
        make, package = ENGINES[name]
        if package and importlib.util.find_spec(package) is None:
            notes.append(f"{name}: skipped ({package} is not installed: pip install "
                         "'sharpclip[bench]')")
            continue
        folder = work / name
        folder.mkdir()
        before = anon_bytes()
        engine = make(x, file, folder, args)
        if in_rounds:  # timed later, in turn with the others; its RAM includes one search's
            engine.search(queries[0], args.k, engine.settings[0])
        else:
            rows = measure(engine, queries, truth, args.k)
        ram = max(0, anon_bytes() - before) / args.n
        disk = engine.disk_bytes / args.n
        if in_rounds:
            kept.append((engine, ram, disk))
            continue
        report(engine, rows, ram, disk)
        del engine  # and with it the index: the next engine's RAM is its own
        shutil.rmtree(folder, ignore_errors=True)
    timed = {engine.name: [] for engine, _, _ in kept}
    for _ in range(args.rounds if in_rounds else 0):
        for engine, _, _ in kept:
            timed[engine.name].append(measure(engine, queries, truth, args.k))
    for engine, ram, disk in kept:  # per setting, the median of the rounds' p50 and p99
        rounds = timed[engine.name]
        report(engine, [{**first, "p50": float(np.median([r[i]["p50"] for r in rounds])),
                         "p99": float(np.median([r[i]["p99"] for r in rounds]))}
                        for i, first in enumerate(rounds[0])], ram, disk)
    print(f"\nFastest setting with recall@10 >= {args.target} per engine (else its best recall):\n")
    print("| engine | setting | p50 ms | p99 ms | recall@10 | build s | RAM B/vector | "
          "disk B/vector |\n|---|---|---|---|---|---|---|---|")
    for name, build_s, best, ram, disk, met in sorted(summary, key=lambda s: (not s[5],
                                                                            s[2]["p50"])):
        print(f"| {name} | {best['setting']}{'' if met else ' (target not reached)'} | "
              f"{best['p50']:.2f} | {best['p99']:.2f} | {best['recall']:.3f} | "
              f"{build_s:.0f} | {ram:,.0f} | {disk:,.0f} |")
    for note in notes:
        print(f"- {note}")
    print(f"\nload average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}; total "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
