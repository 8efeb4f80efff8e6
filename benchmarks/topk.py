"""Exact top-k selection, side by side in one run: sharpclip's ``exact_topk`` against numpy's
plain recipe (``q @ x.T``, ``np.argpartition``, a sort of the k) and against the same recipe
with ``np.partition`` of the whole score row (sharpclip's selection until 2026-12-03), on the
same data, one thread, CPU time of the calling thread.

Shapes: the conditional gallery of the bundled model (k = 4 directions) and the bundled model's
width (128) at 250k rows, 512 (ViT-B) at 250k; one query and a batch of 8. ``exact_topk`` is
timed on the (N, d) rows and, for the thin shapes, on the (d, N) transpose a collection keeps
for a condition. All of them return the same rows (checked before timing).

Run: .venv/bin/python benchmarks/topk.py [--n 250000] [--repeats 30]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from functools import partial

import numpy as np
from threadpoolctl import threadpool_limits
from timing import interleaved_median_ms

from sharpclip.store.search_index import exact_topk


def numpy_argpartition(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """The recipe a user writes: scores, argpartition, then sort the k (ties: any order)."""
    scores = q @ x.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
    return np.take_along_axis(top, order, 1)


def whole_row_partition(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """The k-th score by ``np.partition`` of the whole row, then the rows reaching it."""
    scores = q @ x.T
    kth = np.partition(scores, scores.shape[1] - k, axis=1)[:, scores.shape[1] - k]
    out = []
    for row, t in zip(scores, kth):
        rows = np.flatnonzero(row >= t)
        out.append(rows[np.lexsort((rows, -row[rows]))[:k]])
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=250_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{datetime.date.today()} {platform.machine()}, {os.cpu_count()} cores, one thread, "
          f"k={args.k}, median of {args.repeats} (CPU time), load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| N x d | queries | numpy argpartition ms | whole-row partition ms | exact_topk ms "
          "| exact_topk (d, N) ms | exact_topk / numpy |\n|---|---|---|---|---|---|---|")
    with threadpool_limits(1):
        for dim in (4, 128, 512):
            x = rng.standard_normal((args.n, dim)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            columns = np.ascontiguousarray(x.T) if dim <= 128 else None
            for n_queries in (1, 8):
                q = x[:n_queries] + np.float32(0.1)
                truth = exact_topk(x, q, args.k)[1]
                assert (truth == whole_row_partition(x, q, args.k)).all()
                assert (np.sort(truth, 1) == np.sort(numpy_argpartition(x, q, args.k), 1)).all()
                fns = [partial(numpy_argpartition, x, q, args.k),
                       partial(whole_row_partition, x, q, args.k), partial(exact_topk, x, q, args.k)]
                if columns is not None:
                    assert (exact_topk(columns, q, args.k, transposed=True)[1] == truth).all()
                    fns.append(partial(exact_topk, columns, q, args.k, transposed=True))
                ms = interleaved_median_ms(fns, args.repeats, time.thread_time)
                transposed = f"{ms[3]:.2f}" if columns is not None else "—"
                print(f"| {args.n:,} x {dim} | {n_queries} | {ms[0]:.2f} | {ms[1]:.2f} | "
                      f"{ms[2]:.2f} | {transposed} | {ms[2] / ms[0]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
