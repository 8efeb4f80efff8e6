"""What the query pipeline searches: a *gallery* of items with whole-image vectors and, optionally,
region vectors (the candidate parts of METHODS.md §2a).

Two implementations behind one interface (tested by one battery, tests/test_query.py):

- :class:`ArrayGallery`: arrays in memory, item ids ``0..N-1`` (the evaluation tasks);
- :class:`CollectionGallery`: a collection on disk (live items only, damaged vectors never
  returned, regions fetched per item id through the catalog, computed on demand when missing).

Every method takes and returns arrays; only :class:`CollectionGallery` touches the store.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from sharpclip.methods.conditional import project
from sharpclip.store.search_index import exact_topk

logger = logging.getLogger(__name__)


class Gallery(Protocol):
    """The gallery interface the pipeline's stages use."""

    dim: int

    def nearest(self, query: np.ndarray, k: int, condition: str | None = None,
                exact: bool | None = None,
                vector_set: str = "image") -> tuple[np.ndarray, np.ndarray]:
        """(scores, item ids) of the ``k`` items whose ``vector_set`` vector is most similar to
        ``query`` (d,), descending; under a ``condition``, compared in that condition's subspace
        (METHODS.md §1)."""

    def vectors(self, ids: np.ndarray, vector_set: str = "image") -> np.ndarray:
        """The one-per-item vectors (len(ids), d) of items ``ids`` in ``vector_set``."""

    def regions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(region vectors (M, d), owner (M,) index into ``ids``, boxes (M, 4) in pixels) of items
        ``ids``; each item's rows contiguous and in part order."""


def _as_ids(ids) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64).reshape(-1)


class ArrayGallery:
    """A gallery of in-memory arrays: item ``i`` is row ``i`` of ``vectors``.

    ``regions`` is (vectors (M, d), owner (M,) item id, boxes (M, 4)), rows of one item contiguous;
    ``conditions`` maps a condition name to (W, projected gallery) for conditional candidates;
    ``sets`` maps other one-per-item vector sets (``calibrated``) to their (N, d) arrays.
    """

    def __init__(self, vectors: np.ndarray, regions=None, conditions=None, sets=None):
        self._vectors = np.asarray(vectors, dtype=np.float32)
        self._sets = {"image": self._vectors,
                      **{k: np.asarray(v, np.float32) for k, v in (sets or {}).items()}}
        self.dim = self._vectors.shape[1]
        self._conditions = dict(conditions or {})
        self._regions = None
        if regions is not None:
            vecs, owner, boxes = (np.asarray(a) for a in regions)
            order = np.argsort(owner, kind="stable")
            owner = owner[order].astype(np.int64)
            starts = np.searchsorted(owner, np.arange(len(self._vectors) + 1))
            self._regions = (vecs[order].astype(np.float32), starts, boxes[order].astype(np.int64))

    def _set(self, name: str) -> np.ndarray:
        if name not in self._sets:
            raise ValueError(f"this gallery has no {name!r} vectors")
        return self._sets[name]

    def nearest(self, query, k, condition=None, exact=None, vector_set="image"):
        if condition is not None:
            if condition not in self._conditions:
                raise ValueError(f"this gallery has no projection for condition {condition!r}")
            W, projected = self._conditions[condition]
            scores, ids = exact_topk(projected, project(np.asarray(query)[None], W), k)
        else:
            scores, ids = exact_topk(self._set(vector_set), np.asarray(query, np.float32)[None], k)
        return scores[0], ids[0]

    def vectors(self, ids, vector_set="image"):
        return self._set(vector_set)[_as_ids(ids)]

    def regions(self, ids):
        ids = _as_ids(ids)
        if self._regions is None:
            raise ValueError("this gallery has no region vectors")
        vecs, starts, boxes = self._regions
        take = [np.arange(starts[i], starts[i + 1]) for i in ids]
        rows = np.concatenate(take) if take else np.zeros(0, np.int64)
        owner = np.repeat(np.arange(len(ids)), [len(t) for t in take])
        return vecs[rows], owner, boxes[rows]


class CollectionGallery:
    """The live items of a collection (see :mod:`sharpclip.store.collection`) as a gallery.

    Hits whose stored vector fails its checksum are never returned (more candidates are fetched
    in their place). Region vectors come from the collection's ``regions`` set; an item without
    them (a collection indexed without ``--regions``) has its crops computed from its file on
    demand with ``grid``, cached in this process by item id and content hash.
    """

    def __init__(self, coll, grid=None, encode_images=None, concepts=None):
        self.coll = coll
        self.dim = coll.info.dim
        self._grid = grid
        self._has_stored_regions: bool | None = None  # looked up on first use of regions
        self._encode_images = encode_images
        self._concepts = concepts
        self._on_demand: dict[tuple[int, str], np.ndarray] = {}
        self.computed_on_demand = 0  # items whose regions this gallery had to compute

    def _look_up_regions(self) -> None:
        """Read the stored ``regions`` set once (on first use: a plain search never needs it)."""
        from sharpclip.data.regions import RegionGrid
        from sharpclip.store.collection import REGIONS_SET

        stored = self.coll.vector_set(REGIONS_SET)
        if self._has_stored_regions is None:
            self._has_stored_regions = stored is not None
        if self._grid is None:
            self._grid = RegionGrid(stored.params["grid"] if stored else RegionGrid().spec)

    @property
    def grid(self):
        """The region grid: the one given, else the stored regions' own, else the default."""
        if self._grid is None:
            self._look_up_regions()
        return self._grid

    @property
    def has_stored_regions(self) -> bool:
        """Whether the collection holds a readable ``regions`` vector set."""
        if self._has_stored_regions is None:
            self._look_up_regions()
        return self._has_stored_regions

    def _rows_to_ids(self, rows: np.ndarray, name: str) -> np.ndarray:
        snap = self.coll.snapshot(name)
        at = np.searchsorted(snap.live_rows, rows)
        return snap.live_ids[np.minimum(at, max(len(snap.live_ids) - 1, 0))]

    def nearest(self, query, k, condition=None, exact=None, vector_set="image"):
        from sharpclip.query.condition import condition_candidates

        coll = self.coll
        query = np.asarray(query, np.float32)
        n = k
        while True:
            if condition is not None:
                scores, rows = condition_candidates(coll, query, condition, n, self._concepts)
            else:
                scores, rows = coll.nearest(query[None, :], n, exact=exact, vector_set=vector_set)
                scores, rows = scores[0], rows[0]
            intact = coll.intact_rows(rows, vector_set)
            if intact.all() or intact.sum() >= k or len(rows) < n or n >= 64 * k:
                break
            n *= 4
        if not intact.all():
            logger.warning("%s: left out %d candidates whose stored vectors changed on disk; run "
                           "`sharpclip check -c %s --repair`", coll.path, int((~intact).sum()),
                           coll.path)
        if not intact.all():
            scores, rows = scores[intact], rows[intact]
        return scores[:k], self._rows_to_ids(rows[:k], vector_set)

    def vectors(self, ids, vector_set="image"):
        coll = self.coll
        starts, counts = coll.rows_for_items(vector_set, _as_ids(ids))
        if (counts == 0).any():
            raise ValueError(f"{coll.path}: item(s) {_as_ids(ids)[counts == 0].tolist()} have no "
                             f"{vector_set!r} vector (removed, failed or not yet indexed with it)")
        if not coll.intact_rows(starts, vector_set).all():
            raise ValueError(f"{coll.path}: a stored vector changed on disk (checksum mismatch); "
                             f"run `sharpclip check -c {coll.path} --repair`")
        return np.asarray(coll.read_vectors(vector_set)[1][starts])

    def item_vector(self, item_id: int, row: int | None) -> np.ndarray:
        """The image vector of one embedded item (the query of "more like this"), read at the
        ``row`` the snapshot or its catalog record names (no second catalog lookup)."""
        vectors = self.coll.read_vectors()[1]
        if row is None or row >= len(vectors) or not self.coll.intact_rows([row]).all():
            return self.vectors([item_id])[0]  # raises with the fix
        return np.asarray(vectors)[row].copy()  # a plain view: memmap indexing wraps its result

    def regions(self, ids):
        from sharpclip.store.collection import REGIONS_SET, DamagedCollectionError

        coll, ids = self.coll, _as_ids(ids)
        parts, boxes = [], []
        vectors = None
        if self.has_stored_regions:
            try:
                vectors = coll.read_vectors(REGIONS_SET)[1]
            except DamagedCollectionError as error:  # regions lost: computed from the files
                logger.warning("%s", error)
                self._has_stored_regions = False
        if vectors is not None:
            starts, counts = coll.rows_for_items(REGIONS_SET, ids)
            rows = [np.arange(s, s + c) for s, c in zip(starts, counts)]
            flat = np.concatenate(rows) if rows else np.zeros(0, np.int64)
            intact = coll.intact_rows(flat, REGIONS_SET) if len(flat) else flat.astype(bool)
        else:
            counts, rows, intact = np.zeros(len(ids), np.int64), [], np.zeros(0, bool)
        at = 0
        items = {i.id: i for i in coll.items_by_id(ids.tolist())}
        for n, item_id in enumerate(ids.tolist()):
            item = items.get(item_id)
            size = (item.width or 1, item.height or 1) if item else (1, 1)
            ok = counts[n] > 0 and intact[at:at + counts[n]].all()
            if ok:
                parts.append(np.asarray(vectors[rows[n]]))
            else:
                parts.append(self._compute(item))
            boxes.append(self.grid.boxes(*size) if len(parts[-1]) == len(self.grid)
                         else np.tile([0, 0, *size], (len(parts[-1]), 1)))
            at += counts[n]
        owner = np.repeat(np.arange(len(ids)), [len(p) for p in parts])
        empty = np.zeros((0, self.dim), np.float32)
        return (np.concatenate(parts) if parts else empty, owner,
                np.concatenate(boxes) if boxes else np.zeros((0, 4), np.int64))

    def _compute(self, item) -> np.ndarray:
        """Region vectors of one item's file, computed now (and kept for this process)."""
        from sharpclip.data.imagefiles import ImageFileError, load_rgb
        from sharpclip.data.regions import region_crops

        if item is None:
            return np.zeros((0, self.dim), np.float32)
        key = (item.id, item.hash or "")
        if key not in self._on_demand:
            try:
                crops = region_crops(load_rgb(item.path), self.grid)
            except (ImageFileError, OSError) as error:
                logger.warning("%s: no region vectors (%s); its whole image stands in", item.path,
                               error)
                self._on_demand[key] = self.vectors([item.id])
                return self._on_demand[key]
            encode = self._encode_images or self.coll.model.encode_images
            self._on_demand[key] = encode(crops)
            self.computed_on_demand += 1
        return self._on_demand[key]
