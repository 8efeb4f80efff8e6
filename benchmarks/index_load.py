"""What opening a collection's ANN index costs a reader: the graph read into memory against the
graph memory-mapped from its file (what readers do), each in a fresh process, side by side.

Per mode and process: the load's CPU and wall time, the anonymous memory it added (``RssAnon``:
the heap, which memory-mapped files are not part of), the first query (which pages in what it
touches) and the median of the next ones (single thread, re-ranked exactly as a collection
search does). The modes alternate, ``--rounds`` times each.

Run: .venv/bin/python benchmarks/index_load.py --collection DIR [--rounds 3] [--queries 200]
     [--ef 32 64 ...]
     (DIR: any collection with an ANN index, e.g. one kept by
     ``collection_search.py --collection DIR``)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
from sharpclip.collection import Collection
from sharpclip.store.local_backend import index_file_for
from sharpclip.store.search_index import AnnIndex

def anon():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) * 1024 for l in status if l.startswith("RssAnon:"))

path, mmap, n_queries = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
breadths = [int(b) for b in sys.argv[4].split(",")] if sys.argv[4] else [None]
threadpool_limits(1)
coll = Collection.open(path)
snap, vectors = coll.read_vectors()
file = index_file_for(snap.file)
rng = np.random.default_rng(0)
queries = np.asarray(vectors[rng.choice(len(vectors), n_queries + 1, replace=False)])
before, cpu, wall = anon(), time.process_time(), time.perf_counter()
index = AnnIndex.load(file, mmap=mmap)
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
added = anon() - before
index.config = type(index.config)(**{**index.config.__dict__, "threads": 1})
t = time.perf_counter(); index.search(queries[:1], 10, vectors=vectors, ef_search=breadths[0])
first = time.perf_counter() - t
p50 = {}
for ef in breadths:
    times = []
    for q in queries[1:]:
        t = time.perf_counter(); index.search(q, 10, vectors=vectors, ef_search=ef)
        times.append(time.perf_counter() - t)
    p50[str(ef or index.ef_search_)] = float(np.median(times)) * 1e3
print(json.dumps({"cpu_s": cpu, "wall_s": wall, "anon_bytes": added, "first_ms": first * 1e3,
                  "p50_ms": p50, "n": len(index.rows_),
                  "file_bytes": file.stat().st_size, "after_queries_anon": anon() - before}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--collection", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", type=int, nargs="*", default=[],
                        help="search breadths to time (default: the index's tuned one)")
    args = parser.parse_args()
    if not (args.collection / "index").is_dir():
        raise SystemExit(f"{args.collection} has no ANN index: give a collection above the ANN "
                         "threshold (e.g. one kept by collection_search.py --collection DIR)")
    runs: dict[str, list[dict]] = {"read into memory": [], "memory-mapped": []}
    for _ in range(args.rounds):
        for name, flag in (("read into memory", "0"), ("memory-mapped", "1")):
            out = subprocess.run([sys.executable, "-c", CHILD, str(args.collection), flag,
                                  str(args.queries), ",".join(map(str, args.ef))],
                                 check=False, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"the {name} run failed:\n{out.stderr.strip()}")
            runs[name].append(json.loads(out.stdout.splitlines()[-1]))
    first = runs["read into memory"][0]
    print(f"{datetime.date.today()} {platform.machine()}, {first['n']} vectors, index file "
          f"{first['file_bytes'] / 1e6:.0f} MB, {args.rounds} fresh processes per mode "
          f"(alternating), load average {os.getloadavg()[0]:.1f}")
    breadths = list(first["p50_ms"])
    print("| graph | load CPU s | load wall s | heap added B/vector | heap after queries "
          "B/vector | first query ms | " + " | ".join(f"p50 ms, efSearch {b}" for b in breadths)
          + " |\n|---|---|---|---|---|---|" + "---|" * len(breadths))
    for name, got in runs.items():
        def med(key, got=got):
            return float(np.median([g[key] for g in got]))
        p50 = [float(np.median([g["p50_ms"][b] for g in got])) for b in breadths]
        print(f"| {name} | {med('cpu_s'):.3f} | {med('wall_s'):.3f} | "
              f"{med('anon_bytes') / first['n']:.0f} | {med('after_queries_anon') / first['n']:.0f}"
              f" | {med('first_ms'):.2f} | " + " | ".join(f"{v:.3f}" for v in p50) + " |")


if __name__ == "__main__":
    main()
