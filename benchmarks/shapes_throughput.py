"""Shapes generator throughput (images/s, in memory, one process) at several image sizes.

Run: .venv/bin/python benchmarks/shapes_throughput.py
"""

from __future__ import annotations

import platform
import time

from sharpclip.data.shapes import ShapesConfig, generate


def main() -> None:
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print("| kind | px | images | images/s |")
    print("|---|---|---|---|")
    for kind in ("single", "pair"):
        for px in (64, 96):
            n = 2000
            start = time.perf_counter()
            for _ in generate(ShapesConfig(kind=kind, size=n, image_size=px)):
                pass
            rate = n / (time.perf_counter() - start)
            print(f"| {kind} | {px} | {n} | {rate:.0f} |")


if __name__ == "__main__":
    main()
