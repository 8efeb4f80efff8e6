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

from sharpclip.ingest.decode import Job
from sharpclip.ingest.run import (
    IndexConfig,
    IndexReport,
    configured_stages,
    embed_jobs,
    stored_stage_settings,
)
from sharpclip.store.collection import (
    VECTORS_LOST,
    Collection,
    ItemUpdate,
)


def _source_config(source: Collection, workers: int | str, progress: bool) -> IndexConfig:
    """The IndexConfig that rebuilds every vector set ``source`` holds."""
    grid, cve = stored_stage_settings(source)
    return IndexConfig(workers=workers, progress=progress, regions=grid, calibrate=cve)


def reindex(source: Collection, out: str | os.PathLike, model, workers: int | str = "auto",
            progress: bool = True) -> IndexReport:
    """Create the collection ``out`` for ``model`` (loaded, or a spec the source's class loads)
    and fill it with ``source``'s items embedded by that model; returns what was done."""
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
        embed_jobs(target, stages, jobs, config, {}, report, "reindexing")
        target.sync_index(progress=progress)
    report.seconds = time.perf_counter() - start
    return report
