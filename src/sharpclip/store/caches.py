"""Derived arrays kept beside a collection (``COLL/cache/``): keyed, generation-stamped, checksummed.

A cache holds what can always be recomputed from the vectors (e.g. a condition's gallery
projection). Each ``NAME.npy`` has a ``NAME.json`` stamp: the key it was computed for (model,
prompts, settings), the collection generation of the data it was read from, and the SHA-256 of
the ``.npy`` file. A cache is used only when all three match; a damaged one (garbage, truncated,
tampered) is simply recomputed. An array read and verified once is kept in memory for its
(key, generation): later queries touch no file (no system call), and damage to the file after
it was read cannot reach them.
"""

from __future__ import annotations

import hashlib
import io
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
        self._loaded: dict[str, tuple[str, int, np.ndarray]] = {}  # name -> (key, generation, array)

    def get(self, name: str, key: str, generation: int) -> np.ndarray | None:
        """The array stored under ``key`` for ``generation`` whose bytes match the checksum stored
        with it (read-only, in memory); else None. The array read last time for the same key and
        generation is returned again without reading the files."""
        loaded = self._loaded.get(name)
        if loaded is not None and loaded[:2] == (key, generation):
            return loaded[2]
        file = self.folder / f"{name}.npy"
        try:
            stamp = json.loads(file.with_suffix(".json").read_text())
            if stamp.get("key") != key or stamp.get("generation") != generation:
                return None
            data = file.read_bytes()
            if hashlib.sha256(data).hexdigest() != stamp.get("sha256"):
                logger.warning("%s: checksum mismatch; recomputing it", file)
                return None
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (OSError, ValueError, AttributeError):  # missing, garbage JSON or .npy
            return None
        self._keep(name, key, generation, array)
        return array

    def _keep(self, name: str, key: str, generation: int, array: np.ndarray) -> None:
        array.flags.writeable = False  # shared by every later query
        self._loaded[name] = (key, generation, array)

    def put(self, name: str, key: str, array: np.ndarray, generation: int) -> None:
        """Store ``array`` under ``key``, stamped with the ``generation`` of the data it was
        computed from (atomic replace), and keep a copy for this process's next queries. A cache
        that cannot be written only costs the cache."""
        self._keep(name, key, generation, np.array(array))
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

