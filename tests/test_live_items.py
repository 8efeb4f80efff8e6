"""The live items' arrays (``store.live_items``): lookups by path and by id against a plain dict,
the packed cache layout, and the collection's use of them (cached per generation, never past a
change)."""

from __future__ import annotations

import shutil
import sqlite3
import types

import numpy as np
import pytest

from sharpclip.collection import Collection
from sharpclip.store import live_items
from sharpclip.store.collection import ItemUpdate
from sharpclip.store.compact import compact
from sharpclip.store.live_items import LiveItems


def random_items(rng, n):
    """(rows ascending, ids in no order, paths): unicode, spaces, shared prefixes."""
    rows = np.sort(rng.choice(10 * n + 1, n, replace=False))
    ids = rng.permutation(np.arange(1, 3 * n + 1))[:n]
    words = ["a", "b c", "δ", "猫", "x" * 40, "ü.png"]
    paths = [f"/data/{'/'.join(rng.choice(words, rng.integers(1, 4)))}/{i}.jpg" for i in range(n)]
    return rows.tolist(), ids.tolist(), paths


@pytest.mark.parametrize("n", [0, 1, 257])
def test_lookups_match_a_dict(n):
    rng = np.random.default_rng(n)
    rows, ids, paths = random_items(rng, n)
    items = LiveItems.build(rows, ids, paths)
    assert items.rows.tolist() == rows and items.ids.tolist() == ids
    for i, path in enumerate(paths):
        assert items.find(path) == i and items.path_at(i) == path
    assert items.find("/data/nowhere.jpg") is None
    asked = ids[::3] + [0, 10 * n + 7, -1]
    assert items.paths_by_id(asked) == {i: p for i, p in zip(ids, paths) if i in asked}
    assert items.paths_by_id([]) == {}


@pytest.mark.parametrize("crc", [0, 99, 0xFFFFFFFF])  # the lowest and highest CRC too
def test_paths_that_share_a_crc_are_told_apart(monkeypatch, crc):
    rng = np.random.default_rng(1)
    rows, ids, paths = random_items(rng, 40)
    monkeypatch.setattr(live_items, "zlib", types.SimpleNamespace(crc32=lambda data: crc))
    items = LiveItems.build(rows, ids, paths)
    assert [items.find(p) for p in paths] == list(range(40))
    assert items.find(paths[0] + "x") is None


def test_pack_round_trips_and_a_foreign_array_is_refused():
    rng = np.random.default_rng(2)
    items = LiveItems.build(*random_items(rng, 33))
    packed = items.pack()
    back = LiveItems.unpack(packed)
    for name in ("live", "offsets", "blob", "by_path", "by_id"):
        np.testing.assert_array_equal(getattr(back, name), getattr(items, name))
    assert LiveItems.unpack(packed[:-1]) is None
    assert LiveItems.unpack(packed.astype(np.float64)) is None
    assert LiveItems.unpack(np.zeros(5, np.int64)) is None
    broken = packed.copy()
    broken[1] += 1  # the blob's length no longer matches the offsets
    assert LiveItems.unpack(broken) is None


def commit(coll, names, rng, **kw):
    """Commit random vectors for items ``/nowhere/NAME.png`` (under ``writing``)."""
    vectors = rng.standard_normal((len(names), coll.info.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    coll.commit([ItemUpdate(f"/nowhere/{n}.png", f"h{n}", 1, 1, vector_index=i, **kw)
                 for i, n in enumerate(names)], vectors)


def expected(coll):
    """Live (row, id, path) triples read straight from the catalog, by row."""
    return sorted((i.row, i.id, i.path) for i in coll.items("ok"))


def seen(coll):
    items = coll.snapshot().items
    return [(int(r), int(i), items.path_at(at))
            for at, (r, i) in enumerate(zip(items.rows.tolist(), items.ids.tolist()))]


def catalog_reads(coll):
    """The statements that read every live item, counted as ``coll`` runs them."""
    statements = []
    coll._db.set_trace_callback(lambda s: statements.append(s) if "row, id, CAST(path" in s else None)
    return statements


def test_each_change_is_seen_and_a_new_process_loads_the_cache(tmp_path, model):
    rng = np.random.default_rng(3)
    path = tmp_path / "c.sc"
    coll = Collection.create(path, model)
    steps = [
        lambda: commit(coll, range(20), rng),
        lambda: coll.remove(["/nowhere/3.png", "/nowhere/11.png"]),
        lambda: commit(coll, [5, 6], rng),  # new content: new rows
        lambda: coll.commit([ItemUpdate("/nowhere/moved.png", "h7", 1, 1,
                                        previous_path="/nowhere/7.png")]),
        lambda: coll.commit([ItemUpdate("/nowhere/8.png", None, 1, 1, status="error",
                                        reason="decode", error="broken")]),
        lambda: compact(coll),
    ]
    for step in steps:
        with coll.writing():
            step()
        assert seen(coll) == expected(coll)  # this process: the new generation's items
        fresh = Collection.open(path, model)
        reads = catalog_reads(fresh)
        assert seen(fresh) == expected(coll) and reads == []  # another: from the cache
        assert coll.live_item("/nowhere/0.png") == (coll.item("/nowhere/0.png").id,
                                                    coll.item("/nowhere/0.png").row)
        fresh.close()
    assert coll.live_item("/nowhere/7.png") is None and coll.live_item("/nowhere/8.png") is None
    assert coll.live_item("/nowhere/moved.png") is not None


def test_a_restored_catalog_never_takes_a_cache_of_the_same_generation(tmp_path, model):
    """A catalog copied back from a backup reaches the generation number a cache was written at
    with other items: the generation's random id tells them apart."""
    rng = np.random.default_rng(4)
    path = tmp_path / "c.sc"
    coll = Collection.create(path, model)
    with coll.writing():
        commit(coll, range(5), rng)
    backup = tmp_path / "backup.sqlite"
    with sqlite3.connect(backup) as copy:
        coll._db.backup(copy)
    with coll.writing():
        commit(coll, ["a"], rng)
    first = seen(coll)  # cached at generation g + 1 with item "a"
    coll.close()
    shutil.copy(backup, path / "collection.sqlite")
    for suffix in ("-wal", "-shm"):
        (path / f"collection.sqlite{suffix}").unlink(missing_ok=True)
    coll = Collection.open(path, model)
    with coll.writing():
        commit(coll, ["b"], rng)  # generation g + 1 again, as many rows, another item
    assert seen(coll) == expected(coll) != first
