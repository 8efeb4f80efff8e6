"""Derived arrays kept beside a collection (``COLL/cache/``): keyed, generation-stamped, checksummed.

A cache holds what can always be recomputed from the vectors (e.g. a condition's gallery
projection). Each ``NAME.npy`` has a ``NAME.json`` stamp: the key it was computed for (model,
prompts, settings), the collection generation of the data it was read from, and the SHA-256 of
the ``.npy`` file. A cache is used only when all three match; a damaged one (garbage, truncated,
tampered) is simply recomputed. The hash is checked once per process and file version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


class Caches:
    """The cache folder of one collection."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._verified: dict[str, tuple] = {}
        self._opened: dict[str, tuple] = {}  # name -> (key, generation, file versions, array)

    def get(self, name: str, key: str, generation: int) -> np.ndarray | None:
        """The array stored under ``key`` for ``generation`` whose bytes match the checksum stored
        with it, memory-mapped; else None. While neither file changes, the array mapped last time
        is returned again (two ``stat`` calls instead of reading the stamp and the header)."""
        file = self.folder / f"{name}.npy"
        stamp_file = file.with_suffix(".json")
        try:
            versions = (_version(stamp_file), _version(file))
            opened = self._opened.get(name)
            if opened is not None and opened[:3] == (key, generation, versions):
                return opened[3]
            stamp = json.loads(stamp_file.read_text())
            if stamp.get("key") != key or stamp.get("generation") != generation:
                return None
            stat = file.stat()
            seen = (stamp.get("sha256"), stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if self._verified.get(name) != seen:
                if file_sha256(file) != stamp.get("sha256"):
                    logger.warning("%s: checksum mismatch; recomputing it", file)
                    return None
                self._verified[name] = seen
            array = np.load(file, mmap_mode="r", allow_pickle=False)
            self._opened[name] = (key, generation, versions, array)
            return array
        except (OSError, ValueError, AttributeError):  # missing, garbage JSON or .npy
            return None

    def put(self, name: str, key: str, array: np.ndarray, generation: int) -> None:
        """Store ``array`` under ``key``, stamped with the ``generation`` of the data it was
        computed from (atomic replace). A cache that cannot be written only costs the cache."""
        target = self.folder / f"{name}.npy"
        tmp = self.folder / f".{name}.{os.getpid()}.npy"
        tmp_stamp = self.folder / f".{name}.{os.getpid()}.json"
        stamp = target.with_suffix(".json")
        try:
            self.folder.mkdir(exist_ok=True)
            np.save(tmp, array)
            stamp.unlink(missing_ok=True)  # a stale stamp must never vouch for the new array
            digest = file_sha256(tmp)
            os.replace(tmp, target)
            tmp_stamp.write_text(json.dumps({"key": key, "generation": generation,
                                             "sha256": digest}))
            os.replace(tmp_stamp, stamp)
        except OSError as error:  # a full disk or a read-only collection
            logger.warning("%s: cannot store the cache (%s); it is recomputed next time", target,
                           error)
            tmp.unlink(missing_ok=True)
            tmp_stamp.unlink(missing_ok=True)


def file_sha256(file: Path) -> str:
    """SHA-256 of a file's bytes, as hex, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _version(file: Path) -> tuple[int, int, int]:
    """(inode, size, mtime) of a file: changes whenever it is replaced or rewritten."""
    stat = file.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns
