"""Incremental, crash-safe indexing of image files into a collection.

One pass: find image files under the given paths; skip files whose size and mtime are unchanged
(and whose every configured vector set is stored); recognise moved files by content hash (no
re-embedding); decode each remaining file once in worker processes, for every stage it needs,
while the model embeds the previous batch; commit every batch atomically, all sets together (see
``store.collection``); record bad files (and folders that cannot be listed) with their reason;
forget files gone from disk; last, bring the ANN index up to date under the writer's lock, so that
no search ever has to build it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sharpclip.data.imagefiles import (
    DEFAULT_MAX_PIXELS,
    content_hash,
    file_fingerprint,
    find_images,
    path_key,
)
from sharpclip.data.regions import RegionGrid
from sharpclip.ingest.decode import Decoded, Job, decoded_stream
from sharpclip.ingest.stages import embed, stages_for
from sharpclip.methods.calibration import CVEConfig
from sharpclip.store.collection import (
    CALIBRATED_SET,
    IMAGE_SET,
    REGIONS_SET,
    Collection,
    ItemUpdate,
)

AUTO_WORKERS = "auto"
MAX_AUTO_WORKERS = 16
BUNDLED_PHOTO_SIDE = 128  # images larger than this are not Shapes scenes (the bundled model's)
BUNDLED_NOTE = (
    "note: the bundled model was trained only on the Shapes benchmark (64-pixel synthetic scenes) "
    "and is not meant for photos; index photos with a real checkpoint into a new collection, "
    "e.g. --model openai/clip-vit-base-patch32 (a hub id or a local Hugging Face directory)"
)


@dataclass(frozen=True)
class IndexConfig:
    """How to index. ``workers`` 0 decodes in this process, ``"auto"`` (the default) decodes the
    first batch in this process and sizes the pool from it (:func:`auto_workers`); ``draft``
    decodes JPEGs at reduced scale (faster, but no longer pixel-identical to the checkpoint's
    own processor); ``regions`` adds the region crops of that grid as the ``regions`` vector
    set, ``calibrate`` CVE's calibrated embedding as the ``calibrated`` set (each kept for new
    files after)."""

    workers: int | str = AUTO_WORKERS
    batch_size: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft: bool = False
    prefetch: int = 128  # decoded images waiting for the model, at most
    progress: bool = True
    regions: RegionGrid | None = None
    calibrate: CVEConfig | None = None
    recall: float | None = None  # the ANN index's recall@10 target (None: as before, else 0.95)

    def __post_init__(self) -> None:
        for name, low in (("workers", 0), ("batch_size", 1), ("max_pixels", 1), ("prefetch", 1)):
            value = getattr(self, name)
            if name == "workers" and value == AUTO_WORKERS:
                continue
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.recall is not None and not 0.0 < self.recall <= 1.0:
            raise ValueError(f"recall must be in (0, 1], got {self.recall!r}")


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
    completed: int = 0  # stored items given the vector sets they lacked (e.g. --regions)
    failures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # repairs made, advice: one line each
    # where the embedding loop's wall time went, in seconds: "wait" (the model waiting for
    # decoded images, worker start-up included), "embed" (the model), "commit" (the store)
    timings: dict[str, float] = field(default_factory=dict)
    workers: int | None = None  # the decode processes used (chosen, for workers="auto")

    def summary(self) -> str:
        """One line for the end of a run."""
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        completed = f", {self.completed} given the sets they lacked" if self.completed else ""
        return (f"indexed {self.new} new, {self.changed} changed, {self.moved} moved, "
                f"{self.removed} removed, {self.unchanged} unchanged{completed}, {self.failed} "
                f"failed in {self.seconds:.1f}s ({rate:.0f} images/s)")


def _under(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def index_paths(coll: Collection, paths: Iterable[str | os.PathLike],
                config: IndexConfig = IndexConfig()) -> IndexReport:
    """Bring ``coll`` up to date with the image files under ``paths``; returns what changed."""
    start = time.perf_counter()
    roots = [path_key(p) for p in paths]
    unlistable: list[tuple[str, str]] = []
    files = [str(f) for f in find_images(roots, unlistable=unlistable)]
    report = IndexReport()
    with coll.writing():
        report.notes.extend(coll.repairs)
        stages = configured_stages(coll, config)
        extra = [stage.name for stage in stages if stage.name != IMAGE_SET]
        lacking = {name: {i.path for i in coll.items_lacking(name)} for name in extra}
        known = {item.path: item for item in coll.items()}
        on_disk = set(files) | {folder for folder, _ in unlistable}
        gone = {p: item for p, item in known.items() if p not in on_disk and _under(p, roots)
                and (not os.path.exists(p) or os.path.isdir(p))}
        todo, completing = [], {}
        for path in files:
            item = known.get(path)
            try:
                stamp = file_fingerprint(path)
            except OSError:
                stamp = None
            if item is not None and stamp == (item.size, item.mtime_ns):
                missing = tuple(name for name in extra if path in lacking[name])
                if missing and item.status == "ok":
                    completing[path] = missing  # stored, but not yet in every configured set
                else:
                    report.unchanged += 1
            else:
                todo.append(path)
        todo = _recognise_moves(coll, todo, known, gone, report)
        if gone:
            report.removed = coll.remove(gone)
        _record_unlistable(coll, unlistable, known, report)
        everything = tuple(stage.name for stage in stages)
        jobs = [Job(path, everything) for path in todo]
        jobs += [Job(path, names) for path, names in completing.items()]
        embed_jobs(coll, stages, jobs, config, known, report, "indexing")
        coll.sync_index(progress=config.progress, recall=config.recall)
    report.seconds = time.perf_counter() - start
    return report


def embed_jobs(coll: Collection, stages: tuple, jobs: list[Job], config: IndexConfig,
               known: dict, report: IndexReport, description: str) -> None:
    """Decode ``jobs`` (in workers, ahead of the model), embed and commit them batch by batch
    with a progress bar; ``known`` maps paths to the items already stored for them. With
    ``workers="auto"`` the first batch is decoded here, timed against the model, and the rest
    decoded by as many workers as keep the model fed (:func:`auto_workers`)."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="img", desc=description, disable=not config.progress,
               dynamic_ncols=True, smoothing=0.1)
    for key in ("wait", "embed", "commit"):
        report.timings.setdefault(key, 0.0)
    workers = config.workers
    if workers == AUTO_WORKERS:
        probe, jobs = jobs[:config.batch_size], jobs[config.batch_size:]
        before = dict(report.timings)
        _embed_stream(coll, stages, probe, 0, config, known, report, bar)
        decode_s = report.timings["wait"] - before["wait"]
        embed_s = report.timings["embed"] - before["embed"]
        workers = auto_workers(decode_s, embed_s, _cores()) if jobs else 0
    report.workers = workers
    _embed_stream(coll, stages, jobs, workers, config, known, report, bar)
    bar.close()


