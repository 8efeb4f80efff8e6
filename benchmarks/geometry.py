"""What geometry-aware retrieval costs, side by side in one run (METHODS.md §2).

Two-object Shapes scenes (varied layout) are written as PNG files and indexed twice into fresh
collections: plain, and with ``--regions`` (the default grid). Then, on the same collection and
queries (two-part captions), the latency of ``Collection.search`` per query:

- plain text query (the reference);
- ``rerank="parts"`` at K = 100 with the regions stored at index time;
- ``rerank="parts"`` on the plain collection, regions computed on demand for the shortlist (the
  first query of each candidate set, i.e. nothing cached yet: a new gallery per query);
- ``steer=True``.

Goals: parts (stored) / plain <= 3, steer / plain <= 3. Also index time with regions / without,
and bytes per image on disk.

Run: .venv/bin/python benchmarks/geometry.py [--n 1000] [--queries 30]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import median_ms

from sharpclip.collection import Collection
from sharpclip.data import shapes
from sharpclip.data.regions import RegionGrid
from sharpclip.ingest import IndexConfig
from sharpclip.methods.parts import PartsConfig
from sharpclip.models import load_model
from sharpclip.query.gallery import CollectionGallery
from sharpclip.query.pipeline import QueryPlan, TextEncoder, run_query


def _write(folder: Path, n: int, seed: int) -> list[str]:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    captions = []
    for i in range(n):
        spec = shapes.random_spec(rng, "pair")
        shapes.render(spec, 64, rng, "varied").save(folder / f"{i:05d}.png")
        captions.append(shapes.captions(spec, rng, n=1)[0])
    return captions


def _index_seconds(folder: Path, coll_path: Path, model, regions) -> float:
    start = time.perf_counter()
    with Collection.create(coll_path, model) as coll:
        coll.add([folder], config=IndexConfig(workers=1, progress=False, regions=regions))
    return time.perf_counter() - start


def _bytes(coll_path: Path) -> int:
    return sum(f.stat().st_size for f in coll_path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="scenes")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = load_model("bundled")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        captions = _write(tmp / "scenes", args.n, args.seed)
        plain_s = _index_seconds(tmp / "scenes", tmp / "plain.sc", model, None)
        regions_s = _index_seconds(tmp / "scenes", tmp / "regions.sc", model, RegionGrid())
        queries = captions[:args.queries]
        timings = {}
        with Collection.open(tmp / "regions.sc", model) as coll:
            def each(**options):
                return lambda: [coll.search(text=q, k=10, **options) for q in queries]

            timings["plain"] = median_ms(each(), 5) / len(queries)
            timings["parts (stored regions)"] = median_ms(each(rerank="parts"), 5) / len(queries)
            timings["steer"] = median_ms(each(steer=True), 5) / len(queries)
            timings["parts+steer"] = median_ms(each(rerank="parts", steer=True), 5) / len(queries)
        with Collection.open(tmp / "plain.sc", model) as coll:
            encode = TextEncoder(model)

            def on_demand():
                for q in queries:  # a fresh gallery per query: no region is cached yet
                    run_query(QueryPlan(text=q, k=10, rerank=PartsConfig()),
                              CollectionGallery(coll), encode)

            timings["parts (regions on demand)"] = median_ms(on_demand, 1) / len(queries)
        sizes = {"plain": _bytes(tmp / "plain.sc") / args.n,
                 "regions": _bytes(tmp / "regions.sc") / args.n}
    print(f"# geometry benchmark, {datetime.date.today()}, {platform.machine()}, "
          f"{platform.processor() or 'cpu'}; {args.n} scenes, {len(queries)} two-part queries, "
          f"grid {RegionGrid().spec} ({len(RegionGrid())} regions/image), K = 100")
    print("\n| query | ms per query | / plain |\n|---|---|---|")
    for name, ms in timings.items():
        print(f"| {name} | {ms:.2f} | {ms / timings['plain']:.2f} |")
    print(f"\nindex: plain {plain_s:.1f} s, with regions {regions_s:.1f} s "
          f"(ratio {regions_s / plain_s:.2f}); on disk {sizes['plain']:.0f} B/image plain, "
          f"{sizes['regions']:.0f} B/image with regions")


if __name__ == "__main__":
    main()
