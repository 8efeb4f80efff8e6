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


def interleaved_median_ms(fns, repeats: int, clock=time.perf_counter) -> list[float]:
    """Median time (ms) of each of ``fns``, called in turn ``repeats`` times after one warm-up
    each, so that a change in the machine's load affects all of them alike. ``clock`` is wall
    time by default; ``time.thread_time`` counts only this thread's CPU time (what a call costs
    when other jobs preempt it: a single-threaded call's wall time minus the time it waited)."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = clock()
            fn()
            spent.append(clock() - start)
    return [1e3 * float(np.median(t)) for t in times]