def auto_workers(decode_s: float, embed_s: float, cores: int) -> int:
    """Decode processes that keep the model fed: the decode time of a batch over the model's time
    for it, rounded up, between 1 and ``min(cores, MAX_AUTO_WORKERS)``. Workers beyond the need
    only wait (decoding runs at most ``prefetch`` files ahead), so rounding up costs their
    start-up alone."""
    most = max(1, min(cores, MAX_AUTO_WORKERS))
    if embed_s <= 0:
        return most
    return max(1, min(most, math.ceil(decode_s / embed_s)))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _embed_stream(coll: Collection, stages: tuple, jobs: list[Job], workers: int,
                  config: IndexConfig, known: dict, report: IndexReport, bar) -> None:
    """Decode ``jobs`` with ``workers`` processes, embed and commit them batch by batch; the time
    the model waited for decoded images goes to ``report.timings["wait"]``."""
    model = coll.model
    draft = max(model.preprocess.crop_hw) if config.draft else None
    batch: list[Decoded] = []
    stream = decoded_stream(jobs, model.preprocess, stages, workers, config.prefetch,
                            config.max_pixels, draft)
    clock = time.perf_counter()
    for decoded in stream:
        report.timings["wait"] += time.perf_counter() - clock
        batch.append(decoded)
        if sum(bool(d.pixels) for d in batch) >= config.batch_size:
            commit_batch(coll, model, stages, batch, known, report)
            bar.update(len(batch))
            batch = []
        clock = time.perf_counter()
    if batch:
        commit_batch(coll, model, stages, batch, known, report)
        bar.update(len(batch))


