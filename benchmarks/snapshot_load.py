"""What a fresh process pays for its first snapshot of each vector set: read from the catalog
(no cache, as the first reader of a generation does) against loaded from the set's cache in
``COLL/cache/`` (every later process of the same generation), each in a fresh process, the two
alternating.

Builds (or reuses) a synthetic collection of ``--n`` items with one image vector and ``--parts``
region vectors each (random unit vectors; no model runs).

Run: .venv/bin/python benchmarks/snapshot_load.py [--n 100000] [--parts 5] [--rounds 3]
     [--collection DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from sharpclip.collection import Collection
from sharpclip.store.collection import IMAGE_SET, REGIONS_SET, ItemUpdate

CHILD = r"""
import json, sys, time
from sharpclip.collection import Collection
coll = Collection.open(sys.argv[1])
cpu = time.process_time()
snap = coll.snapshot(sys.argv[2])
print(json.dumps({"cpu_s": time.process_time() - cpu, "rows": len(snap.live_rows)}))
"""
CACHE = {IMAGE_SET: "live-items", REGIONS_SET: f"live-{REGIONS_SET}"}


def build(path: Path, n: int, parts: int) -> None:
    coll = Collection.create(path, "bundled")
    rng, dim, step = np.random.default_rng(0), coll.info.dim, 10_000
    with coll.writing():
        coll.add_vector_set(REGIONS_SET, dim, {"grid": "synthetic"})
        for start in range(0, n, step):
            m = min(step, n - start)
            coll.commit([ItemUpdate(f"/synthetic/{start + i}.jpg", f"h{start + i}", 1, 1,
                                    vector_index=i, set_rows=((REGIONS_SET, parts * i, parts),))
                         for i in range(m)],
                        {IMAGE_SET: rng.standard_normal((m, dim)).astype(np.float32),
                         REGIONS_SET: rng.standard_normal((m * parts, dim)).astype(np.float32)})
    coll.close()


def first_snapshot(path: Path, name: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), name], check=False,
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the snapshot of {name} failed:\n{out.stderr.strip()}")
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--parts", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--collection", type=Path, default=None,
                        help="keep the collection here and reuse it next time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.collection or Path(tmp) / "c.sc"
        if not (path / "collection.sqlite").exists():
            build(path, args.n, args.parts)
        print(f"{datetime.date.today()} {platform.machine()}, {args.n} items x {args.parts} "
              f"regions, fresh processes, median of {args.rounds} (CPU s), load average "
              f"{os.getloadavg()[0]:.1f}")
        print("| vector set | live rows | from the catalog | from the cache | ratio |\n"
              "|---|---|---|---|---|")
        for name, cache in CACHE.items():
            catalog, cached = [], []
            for _ in range(args.rounds):
                for suffix in (".npy", ".json"):
                    (path / "cache" / f"{cache}{suffix}").unlink(missing_ok=True)
                catalog.append(first_snapshot(path, name))  # reads the catalog, writes the cache
                cached.append(first_snapshot(path, name))
            slow = float(np.median([c["cpu_s"] for c in catalog]))
            fast = float(np.median([c["cpu_s"] for c in cached]))
            print(f"| {name} | {catalog[0]['rows']} | {slow:.3f} | {fast:.3f} | "
                  f"{fast / slow:.2f} |")


if __name__ == "__main__":
    main()
