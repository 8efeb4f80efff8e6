"""CPU seconds of one `sharpclip search "TEXT" -c COLL` process on the bundled model: the ONNX
text-tower copy (no torch import) vs the torch path (`--model bundled`), interleaved runs; and of
a query by a stored item (`--like PATH`, plain and `--condition colour` with its cache warm),
which needs no model at all.

    python benchmarks/cli_search.py [--runs 7] [--size 200] [--work /tmp/sharpclip-cli-bench]

Per run: user + system CPU time of the child process (``resource.getrusage(RUSAGE_CHILDREN)``
before/after); prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
from pathlib import Path


def _cpu_seconds(command: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    """Build a bundled-model collection, then time both paths alternately."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--size", type=int, default=200, help="images in the collection")
    parser.add_argument("--work", default="/tmp/sharpclip-cli-bench")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    cli = [sys.executable, "-m", "sharpclip.cli"]
    subprocess.run([*cli, "shapes", "--out", str(work / "img"), "--size", str(args.size)],
                   check=True, stdout=subprocess.DEVNULL)
    coll = work / "c.sc"
    subprocess.run([*cli, "index", str(work / "img"), "-c", str(coll)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    query = [*cli, "search", "a red circle", "-c", str(coll), "-k", "10"]
    _cpu_seconds(query)  # the first plain search writes the ONNX copy
    if not any((coll / "cache").glob("text-*.onnx")):
        raise SystemExit("no ONNX copy was written; the fast path cannot be measured")
    like = [*cli, "search", "--like", str(min((work / "img").rglob("*.png"))), "-c",
            str(coll), "-k", "10"]
    _cpu_seconds([*like, "--condition", "colour"])  # the first one computes the condition cache
    runs: dict[str, list[float]] = {"onnx": [], "torch": [], "like": [], "like_condition": []}
    for _ in range(args.runs):
        runs["onnx"].append(_cpu_seconds(query))
        runs["torch"].append(_cpu_seconds([*query, "--model", "bundled"]))
        runs["like"].append(_cpu_seconds(like))
        runs["like_condition"].append(_cpu_seconds([*like, "--condition", "colour"]))
    medians = {name: statistics.median(values) for name, values in runs.items()}
    print(json.dumps({"runs": {k: [round(v, 3) for v in vs] for k, vs in runs.items()},
                      "median_cpu_s": {k: round(v, 3) for k, v in medians.items()},
                      "onnx_over_torch": round(medians["onnx"] / medians["torch"], 3)}, indent=2))


if __name__ == "__main__":
    main()
