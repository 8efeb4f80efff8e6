"""Decode workers: read, hash and prepare each file once, for every stage that needs it.

Only regular files are opened (``load_rgb`` refuses FIFOs and devices before reading), so no file
can hang a run; a bad file becomes a :class:`Decoded` with a reason, never an exception.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from sharpclip.data import imagefiles
from sharpclip.data.imagefiles import ImageFileError, NotARegularFileError, file_fingerprint


@dataclass(frozen=True)
class Decoded:
    """One file after decoding: its stamp and hash, and per stage name its pixel arrays."""

    path: str
    hash: str | None
    size: int
    mtime_ns: int
    pixels: dict = field(default_factory=dict)  # stage name -> (n, 3, H, W) float32
    width: int | None = None
    height: int | None = None
    reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class Job:
    """One file to decode and the stages (by name) to prepare it for. ``known`` is the stored
    ``(size, mtime_ns, hash)`` of a file already hashed (reindex): while its stamp is unchanged
    the stored hash is used and the file is not read a second time."""

    path: str
    stages: tuple[str, ...]
    known: tuple[int, int, str] | None = None


_WORKER: dict = {}


def init_worker(preprocess, stages: Sequence, max_pixels: int, draft_size: int | None) -> None:
    """Set up a decode process (or this one, without workers). Decoding needs no torch: a worker
    never imports it (1.5 CPU-seconds of start-up) and this process's threads are left alone."""
    _WORKER.update(preprocess=preprocess, stages={s.name: s for s in stages},
                   max_pixels=max_pixels, draft_size=draft_size)


def decode(job: Job) -> Decoded:
    """Decode, prepare and hash one file (runs in a worker process)."""
    path = job.path
    try:
        size, mtime_ns = file_fingerprint(path)
    except OSError:  # a dangling link or a link loop: stamp the link itself; load_rgb says why
        try:
            stat = os.lstat(path)
            size, mtime_ns = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime_ns = 0, 0
    try:
        image = imagefiles.load_rgb(path, max_pixels=_WORKER["max_pixels"],
                                    draft_size=_WORKER["draft_size"])
        preprocess = _WORKER["preprocess"]
        pixels = {}
        for name in job.stages:
            stage = _WORKER["stages"][name]
            shared = getattr(stage, "same_pixels_as", None)
            if shared in job.stages:  # the same array: prepared once, sent once (pickle shares it)
                pixels[name] = pixels.get(shared)
                if pixels[name] is None:
                    pixels[name] = pixels[shared] = _WORKER["stages"][shared].prepare(image, preprocess)
            else:
                pixels[name] = stage.prepare(image, preprocess)
        if job.known is not None and job.known[:2] == (size, mtime_ns):
            digest = job.known[2]
        else:
            digest = imagefiles.content_hash(path)
    except ImageFileError as error:
        return Decoded(path, None, size, mtime_ns, reason=error.reason, error=str(error))
    except NotARegularFileError as error:  # swapped for a FIFO or device after load_rgb read it
        return Decoded(path, None, size, mtime_ns, reason="not_a_file", error=str(error))
    except OSError as error:
        return Decoded(path, None, size, mtime_ns, reason="unreadable", error=f"{path}: {error}")
    return Decoded(path, digest, size, mtime_ns, pixels, image.width, image.height)


def decoded_stream(jobs: list[Job], preprocess, stages: Sequence, workers: int, prefetch: int,
                   max_pixels: int, draft: int | None) -> Iterator[Decoded]:
    """Decoded files in order; with workers, decoding runs ahead of the consumer (at most
    ``prefetch`` files waiting)."""
    if workers <= 0 or len(jobs) < 2:
        init_worker(preprocess, stages, max_pixels, draft)
        yield from map(decode, jobs)
        return
    permits = threading.Semaphore(prefetch)
    stopped = threading.Event()

    def feed() -> Iterator[Job]:
        for job in jobs:
            permits.acquire()
            if stopped.is_set():
                return
            yield job

    context = multiprocessing.get_context("spawn")  # never fork a process that holds torch threads
    pool = context.Pool(workers, init_worker, (preprocess, tuple(stages), max_pixels, draft))
    try:
        for decoded in pool.imap(decode, feed(), chunksize=4):
            permits.release()
            yield decoded
        pool.close()
    finally:
        stopped.set()
        permits.release(len(jobs) + 1)
        pool.terminate()
        pool.join()


def stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate (n_i, 3, H, W) arrays along the first axis."""
    return np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