def stored_stage_settings(coll: Collection) -> tuple[RegionGrid | None, CVEConfig | None]:
    """The region grid and the calibration of the vector sets ``coll`` holds (None: not held)."""
    regions, calibrated = coll.vector_set(REGIONS_SET), coll.vector_set(CALIBRATED_SET)
    grid = RegionGrid(regions.params["grid"]) if regions is not None else None
    cve = CVEConfig(**{k: v for k, v in calibrated.params.items() if k != "method"}) \
        if calibrated is not None else None
    return grid, cve


def configured_stages(coll: Collection, config: IndexConfig) -> tuple:
    """The run's stages: those asked for, and every set the collection already holds (so that a
    collection with regions or calibrated vectors keeps them complete for new files)."""
    stored_grid, stored_cve = stored_stage_settings(coll)
    grid = stored_grid if config.regions is None else config.regions
    stages = stages_for(grid, stored_cve if config.calibrate is None else config.calibrate)
    for stage in stages:
        if stage.name != IMAGE_SET:
            coll.add_vector_set(stage.name, coll.info.dim, stage.params())
    return stages


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


def commit_batch(coll: Collection, model, stages: tuple, batch: list[Decoded], known: dict,
                 report: IndexReport) -> None:
    """Embed every stage's pixels of ``batch`` (see :func:`~sharpclip.ingest.stages.embed`) and
    commit the items with all their sets together."""
    updates, arrays = [], {}  # arrays: set name -> list of pixel arrays, in batch order
    counts = {}

    def take(decoded: Decoded) -> dict:
        placed = {}
        for name, pixels in decoded.pixels.items():
            placed[name] = (counts.get(name, 0), len(pixels))
            counts[name] = counts.get(name, 0) + len(pixels)
            arrays.setdefault(name, []).append(pixels)
        return placed

    for d in batch:
        item = known.get(d.path)
        if not d.ok:
            updates.append(ItemUpdate(d.path, None, d.size, d.mtime_ns, status="error",
                                      reason=d.reason, error=d.error))
            report.failed += 1
            report.failures.append((d.path, d.error or d.reason or "failed"))
            continue
        same = item is not None and item.status == "ok" and item.hash == d.hash
        if same and IMAGE_SET not in d.pixels:  # completing a stored item's other sets
            placed = take(d)
            updates.append(ItemUpdate(d.path, d.hash, d.size, d.mtime_ns,
                                      set_rows=tuple((n, o, c) for n, (o, c) in placed.items())))
            report.completed += 1
            continue
        if same:  # touched, same content: only the stamp changes
            updates.append(ItemUpdate(d.path, d.hash, d.size, d.mtime_ns))
            report.unchanged += 1
            continue
        if IMAGE_SET not in d.pixels:  # its content changed since it was stored: all sets anew
            report.failed += 1
            report.failures.append((d.path, "changed while being indexed; run index again"))
            continue
        placed = take(d)
        image_at = placed.pop(IMAGE_SET)[0]
        updates.append(ItemUpdate(d.path, d.hash, d.size, d.mtime_ns, d.width, d.height,
                                  vector_index=image_at,
                                  set_rows=tuple((n, o, c) for n, (o, c) in placed.items())))
        if item is None:
            report.new += 1
        else:
            report.changed += 1
    clock = time.perf_counter()
    vectors = embed(model, {stage.name: stage for stage in stages}, arrays)
    embedded = time.perf_counter()
    coll.commit(updates, vectors)
    report.timings["embed"] = report.timings.get("embed", 0.0) + embedded - clock
    report.timings["commit"] = report.timings.get("commit", 0.0) + time.perf_counter() - embedded
    report.embedded += counts.get(IMAGE_SET, 0)
    photo = any(max(d.width or 0, d.height or 0) > BUNDLED_PHOTO_SIDE for d in batch)
    if photo and coll.info.model == "bundled" and BUNDLED_NOTE not in report.notes:
        report.notes.append(BUNDLED_NOTE)
