"""Vector sets with several vectors per item: the catalog's rows per item, commits of several
sets, the schema-2 migration, ingest of region crops into new and existing collections, compact
and repair of a multi-vector set."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from scenes import write_scenes
from sharpclip.collection import Collection
from sharpclip.data.imagefiles import load_rgb
from sharpclip.data.regions import RegionGrid, region_crops
from sharpclip.ingest import IndexConfig
from sharpclip.store.collection import REGIONS_SET, CollectionError, ItemUpdate
from sharpclip.store.compact import compact
from sharpclip.store.integrity import check_collection
from sharpclip.store.schema import SCHEMA_VERSION

FIXTURE_V2 = Path(__file__).parent / "fixtures" / "collection_v2"
GRID = RegionGrid("whole+2x2")
PLAIN = IndexConfig(workers=0, batch_size=4, progress=False)
REGIONS = IndexConfig(workers=0, batch_size=4, progress=False, regions=GRID)


def expected_regions(model, path: Path) -> np.ndarray:
    return model.encode_images(region_crops(load_rgb(path), GRID))


def stored_regions(coll, path: Path) -> np.ndarray:
    item = coll.item(path)
    (start,), (count,) = coll.rows_for_items(REGIONS_SET, [item.id])
    return np.asarray(coll.read_vectors(REGIONS_SET)[1][start:start + count])


def assert_regions_match_files(coll_path: Path, model, paths) -> None:
    with Collection.open(coll_path) as coll:
        for path in paths:
            np.testing.assert_allclose(stored_regions(coll, path), expected_regions(model, path),
                                       atol=1e-5)
        assert coll.items_lacking(REGIONS_SET) == []
    assert check_collection(coll_path).clean


def test_a_schema_2_collection_is_migrated_and_takes_a_multi_vector_set(tmp_path, model):
    coll_path = tmp_path / "v2.sc"
    shutil.copytree(FIXTURE_V2, coll_path)
    before = (coll_path / "vectors" / "image.f32").read_bytes()
    with Collection.open(coll_path) as coll:
        assert [(Path(i.path).name, i.status, i.row) for i in coll.items()] == [
            ("notes.png", "error", None), ("scene000.png", "ok", 0), ("scene002.png", "ok", 2),
            ("scene003.png", "ok", 6), ("scene004.png", "ok", 4), ("scene005.png", "ok", 5)]
        _, rows = coll.nearest(np.array(coll.vectors()[[2, 6]]), 1)
        assert rows[:, 0].tolist() == [2, 6]
        with coll.writing():
            coll.add_vector_set(REGIONS_SET, coll.info.dim, {"grid": GRID.spec})
            item = coll.items("ok")[2]
            parts = np.eye(5, coll.info.dim, dtype=np.float32)
            coll.commit([ItemUpdate(item.path, item.hash, item.size, item.mtime_ns,
                                    set_rows=((REGIONS_SET, 0, 5),))], {REGIONS_SET: parts})
        starts, counts = coll.rows_for_items(REGIONS_SET, [item.id, coll.items("ok")[0].id])
        assert starts.tolist() == [0, 0] and counts.tolist() == [5, 0]
        scores, rows = coll.nearest(parts[[3]], 1, vector_set=REGIONS_SET)
        assert rows[0, 0] == 3 and scores[0, 0] == pytest.approx(1.0)
        assert coll.snapshot(REGIONS_SET).live_ids.tolist() == [item.id] * 5
        assert coll.item(item.path).row == 6  # its image vector untouched
    assert (coll_path / "vectors" / "image.f32").read_bytes() == before
    db = sqlite3.connect(coll_path / "collection.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
        str(SCHEMA_VERSION),)
    db.close()
    report = check_collection(coll_path)
    assert report.clean and {p.kind for p in report.problems} == {"orphans"}


def test_new_content_and_failure_drop_an_items_other_sets_removal_cascades(tmp_path, model):
    dim = model.dim
    rng = np.random.default_rng(0)
    with Collection.create(tmp_path / "c.sc", model) as coll, coll.writing():
        coll.add_vector_set(REGIONS_SET, dim, {"grid": GRID.spec})
        image, parts = rng.standard_normal((3, dim)), rng.standard_normal((7, dim))
        coll.commit([ItemUpdate("/x/a.png", "a", 1, 1, vector_index=0, set_rows=((REGIONS_SET, 0, 3),)),
                     ItemUpdate("/x/b.png", "b", 1, 1, vector_index=1, set_rows=((REGIONS_SET, 3, 4),)),
                     ItemUpdate("/x/c.png", "c", 1, 1, vector_index=2)],
                    {"image": image, REGIONS_SET: parts})
        ids = [coll.item(p).id for p in ("/x/a.png", "/x/b.png", "/x/c.png")]
        starts, counts = coll.rows_for_items(REGIONS_SET, ids)
        assert starts.tolist() == [0, 3, 0] and counts.tolist() == [3, 4, 0]
        np.testing.assert_array_equal(coll.read_vectors(REGIONS_SET)[1][3:7],
                                      parts[3:].astype(np.float32))
        assert len(coll.items_lacking(REGIONS_SET)) == 1
        coll.commit([ItemUpdate("/x/a.png", "a2", 2, 2, vector_index=0)], rng.standard_normal((1, dim)))
        coll.commit([ItemUpdate("/x/b.png", None, 3, 3, status="error", reason="not_an_image")])
        assert coll.rows_for_items(REGIONS_SET, ids)[1].tolist() == [0, 0, 0]
        assert coll.snapshot(REGIONS_SET).live_rows.tolist() == []
        coll.commit([ItemUpdate("/x/c.png", "c", 1, 1, set_rows=((REGIONS_SET, 0, 2),))],
                    {REGIONS_SET: rng.standard_normal((2, dim))})
        assert coll.snapshot(REGIONS_SET).live_rows.tolist() == [7, 8]
        coll.remove(["/x/c.png"])
        assert coll.snapshot(REGIONS_SET).live_rows.tolist() == []
        assert coll._db.execute("SELECT COUNT(*) FROM item_vectors").fetchone() == (0,)


def test_each_change_to_a_multi_vector_set_is_seen_and_a_new_process_loads_its_cache(
        tmp_path, model):
    """A set's live rows (and their items) are read from the catalog once per generation and
    cached (``cache/live-regions.npy``): the writer's process and a fresh one see every
    change, and the fresh one runs no catalog join for them."""
    dim, rng = model.dim, np.random.default_rng(5)
    path = tmp_path / "c.sc"
    coll = Collection.create(path, model)

    def commit(names, parts):
        image = rng.standard_normal((len(names), dim))
        coll.commit([ItemUpdate(f"/x/{n}.png", f"{n}{rng.integers(1 << 30)}", 1, 1, vector_index=i,
                                set_rows=((REGIONS_SET, 3 * i, parts),)) for i, n in enumerate(names)],
                    {"image": image, REGIONS_SET: rng.standard_normal((parts * len(names), dim))})

    def expected():  # each live row of the set and its item, straight from the catalog
        pairs = coll._db.execute(
            "SELECT v.start, v.count, v.item_id FROM item_vectors v JOIN items i ON i.id = "
            "v.item_id WHERE v.vector_set = ? AND i.status = 'ok'", (REGIONS_SET,)).fetchall()
        return sorted((start + j, item) for start, count, item in pairs for j in range(count))

    def seen(c):
        snap = c.snapshot(REGIONS_SET)
        return list(zip(snap.live_rows.tolist(), snap.live_ids.tolist()))

    with coll.writing():
        coll.add_vector_set(REGIONS_SET, dim, {"grid": GRID.spec})
    steps = [lambda: commit("abcd", 3), lambda: coll.remove(["/x/b.png"]),
             lambda: commit("ae", 3),  # new content for a: new rows, its old ones orphaned
             lambda: coll.commit([ItemUpdate("/x/c.png", None, 1, 1, status="error",
                                             reason="not_an_image")]),
             lambda: compact(coll)]
    for step in steps:
        with coll.writing():
            step()
        assert seen(coll) == expected() != []
        statements: list[str] = []
        with Collection.open(path, model) as fresh:
            fresh._db.set_trace_callback(statements.append)
            assert seen(fresh) == expected()
        assert not [s for s in statements if "JOIN" in s]
    coll.close()


def test_index_regions_adds_the_set_without_re_embedding_images(tmp_path, model):
    folder = tmp_path / "in"
    paths = write_scenes(folder, 6, seed=61)
    coll_path = tmp_path / "c.sc"
    with Collection.create(coll_path, model) as coll:
        coll.add([folder], config=PLAIN)
    image_file = (coll_path / "vectors" / "image.f32").read_bytes()
    with Collection.open(coll_path) as coll:
        report = coll.add([folder], config=REGIONS)
        assert (report.completed, report.embedded, report.new, report.unchanged) == (6, 0, 0, 0)
        again = coll.add([folder], config=REGIONS)
        assert (again.completed, again.unchanged) == (0, 6)
    assert (coll_path / "vectors" / "image.f32").read_bytes() == image_file
    assert_regions_match_files(coll_path, model, paths)
    # later runs keep the set complete without --regions; a changed file gets new regions
    more = write_scenes(folder, 2, seed=62, prefix="late")
    load_rgb(more[0]).rotate(90).save(paths[0])
    os.utime(paths[0], ns=(0, 10**18))
    with Collection.open(coll_path) as coll:
        report = coll.add([folder], config=PLAIN)
        assert (report.new, report.changed) == (2, 1)
    assert_regions_match_files(coll_path, model, paths + more)
    with Collection.open(coll_path) as coll, pytest.raises(CollectionError, match="whole.2x2"):
        coll.add([folder], config=IndexConfig(workers=0, progress=False, regions=RegionGrid("3x3")))


def test_regions_in_one_run_with_workers_equal_inline(tmp_path, model):
    folder = tmp_path / "in"
    paths = write_scenes(folder, 5, seed=63)
    with Collection.create(tmp_path / "w.sc", model) as coll:
        coll.add([folder], config=IndexConfig(workers=2, batch_size=2, progress=False, regions=GRID))
    assert_regions_match_files(tmp_path / "w.sc", model, paths)


def test_compact_keeps_every_items_regions(tmp_path, model):
    folder = tmp_path / "in"
    paths = write_scenes(folder, 6, seed=64)
    coll_path = tmp_path / "c.sc"
    with Collection.create(coll_path, model) as coll:
        coll.add([folder], config=REGIONS)
    paths[1].unlink()
    load_rgb(paths[4]).transpose(0).save(paths[2])
    os.utime(paths[2], ns=(0, 10**18))
    with Collection.open(coll_path) as coll:
        coll.add([folder], config=PLAIN)
        with coll.writing():
            report = compact(coll)
        assert report.rows_after == 5
        assert coll.vector_set(REGIONS_SET).rows == 5 * len(GRID)
    kept = [p for p in paths if p.exists()]
    assert_regions_match_files(coll_path, model, kept)
    assert {p.kind for p in check_collection(coll_path).problems} == set()


def test_a_cut_regions_file_loses_only_regions_and_index_restores_them(tmp_path, model):
    folder = tmp_path / "in"
    paths = write_scenes(folder, 8, seed=65)
    coll_path = tmp_path / "c.sc"
    with Collection.create(coll_path, model) as coll:
        coll.add([folder], config=REGIONS)
    file = coll_path / "vectors" / "regions.f32"
    os.truncate(file, file.stat().st_size // 3)
    assert not check_collection(coll_path).clean
    with Collection.open(coll_path) as coll:  # a search meanwhile crops from the files
        hits = coll.search(text="a red circle and a blue square", k=3, rerank="parts").hits
        assert len(hits) == 3 and all("parts" in h.why for h in hits)
    with Collection.open(coll_path) as coll:
        report = coll.add([folder], config=PLAIN)
        assert report.embedded == 0 and report.completed >= 4  # images kept, regions re-made
        assert coll.counts() == {"ok": 8, "error": 0}
    assert_regions_match_files(coll_path, model, paths)
