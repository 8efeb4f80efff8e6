"""The least work a conditional "more like this" query can do around its scan, written inline.

``collection_search.py`` measures ``Collection.search(like=..., condition=...)`` against its kernel
(the query's projection and the projected scan). This script runs, in one loop, only the steps
any such query must take, each in its cheapest direct form, with none of the pipeline's layers:
the generation check in a read transaction, the stored path's row, the vector file's size check
and the query row's checksum verdict, the condition's cached gallery, the projection, the scan,
each hit's checksum verdict, rows -> ids -> paths, ten ``Hit``s and the ``SearchResult``. Its
ratio (all of it / projection + scan) is a floor for what trimming ``Collection.search`` can
reach in Python on this machine; the steps after a real scan run with the caches it evicted.

Run: .venv/bin/python benchmarks/conditional_floor.py --collection DIR [--repeats 2000]
     (DIR: a collection kept by ``collection_search.py --collection DIR``)
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from sharpclip.collection import Collection
from sharpclip.methods.conditional import project
from sharpclip.query.condition import condition_gallery
from sharpclip.search import Hit, SearchResult
from sharpclip.store.collection import CollectionError
from sharpclip.store.search_index import exact_topk


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--collection", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    threadpool_limits(1)
    try:
        coll = Collection.open(args.collection)
    except CollectionError as error:
        raise SystemExit(str(error)) from None
    like, k = "/synthetic/5.jpg", args.k
    snap = coll.snapshot()
    mask = None if snap.all_live() else snap.live_mask()
    vectors, batches, items = coll.vectors(), coll._batches(snap), snap.items
    if items.find(like) is None:
        raise SystemExit(f"{args.collection} has no item {like}: give a collection kept by "
                         "collection_search.py --collection DIR")
    condition_gallery(coll, "colour")
    clock = time.perf_counter

    def check_intact(row: int) -> None:  # intact_rows' per-row verdict, without its lookups
        if batches.verdict(bisect.bisect_right(batches.first, row) - 1, vectors) != 1:
            raise SystemExit(f"row {row} fails its checksum: run `sharpclip check --repair`")

    def query() -> tuple[float, float, float, float]:
        t0 = clock()
        with coll.reading():  # the read transaction, the snapshot pinned for the query
            if coll.snapshot().generation != snap.generation:  # the one generation check
                raise SystemExit("the collection changed during the run")
            row = int(items.rows[items.find(like)])
            if snap.file.stat().st_size < snap.rows * snap.dim * 4:
                raise SystemExit(f"{snap.file} is shorter than its committed rows")
            check_intact(row)
            q = np.array(vectors[row])
            Ws, columns = condition_gallery(coll, "colour")
            t1 = clock()
            projected = project(q[None], Ws[0])
            t2 = clock()
            scores, rows = exact_topk(columns, projected, k, valid=mask, transposed=True)
            t3 = clock()
            scores, rows = scores[0], rows[0]
            for r in rows.tolist():
                check_intact(r)
            ids = items.ids[np.searchsorted(items.rows, rows)]
            paths = items.paths_by_id(ids)
            hits = [Hit(paths[i], s, i, {"condition": round(s, 6)})
                    for i, s in zip(ids.tolist(), scores.tolist())]
        SearchResult(hits, {"like": like, "condition": "colour", "k": k}, {})
        t4 = clock()
        return t1 - t0, t2 - t1, t3 - t2, t4 - t3

    times = np.array([query() for _ in range(args.repeats)])[args.repeats // 10:]
    before, proj, scan, after = np.median(times, axis=0) * 1e6
    kernel = proj + scan
    print(f"{datetime.date.today()} {platform.machine()}, {len(snap.live_rows)} live items, k={k}, "
          f"median of {len(times)} (wall, one thread), load average {os.getloadavg()[0]:.1f}")
    print(f"before the kernel {before:.0f} us, kernel {kernel:.0f} us (projection {proj:.0f}), "
          f"after {after:.0f} us: floor ratio {(before + kernel + after) / kernel:.2f}, "
          f"budget at 1.2 {0.2 * kernel:.0f} us against {before + after:.0f} us")
    coll.close()


if __name__ == "__main__":
    main()
