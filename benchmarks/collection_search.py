"""Search through a collection, against the index or scan underneath it, in one run.

A collection of ``--n`` synthetic unit vectors (the bundled model's width; search cost does not
depend on values) is committed directly, then each query kind is timed through
``Collection.search`` (SQLite snapshot, the lag check against the saved index, exact re-scoring of
the ANN hits, the checksum of each hit's batch, row -> path lookup: everything but encoding, since
``--like`` reuses a stored vector) beside the core call it wraps on the same data:
``exact_topk`` for exact search, ``AnnIndex.search`` for the HNSW index (with the exact re-ranking
of its candidates from the vector file, part of the method), the projected scan for a
conditional query (over the transposed projection the collection keeps in memory), each called
as the collection calls it (a live mask only when rows were removed). The ratio (pipeline /
core) has the goal <= 1.2. A last line times the conditional query's work around its scan
alone (``conditional_overhead``). ``--removed F`` removes that fraction of the items first (so masks
and the index's deletion bitmap are exercised; a collection kept with ``--collection`` keeps
them, and the header prints the share actually removed).

Run: .venv/bin/python benchmarks/collection_search.py [--n 250000] [--repeats 50] [--removed 0.01]
     [--clock wall|cpu] [--collection DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from synthetic import fill
from timing import interleaved_median_ms

from sharpclip.collection import Collection
from sharpclip.methods.conditional import project
from sharpclip.query.condition import condition_gallery
from sharpclip.store.search_index import exact_topk


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=250_000)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--removed", type=float, default=0.0)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this thread's CPU time (for a busy machine; BLAS is "
                        "then held to one thread, so that the thread's time is all the work)")
    parser.add_argument("--collection", type=Path, default=None,
                        help="keep the collection here and reuse it on the next run (same --n)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.collection or Path(tmp) / "c.sc"
        if (path / "collection.sqlite").exists():
            coll = Collection.open(path)
        else:
            coll = Collection.create(path, "bundled")
            fill(coll, args.n)
        like = "/synthetic/5.jpg"
        query = np.array(coll.vectors()[coll.item(like).row])[None, :]
        with coll.writing():  # what `index` does at its end: build the HNSW index if n is large
            coll.sync_index(progress=True)
            gone = np.random.default_rng(1).choice(args.n, int(args.removed * args.n), False)
            coll.remove([f"/synthetic/{i}.jpg" for i in gone if i != 5])
        snap, vectors = coll.read_vectors()
        mask = None if snap.all_live() else snap.live_mask()
        removed = 1 - len(snap.live_rows) / snap.rows  # a kept --collection keeps earlier removals
        ann = coll.backend.reader_index(snap, vectors) if coll.uses_ann(args.n, None) else None
        index = ann[0] if ann is not None else None
        (W,), columns = condition_gallery(coll, "colour")  # the arrays the collection scans
        rows = [
            ("exact", lambda: coll.search(like=like, k=args.k, exact=True),
             lambda: exact_topk(vectors, query, args.k, valid=mask)),
            ("conditional (colour, cache warm)",
             lambda: coll.search(like=like, k=args.k, condition="colour"),
             lambda: exact_topk(columns, project(query, W), args.k, valid=mask,
                                transposed=True)),
        ]
        if index is not None:
            rows.insert(1, (f"HNSW ({index.config.codec}, efSearch {index.ef_search_}, re-ranked)",
                            lambda: coll.search(like=like, k=args.k),
                            lambda: index.search(query, args.k, vectors=vectors)))
        clock = time.thread_time if args.clock == "cpu" else time.perf_counter
        print(f"{datetime.date.today()} {platform.machine()}, {args.n} items x {coll.info.dim} "
              f"(synthetic), {removed:.0%} removed, k={args.k}, median of {args.repeats} "
              f"({args.clock} time), "
              f"load average {os.getloadavg()[0]:.1f}")
        print("| query | Collection.search ms | core ms | ratio (goal <= 1.2) |\n|---|---|---|---|")
        with contextlib.ExitStack() as limits:
            if args.clock == "cpu":
                from threadpoolctl import threadpool_limits

                limits.enter_context(threadpool_limits(1))
            for name, pipeline, core in rows:
                p, c = interleaved_median_ms([pipeline, core], args.repeats, clock)
                print(f"| {name} | {p:.2f} | {c:.2f} | {p / c:.2f} |", flush=True)
            conditional_overhead(coll, like, args.k, rows[-1][2], args.repeats, clock)
        coll.close()


def conditional_overhead(coll, like, k, core, repeats, clock) -> None:
    """The conditional query's work around its scan alone: the query timed back to back with the
    scan's answer handed back at no cost, so its own cache misses after a real scan (which reads
    megabytes) are left out too."""
    from sharpclip.query import condition

    answer = core()
    scan = condition.exact_topk
    condition.exact_topk = lambda *a, **kw: answer
    try:
        around, = interleaved_median_ms(
            [lambda: coll.search(like=like, k=k, condition="colour")], repeats, clock)
    finally:
        condition.exact_topk = scan
    print(f"conditional, the work around the scan alone (its answer given): {around * 1e3:.0f} us")


if __name__ == "__main__":
    main()
