"""Timing helper shared by the benchmark scripts (imported from the script's own folder)."""

from __future__ import annotations

import time

import numpy as np


def median_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def interleaved_median_ms(fns, repeats: int) -> list[float]:
    """Median wall time (ms) of each of ``fns``, called in turn ``repeats`` times after one
    warm-up each, so that a change in the machine's load affects all of them alike."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [1e3 * float(np.median(t)) for t in times]
