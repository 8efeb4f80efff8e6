"""``sharpclip check --repair``: act on what :func:`~sharpclip.store.integrity.check_collection`
found, then check again.

- lost or damaged vectors (short or missing file, checksum mismatch, items pointing at no row):
  the items are marked ``vectors_lost`` and their files re-embedded (``index`` on exactly those
  files); items whose files are gone as well are forgotten;
- a damaged cache is deleted (it is recomputed on the next search);
- an unusable or missing ANN index is rebuilt.

A damaged catalog cannot be repaired in place: that is refused with the fix. Everything runs under
the writer's lock, with the same crash-safe commits as ``index``, so a kill during a repair leaves
a collection that the next ``check --repair`` finishes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sharpclip.collection import Collection
from sharpclip.ingest import IndexConfig, index_paths
from sharpclip.store.collection import (
    IMAGE_SET,
    REGIONS_SET,
    VECTORS_LOST,
    DamagedCollectionError,
)
from sharpclip.store.faults import crash_point
from sharpclip.store.integrity import CheckReport, check_collection


@dataclass
class RepairReport:
    """What a repair did, and the check after it."""

    reembedded: int = 0
    forgotten: int = 0
    caches_deleted: int = 0
    index_rebuilt: bool = False
    notes: list[str] = field(default_factory=list)
    after: CheckReport | None = None

    def summary(self) -> str:
        """One line for the end of a run."""
        return (f"repaired: {self.reembedded} items re-embedded, {self.forgotten} forgotten "
                f"(files gone), {self.caches_deleted} caches deleted, ANN index "
                f"{'rebuilt' if self.index_rebuilt else 'unchanged'}")


def repair_collection(path, found: CheckReport, config: IndexConfig | None = None) -> RepairReport:
    """Repair what ``found`` (a check of ``path``) reports; returns what was done. ``config``
    says how files are re-embedded (default: one worker, no progress bar)."""
    config = config or IndexConfig(progress=False)
    for p in found.problems:
        if p.kind == "catalog" and p.severity == "error":
            raise DamagedCollectionError(f"{p.file}: {p.message}; cannot be repaired in place: "
                                         f"{p.fix}")
    report = RepairReport()
    with Collection.open(path) as coll:
        with coll.writing():  # taking the lock already handles short and missing vector files
            report.notes.extend(coll.repairs)
            set_of_file = {str(file): name for name, _, _, file in coll.vector_sets()}
            damaged: dict[str, set[int]] = {}
            for p in found.problems:
                if p.kind in ("checksum", "rows") and p.severity == "error":
                    name = set_of_file.get(p.file, IMAGE_SET)
                    damaged.setdefault(name, set()).update(p.item_ids)
            for name, ids in damaged.items():
                coll.forget_vectors(sorted(ids), "its stored vector was damaged (checksum mismatch "
                                                 "or no valid row); `sharpclip index` re-embeds it",
                                    name=name)
            crash_point("repair.marked")
            for problem in found.problems:
                if problem.kind == "cache":
                    for file in (problem.file, problem.file[:-4] + ".json"):
                        if os.path.exists(file):
                            os.unlink(file)
                    report.caches_deleted += 1
                elif problem.kind == "index" and problem.severity == "warning":
                    if os.path.exists(problem.file):
                        os.unlink(problem.file)
                    report.index_rebuilt = True
            lost = [i for i in coll.items("error") if i.reason == VECTORS_LOST]
            gone = [i.path for i in lost if not os.path.lexists(i.path)]
            if gone:
                report.forgotten = coll.remove(gone)
        present = [i.path for i in lost if os.path.lexists(i.path)]
        if coll.vector_set(REGIONS_SET) is not None:  # items that lost only their regions
            present += [i.path for i in coll.items_lacking(REGIONS_SET) if os.path.lexists(i.path)]
        if present:
            reindexed = index_paths(coll, present, config)
            report.reembedded = reindexed.embedded + reindexed.completed
        else:
            with coll.writing():
                report.index_rebuilt = coll.sync_index() or report.index_rebuilt
    report.after = check_collection(path)
    return report
