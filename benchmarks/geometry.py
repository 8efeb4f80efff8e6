"""What geometry-aware retrieval costs, side by side in one run (METHODS.md §2).

Two-object Shapes scenes (varied layout) are written as PNG files and indexed twice into fresh
collections: plain, and with ``--regions`` (the default grid). Then, on the same collection and
queries (two-part captions), the latency of ``Collection.search`` per query:

- plain text query (the reference);
- ``rerank="parts"`` at K = 100 and at the default K = 300 with the regions stored at index time;
- ``rerank="parts"`` on the plain collection, regions computed on demand for the shortlist (the
  first query of each candidate set, i.e. nothing cached yet: a new gallery per query);
- ``steer=True``.

Goals: parts (stored) / plain <= 3, steer / plain <= 3. Also index time with regions / without,
and bytes per image on disk.

Each mode runs once per round over all queries, modes interleaved; the median round is reported.

Run: .venv/bin/python benchmarks/geometry.py [--n 1000] [--queries 30] [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

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


def _once_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - start)


def _bytes(coll_path: Path) -> int:
    return sum(f.stat().st_size for f in coll_path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="scenes")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = load_model("bundled")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        captions = _write(tmp / "scenes", args.n, args.seed)
        plain_s = _index_seconds(tmp / "scenes", tmp / "plain.sc", model, None)
        regions_s = _index_seconds(tmp / "scenes", tmp / "regions.sc", model, RegionGrid())
        queries = captions[:args.queries]
        with Collection.open(tmp / "regions.sc", model) as stored, \
                Collection.open(tmp / "plain.sc", model) as bare:
            def each(coll, **options):
                return lambda: [coll.search(text=q, k=10, **options) for q in queries]

            def on_demand():
                for q in queries:  # a fresh gallery per query: no region is cached yet
                    run_query(QueryPlan(text=q, k=10, rerank=PartsConfig(shortlist=100)),
                              CollectionGallery(bare), TextEncoder(model))

            modes = {"plain": each(stored),
                     "parts K=100 (stored regions)": each(stored, rerank="parts", shortlist=100),
                     "parts K=300, the default (stored regions)": each(stored, rerank="parts"),
                     "steer": each(stored, steer=True),
                     "parts+steer": each(stored, rerank="parts", steer=True),
                     "parts K=100 (regions on demand)": on_demand}
            for fn in modes.values():
                fn()  # warm-up: model, vocabulary, memory maps
            rounds: dict[str, list[float]] = {name: [] for name in modes}
            for _ in range(args.rounds):  # interleaved, so that load on the machine hits all alike
                for name, fn in modes.items():
                    rounds[name].append(_once_ms(fn))
            timings = {name: float(np.median(t)) / len(queries) for name, t in rounds.items()}
        sizes = {"plain": _bytes(tmp / "plain.sc") / args.n,
                 "regions": _bytes(tmp / "regions.sc") / args.n}
    print(f"# geometry benchmark, {datetime.date.today()}, {platform.machine()}, "
          f"{platform.processor() or 'cpu'}; {args.n} scenes, {len(queries)} two-part queries, "
          f"grid {RegionGrid().spec} ({len(RegionGrid())} regions/image)")
    print("\n| query | ms per query | / plain |\n|---|---|---|")
    for name, ms in timings.items():
        print(f"| {name} | {ms:.2f} | {ms / timings['plain']:.2f} |")
    print(f"\nindex: plain {plain_s:.1f} s, with regions {regions_s:.1f} s "
          f"(ratio {regions_s / plain_s:.2f}); on disk {sizes['plain']:.0f} B/image plain, "
          f"{sizes['regions']:.0f} B/image with regions")


if __name__ == "__main__":
    main()
