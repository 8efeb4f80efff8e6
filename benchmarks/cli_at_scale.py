"""CPU seconds and peak memory of one `sharpclip search --like PATH -c COLL` process on a large
collection (plain, and `--condition colour`), optionally side by side with another checkout of
sharpclip (its ``src`` folder put first on ``PYTHONPATH``), runs interleaved.

    python benchmarks/collection_search.py --n 1000000 --collection /tmp/c1m   # makes one
    python benchmarks/cli_at_scale.py --collection /tmp/c1m [--runs 5] [--compare OLD/src]
        [--compare-collection COPY]   # COPY: what OLD searches, when it cannot read /tmp/c1m

``--like`` defaults to ``/synthetic/5.jpg``, an item of the collections that
``collection_search.py`` makes. One warm-up process per command first (it fills what a
collection caches per generation). Per run: user + system CPU of the child process and its
peak resident memory (``os.wait4``'s resource usage of that child).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def _run(command: list[str], pythonpath: str | None) -> tuple[float, float]:
    """(user + system CPU-s, peak RSS MiB) of one child process."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{' '.join(command)} failed (exit {child.returncode})")
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # ru_maxrss: KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", required=True)
    parser.add_argument("--like", default="/synthetic/5.jpg")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compare", default=None,
                        help="another checkout's src folder, timed in turn with this one")
    parser.add_argument("--compare-collection", default=None,
                        help="the collection the other checkout searches (default: the same); "
                        "a copy, when its files are of a format the other version cannot read")
    args = parser.parse_args()

    def commands_for(collection: str) -> dict[str, list[str]]:
        like = [sys.executable, "-m", "sharpclip.cli", "search", "--like", args.like, "-c",
                collection, "-k", "10"]
        return {"like": like, "like_condition": [*like, "--condition", "colour"]}

    checkouts = {"this": (None, commands_for(args.collection))}
    if args.compare:
        checkouts["compare"] = (args.compare,
                                commands_for(args.compare_collection or args.collection))
    cpu: dict[str, list[float]] = {}
    peak: dict[str, list[float]] = {}
    for path, commands in checkouts.values():
        for command in commands.values():
            _run(command, path)  # warm-up
    for _ in range(args.runs):
        for checkout, (path, commands) in checkouts.items():
            for name, command in commands.items():
                seconds, rss = _run(command, path)
                cpu.setdefault(f"{checkout}:{name}", []).append(seconds)
                peak.setdefault(f"{checkout}:{name}", []).append(rss)
    print(json.dumps({
        "collection": args.collection, "compare": args.compare,
        "compare_collection": args.compare_collection,
        "runs": {k: [round(v, 3) for v in vs] for k, vs in cpu.items()},
        "median_cpu_s": {k: round(statistics.median(vs), 3) for k, vs in cpu.items()},
        "median_peak_rss_mib": {k: round(statistics.median(vs)) for k, vs in peak.items()},
        "load_average": round(os.getloadavg()[0], 1),
    }, indent=2))


if __name__ == "__main__":
    main()
