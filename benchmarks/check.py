"""`sharpclip check` and `compact` on a large collection: is check cheap enough after every crash?

A collection of ``--n`` synthetic unit vectors of ``--dim`` floats (512: a ViT-B/32-sized model)
is committed directly in batches of ``--batch`` rows (the default ingest batch, so as many
checksum batches as a real index run makes). Then, in one run: ``check`` (SQLite integrity_check,
file lengths, every batch's SHA-256, item rows, caches, index), the raw cost of reading and
hashing the vector file beside it (the floor any full verification pays), and ``compact`` after
``--removed`` of the items were removed.

Run: .venv/bin/python benchmarks/check.py [--n 100000] [--dim 512]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from synthetic import fill

from sharpclip.collection import Collection
from sharpclip.store.compact import compact
from sharpclip.store.integrity import check_collection


def synthetic_model(dim: int) -> SimpleNamespace:
    """What Collection.create records about a model, without loading one."""
    preprocess = SimpleNamespace(crop_hw=(224, 224), mean=(0.5,) * 3, std=(0.5,) * 3)
    return SimpleNamespace(name="synthetic", fingerprint=f"synthetic-{dim}", model_type="clip",
                           dim=dim, preprocess=preprocess)


def hash_file(file: Path) -> float:
    start = time.perf_counter()
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--removed", type=float, default=0.2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.sc"
        start = time.perf_counter()
        with Collection.create(path, synthetic_model(args.dim)) as coll:
            fill(coll, args.n, args.batch)
        fill_s = time.perf_counter() - start
        file = path / "vectors" / "image.f32"
        size_mb = file.stat().st_size / 2**20
        report = check_collection(path)
        assert report.clean, report.problems
        hashing = hash_file(file)
        with Collection.open(path) as coll:
            with coll.writing():
                coll.remove([f"/synthetic/{i}.jpg" for i in range(int(args.n * args.removed))])
            start = time.perf_counter()
            with coll.writing():
                compacted = compact(coll)
            compact_s = time.perf_counter() - start
        after = check_collection(path)
        assert after.clean, after.problems
        print(f"{datetime.date.today()} {platform.machine()}, {os.cpu_count()} cores; "
              f"{args.n} items x {args.dim} floats ({size_mb:.0f} MiB of vectors), "
              f"{report.stats['batches']} checksum batches of {args.batch}; filled in {fill_s:.0f}s")
        print("| step | seconds | note |\n|---|---|---|")
        print(f"| check (all of it) | {report.seconds:.2f} | "
              f"{report.stats['bytes_hashed'] / 2**20:.0f} MiB hashed |")
        print(f"| read + SHA-256 of the vector file alone | {hashing:.2f} | "
              f"check / this = {report.seconds / hashing:.2f} |")
        print(f"| compact ({args.removed:.0%} removed) | {compact_s:.2f} | "
              f"{compacted.rows_before} -> {compacted.rows_after} rows |")
        print(f"| check after compact | {after.seconds:.2f} | "
              f"{after.stats['batches']} batches |")


if __name__ == "__main__":
    main()
