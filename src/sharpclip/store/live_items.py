"""The live items of one collection generation as flat arrays: each item's image row, id and path,
with lookups by path and by id that touch no catalog.

Read from the catalog once per generation (one query), then kept in memory and in the
collection's cache (``cache/``, checksummed), so a query maps its hits to paths, and finds the
item of a "more like this" path, without a SQLite statement, and a new process loads the arrays
instead of reading every live row from SQLite. About 48 bytes plus the path's length per item.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np


def _encode(path: str) -> bytes:
    return path.encode("utf-8", "surrogatepass")


_HALF = 1 << 31  # CRCs are shifted down by this, so that CRC << 32 fits an int64


@dataclass(frozen=True)
class LiveItems:
    """Live items in ascending image row: ``live[0]`` rows, ``live[1]`` ids (both (n,) int64,
    contiguous); item ``i``'s path is ``blob[offsets[i]:offsets[i + 1]]`` (UTF-8);
    ``by_path`` (n,) sorts ``(crc32(path) - 2**31) << 32 | i``; ``by_id`` (2, n) holds the ids
    ascending and each one's position."""

    live: np.ndarray
    offsets: np.ndarray
    blob: np.ndarray
    by_path: np.ndarray
    by_id: np.ndarray

    FORMAT = 1  # part of the cache stamp: bump it when the arrays' meaning changes

    @classmethod
    def build(cls, rows: Sequence[int], ids: Sequence[int], paths: Sequence[str]) -> LiveItems:
        """The arrays of items given in ascending ``rows``, with their ``ids`` and ``paths``."""
        return cls.from_encoded(rows, ids, [_encode(p) for p in paths])

    @classmethod
    def from_catalog(cls, records: Sequence[tuple[int, int, bytes]]) -> LiveItems:
        """The arrays of ``(row, id, UTF-8 path)`` records in ascending row (as SQLite returns
        ``SELECT row, id, CAST(path AS BLOB)``: no string is built)."""
        n = len(records)
        rows = np.fromiter(map(itemgetter(0), records), np.int64, n)
        ids = np.fromiter(map(itemgetter(1), records), np.int64, n)
        return cls.from_encoded(rows, ids, list(map(itemgetter(2), records)))

    @classmethod
    def from_encoded(cls, rows: Sequence[int], ids: Sequence[int],
                     encoded: Sequence[bytes]) -> LiveItems:
        """:meth:`build` of paths given as UTF-8 bytes."""
        n = len(encoded)
        live = np.array([rows, ids], dtype=np.int64).reshape(2, n)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(np.fromiter(map(len, encoded), np.int64, n), out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), np.uint8).copy()
        crc = np.fromiter(map(zlib.crc32, encoded), np.int64, n) - _HALF
        by_path = np.sort((crc << 32) | np.arange(n, dtype=np.int64))
        order = np.argsort(live[1], kind="stable")
        by_id = np.stack([live[1][order], order])
        return cls(live, offsets, blob, by_path, by_id)

    @property
    def rows(self) -> np.ndarray:
        return self.live[0]

    @property
    def ids(self) -> np.ndarray:
        return self.live[1]

    def path_at(self, position: int) -> str:
        """The path of the item at ``position``."""
        start, stop = self.offsets[position:position + 2].tolist()
        return str(self.blob.data[start:stop], "utf-8", "surrogatepass")

    def find(self, path: str) -> int | None:
        """The position of the live item stored as exactly ``path``, or None."""
        encoded = _encode(path)
        crc = (zlib.crc32(encoded) - _HALF) << 32
        lo = int(self.by_path.searchsorted(crc))
        hi = int(self.by_path.searchsorted(crc | 0xFFFFFFFF, side="right"))
        for entry in self.by_path[lo:hi].tolist():  # one unless two paths share a CRC
            i = entry & 0xFFFFFFFF
            start, stop = self.offsets[i:i + 2].tolist()
            if self.blob.data[start:stop] == encoded:
                return i
        return None

    def paths_by_id(self, item_ids: Sequence[int]) -> dict[int, str]:
        """``{id: path}`` of those of ``item_ids`` that are live items."""
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        sorted_ids, order = self.by_id
        if not len(sorted_ids) or not len(ids):
            return {}
        at = np.minimum(sorted_ids.searchsorted(ids), len(sorted_ids) - 1)
        live = (sorted_ids[at] == ids).tolist()
        at = order[at]
        starts, stops = self.offsets[at].tolist(), self.offsets[at + 1].tolist()
        data = self.blob.data
        return {item_id: str(data[a:b], "utf-8", "surrogatepass")
                for item_id, is_live, a, b in zip(ids.tolist(), live, starts, stops) if is_live}

    def pack(self) -> np.ndarray:
        """All arrays in one int64 array (one cache file): ``[n, len(blob)]``, then ``live``,
        ``offsets``, ``by_path``, ``by_id`` and the blob padded to whole int64s."""
        blob = np.zeros(-(-len(self.blob) // 8) * 8, np.uint8)
        blob[:len(self.blob)] = self.blob
        return np.concatenate([np.array([len(self.offsets) - 1, len(self.blob)], np.int64),
                               self.live.ravel(), self.offsets, self.by_path, self.by_id.ravel(),
                               blob.view(np.int64)])

    @classmethod
    def unpack(cls, packed: np.ndarray) -> LiveItems | None:
        """The items :meth:`pack` stored (views into ``packed``), or None when ``packed`` does
        not have the layout (a file of another format)."""
        if packed.dtype != np.int64 or packed.ndim != 1 or len(packed) < 3:
            return None
        n, size = packed[:2].tolist()
        if n < 0 or size < 0 or len(packed) != 3 + 6 * n + -(-size // 8):
            return None
        at = 2
        live = packed[at:at + 2 * n].reshape(2, n)
        offsets = packed[at + 2 * n:at + 3 * n + 1]
        by_path = packed[at + 3 * n + 1:at + 4 * n + 1]
        by_id = packed[at + 4 * n + 1:at + 6 * n + 1].reshape(2, n)
        blob = packed[at + 6 * n + 1:].view(np.uint8)[:size]
        if int(offsets[0]) != 0 or int(offsets[-1]) != size:
            return None
        return cls(live, offsets, blob, by_path, by_id)
