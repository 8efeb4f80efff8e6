"""Incremental, crash-safe indexing of image files into a collection.

One pass: find image files under the given paths; skip files whose size and mtime are unchanged;
recognise moved files by content hash (no re-embedding); decode and preprocess the rest in worker
processes while the model embeds the previous batch; commit every batch atomically (see
``store.collection``); record bad files (and folders that cannot be listed) with their reason;
forget files gone from disk; last, bring the ANN index up to date under the writer's lock, so that
no search ever has to build it.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from sharpclip.data.imagefiles import (
    DEFAULT_MAX_PIXELS,
    ImageFileError,
    NotARegularFileError,
    content_hash,
    file_fingerprint,
    find_images,
    load_rgb,
    path_key,
)
from sharpclip.store.collection import Collection, ItemUpdate

BUNDLED_PHOTO_SIDE = 128  # images larger than this are not Shapes scenes (the bundled model's)
BUNDLED_NOTE = (
    "note: the bundled model was trained only on the Shapes benchmark (64-pixel synthetic scenes) "
    "and is not meant for photos; index photos with a real checkpoint into a new collection, "
    "e.g. --model openai/clip-vit-base-patch32 (a hub id or a local Hugging Face directory)"
)


@dataclass(frozen=True)
class IndexConfig:
    """How to index. ``workers`` 0 decodes in this process; ``draft`` decodes JPEGs at reduced scale
    (faster, but no longer pixel-identical to the checkpoint's own processor)."""

    workers: int = 1
    batch_size: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft: bool = False
    prefetch: int = 128  # decoded images waiting for the model, at most
    progress: bool = True

    def __post_init__(self) -> None:
        for name, low in (("workers", 0), ("batch_size", 1), ("max_pixels", 1), ("prefetch", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass
class IndexReport:
    """What one indexing run did."""

    new: int = 0
    changed: int = 0
    moved: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: int = 0
    seconds: float = 0.0
    embedded: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # repairs made, advice: one line each

    def summary(self) -> str:
        """One line for the end of a run."""
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        return (f"indexed {self.new} new, {self.changed} changed, {self.moved} moved, "
                f"{self.removed} removed, {self.unchanged} unchanged, {self.failed} failed "
                f"in {self.seconds:.1f}s ({rate:.0f} images/s)")


@dataclass(frozen=True)
class _Decoded:
    path: str
    hash: str | None
    size: int
    mtime_ns: int
    pixels: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    reason: str | None = None
    error: str | None = None


_WORKER: dict = {}


def _init_worker(preprocess, max_pixels: int, draft_size: int | None) -> None:
    _WORKER.update(preprocess=preprocess, max_pixels=max_pixels, draft_size=draft_size)
    try:
        import torch

        torch.set_num_threads(1)  # only if something imported it; decoding never needs it
    except ImportError:
        pass


def _decode(path: str) -> _Decoded:
    """Decode, preprocess and hash one file (runs in a worker process). Only regular files are
    opened (load_rgb refuses FIFOs and devices before reading), so no file can hang a run."""
    try:
        size, mtime_ns = file_fingerprint(path)
    except OSError:  # a dangling link or a link loop: stamp the link itself; load_rgb says why
        try:
            stat = os.lstat(path)
            size, mtime_ns = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime_ns = 0, 0
    try:
        image = load_rgb(path, max_pixels=_WORKER["max_pixels"], draft_size=_WORKER["draft_size"])
        pixels = _WORKER["preprocess"](image)
        digest = content_hash(path)
    except ImageFileError as error:
        return _Decoded(path, None, size, mtime_ns, reason=error.reason, error=str(error))
    except NotARegularFileError as error:  # swapped for a FIFO or device after load_rgb read it
        return _Decoded(path, None, size, mtime_ns, reason="not_a_file", error=str(error))
    except OSError as error:
        return _Decoded(path, None, size, mtime_ns, reason="unreadable", error=f"{path}: {error}")
    return _Decoded(path, digest, size, mtime_ns, pixels, image.width, image.height)


def _under(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def index_paths(coll: Collection, paths: Iterable[str | os.PathLike],
                config: IndexConfig = IndexConfig()) -> IndexReport:
    """Bring ``coll`` up to date with the image files under ``paths``; returns what changed."""
    from tqdm import tqdm

    start = time.perf_counter()
    roots = [path_key(p) for p in paths]
    unlistable: list[tuple[str, str]] = []
    files = [str(f) for f in find_images(roots, unlistable=unlistable)]
    report = IndexReport()
    with coll.writing():
        report.notes.extend(coll.repairs)
        known = {item.path: item for item in coll.items()}
        on_disk = set(files) | {folder for folder, _ in unlistable}
        gone = {p: item for p, item in known.items() if p not in on_disk and _under(p, roots)
                and (not os.path.exists(p) or os.path.isdir(p))}
        todo = []
        for path in files:
            item = known.get(path)
            try:
                stamp = file_fingerprint(path)
            except OSError:
                stamp = None
            if item is not None and stamp == (item.size, item.mtime_ns):
                report.unchanged += 1
            else:
                todo.append(path)
        todo = _recognise_moves(coll, todo, known, gone, report)
        if gone:
            report.removed = coll.remove(gone)
        _record_unlistable(coll, unlistable, known, report)
        model = coll.model
        draft = max(model.preprocess.crop_hw) if config.draft else None
        bar = tqdm(total=len(todo), unit="img", desc="indexing", disable=not config.progress,
                   dynamic_ncols=True, smoothing=0.1)
        batch: list[_Decoded] = []
        for decoded in _decoded_stream(todo, model.preprocess, config, draft):
            batch.append(decoded)
            if sum(d.pixels is not None for d in batch) >= config.batch_size:
                _commit_batch(coll, model, batch, known, report)
                bar.update(len(batch))
                batch = []
        if batch:
            _commit_batch(coll, model, batch, known, report)
            bar.update(len(batch))
        bar.close()
        coll.sync_index(progress=config.progress)
    report.seconds = time.perf_counter() - start
    return report


def _record_unlistable(coll: Collection, folders: list[tuple[str, str]], known: dict,
                       report: IndexReport) -> None:
    """Record each folder that could not be listed as a failed entry (shown by ``status``)."""
    updates = []
    for folder, message in folders:
        item = known.get(folder)
        if item is not None and item.status == "error" and item.error == message:
            continue
        updates.append(ItemUpdate(folder, None, 0, 0, status="error", reason="unreadable",
                                  error=message))
        report.failed += 1
        report.failures.append((folder, message))
    if updates:
        coll.commit(updates)


def _recognise_moves(coll: Collection, todo: list[str], known: dict, gone: dict,
                     report: IndexReport) -> list[str]:
    """Re-point stored items whose content reappears at a new path; returns the files still to embed."""
    by_hash = {item.hash: path for path, item in gone.items() if item.status == "ok" and item.hash}
    if not by_hash:
        return todo
    moves, rest = [], []
    for path in todo:
        if path in known:
            rest.append(path)
            continue
        try:
            digest = content_hash(path)
            size, mtime_ns = file_fingerprint(path)
        except OSError:
            rest.append(path)
            continue
        old = by_hash.pop(digest, None)
        if old is None:
            rest.append(path)
        else:
            moves.append(ItemUpdate(path=path, hash=digest, size=size, mtime_ns=mtime_ns,
                                    previous_path=old))
            del gone[old]
    if moves:
        coll.commit(moves)
        report.moved = len(moves)
    return rest


def _decoded_stream(paths: list[str], preprocess, config: IndexConfig,
                    draft: int | None) -> Iterator[_Decoded]:
    """Decoded files in order; with workers, decoding runs ahead of the consumer (bounded)."""
    if config.workers <= 0 or len(paths) < 2:
        _init_worker(preprocess, config.max_pixels, draft)
        yield from map(_decode, paths)
        return
    permits = threading.Semaphore(config.prefetch)
    stopped = threading.Event()

    def feed() -> Iterator[str]:
        for path in paths:
            permits.acquire()
            if stopped.is_set():
                return
            yield path

    context = multiprocessing.get_context("spawn")  # never fork a process that holds torch threads
    pool = context.Pool(config.workers, _init_worker, (preprocess, config.max_pixels, draft))
    try:
        for decoded in pool.imap(_decode, feed(), chunksize=4):
            permits.release()
            yield decoded
        pool.close()
    finally:
        stopped.set()
        permits.release(len(paths) + 1)
        pool.terminate()
        pool.join()


def _commit_batch(coll: Collection, model, batch: list[_Decoded], known: dict,
                  report: IndexReport) -> None:
    updates, pixels = [], []
    for d in batch:
        item = known.get(d.path)
        if d.pixels is None:
            updates.append(ItemUpdate(d.path, None, d.size, d.mtime_ns, status="error",
                                      reason=d.reason, error=d.error))
            report.failed += 1
            report.failures.append((d.path, d.error or d.reason or "failed"))
        elif item is not None and item.status == "ok" and item.hash == d.hash:
            updates.append(ItemUpdate(d.path, d.hash, d.size, d.mtime_ns))  # touched, same content
            report.unchanged += 1
        else:
            updates.append(ItemUpdate(d.path, d.hash, d.size, d.mtime_ns, d.width, d.height,
                                      vector_index=len(pixels)))
            pixels.append(d.pixels)
            if item is None:
                report.new += 1
            else:
                report.changed += 1
    vectors = model.encode_pixels(np.stack(pixels)) if pixels else None
    coll.commit(updates, vectors)
    report.embedded += len(pixels)
    photo = any(max(d.width or 0, d.height or 0) > BUNDLED_PHOTO_SIDE for d in batch)
    if photo and coll.info.model == "bundled" and BUNDLED_NOTE not in report.notes:
        report.notes.append(BUNDLED_NOTE)
