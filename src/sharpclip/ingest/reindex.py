"""``sharpclip reindex``: a collection's items re-embedded with another model, into a new
collection, without walking the folders or hashing the files again.

Every stored item is decoded from its path once, for every vector set the source collection
holds (the same region grid, the same calibration), and committed with its stored hash while
its size and modification time are unchanged (a file changed since is hashed anew). Files that
are gone or unreadable become failed items, as ``index`` records them; the source's failed items
are carried over as they are, so ``status`` lists the same bad files (items whose vectors were
lost are embedded: their files are fine).
"""

from __future__ import annotations

import os
import time

from sharpclip.data.regions import RegionGrid
from sharpclip.ingest.decode import Decoded, Job, decoded_stream
from sharpclip.ingest.run import IndexConfig, IndexReport, commit_batch, configured_stages
from sharpclip.methods.calibration import CVEConfig
from sharpclip.store.collection import (
    CALIBRATED_SET,
    REGIONS_SET,
    VECTORS_LOST,
    Collection,
    ItemUpdate,
)


def _source_config(source: Collection, workers: int, progress: bool) -> IndexConfig:
    """The IndexConfig that rebuilds every vector set ``source`` holds."""
    regions, calibrated = source.vector_set(REGIONS_SET), source.vector_set(CALIBRATED_SET)
    return IndexConfig(
        workers=workers, progress=progress,
        regions=RegionGrid(regions.params["grid"]) if regions is not None else None,
        calibrate=CVEConfig(**{k: v for k, v in calibrated.params.items() if k != "method"})
        if calibrated is not None else None)


def reindex(source: Collection, out: str | os.PathLike, model, workers: int = 1,
            progress: bool = True) -> IndexReport:
    """Create the collection ``out`` for ``model`` (loaded, or a spec the source's class loads)
    and fill it with ``source``'s items embedded by that model; returns what was done."""
    from tqdm import tqdm

    start = time.perf_counter()
    config = _source_config(source, workers, progress)
    target = type(source).create(out, model)
    report = IndexReport()
    with target, target.writing():
        stages = configured_stages(target, config)
        names = tuple(stage.name for stage in stages)
        items = source.items()
        failed = [i for i in items if i.status != "ok" and i.reason != VECTORS_LOST]
        if failed:
            target.commit([ItemUpdate(i.path, i.hash, i.size, i.mtime_ns, status=i.status,
                                      reason=i.reason, error=i.error) for i in failed])
            report.failed += len(failed)
            report.failures.extend((i.path, i.error or i.reason or "failed") for i in failed)
        jobs = [Job(i.path, names, known=(i.size, i.mtime_ns, i.hash) if i.hash else None)
                for i in items if i.status == "ok" or i.reason == VECTORS_LOST]
        embedding = target.model
        bar = tqdm(total=len(jobs), unit="img", desc="reindexing", disable=not progress,
                   dynamic_ncols=True, smoothing=0.1)
        batch: list[Decoded] = []
        stream = decoded_stream(jobs, embedding.preprocess, stages, config.workers,
                                config.prefetch, config.max_pixels, None)
        for decoded in stream:
            batch.append(decoded)
            if len(batch) >= config.batch_size:
                commit_batch(target, embedding, stages, batch, {}, report)
                bar.update(len(batch))
                batch = []
        if batch:
            commit_batch(target, embedding, stages, batch, {}, report)
            bar.update(len(batch))
        bar.close()
        target.sync_index(progress=progress)
    report.seconds = time.perf_counter() - start
    return report
