"""`sharpclip check`, `check --repair`, `compact` and the schema migration: each damage is
found with the items it affects, repaired back to vectors that match the files, and a search
never returns a wrong file meanwhile."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from scenes import write_scenes
from sharpclip.cli import main
from sharpclip.collection import Collection
from sharpclip.data import shapes
from sharpclip.data.imagefiles import load_rgb
from sharpclip.ingest import IndexConfig
from sharpclip.repair import repair_collection
from sharpclip.store.collection import CollectionError, ItemUpdate
from sharpclip.store.compact import compact
from sharpclip.store.integrity import check_collection
from sharpclip.store.schema import SCHEMA_VERSION
from sharpclip.store.search_index import SearchConfig

INLINE = IndexConfig(workers=0, batch_size=4, progress=False)
FIXTURE = Path(__file__).parent / "fixtures" / "collection_v1"


@pytest.fixture
def indexed(tmp_path, model):
    paths = write_scenes(tmp_path / "in", 12, seed=41)
    with Collection.create(tmp_path / "c.sc", model) as coll:
        coll.add([tmp_path / "in"], config=INLINE)
    return tmp_path / "c.sc", paths


def assert_matches_files(coll_path: Path, model, paths: list[Path]) -> None:
    """Every file is one live item whose vector is its own image's embedding."""
    with Collection.open(coll_path) as coll:
        assert coll.counts()["ok"] == len(paths)
        expected = model.encode_images([load_rgb(p) for p in paths])
        got = np.stack([coll.vectors()[coll.item(p).row] for p in paths])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        rows, _ = coll.live_rows()
        assert len(set(rows.tolist())) == len(paths)


def kinds(report) -> set[tuple[str, str]]:
    return {(p.kind, p.severity) for p in report.problems}


def test_a_fresh_collection_checks_clean(indexed):
    report = check_collection(indexed[0])
    assert report.clean and report.problems == []
    assert report.stats["batches"] == 3 and report.stats["items"] == 12


def test_flipped_bytes_are_found_skipped_by_search_and_repaired(indexed, model):
    coll_path, paths = indexed
    with Collection.open(coll_path) as coll:
        victim = coll.item(paths[5])
    file = coll_path / "vectors" / "image.f32"
    with open(file, "r+b") as handle:  # same length, other bytes: only a checksum can tell
        handle.seek(victim.row * model.dim * 4)
        handle.write(np.full(model.dim, 0.3, np.float32).tobytes())
    report = check_collection(coll_path)
    (problem,) = [p for p in report.problems if p.kind == "checksum"]
    assert problem.severity == "error"
    assert str(paths[5]) in problem.paths and len(problem.paths) == 4  # its whole batch of 4
    with Collection.open(coll_path) as coll:
        for path in paths:  # no search returns a file whose vector is damaged
            hits = coll.search(image=path, k=12).hits
            assert all(h.path not in problem.paths for h in hits)
    repaired = repair_collection(coll_path, report, INLINE)
    assert repaired.reembedded == 4 and repaired.after.clean
    assert_matches_files(coll_path, model, paths)
    # the 4 damaged rows are orphaned now: notices, reclaimed by compact
    assert kinds(repaired.after) == {("orphans", "notice"), ("checksum", "notice")}


def test_item_pointing_at_no_row_is_found_and_repaired(indexed, model):
    coll_path, paths = indexed
    db = sqlite3.connect(coll_path / "collection.sqlite")
    with db:
        db.execute("UPDATE items SET row = 99 WHERE path = ?", (str(paths[2]),))
        db.execute("UPDATE items SET row = (SELECT row FROM items WHERE path = ?) WHERE path = ?",
                   (str(paths[0]), str(paths[1])))
    db.close()
    report = check_collection(coll_path)
    (problem,) = [p for p in report.problems if p.kind == "rows"]
    assert set(problem.paths) == {str(paths[0]), str(paths[1]), str(paths[2])}
    assert repair_collection(coll_path, report, INLINE).after.clean
    assert_matches_files(coll_path, model, paths)


def test_missing_file_of_a_lost_item_is_forgotten(indexed, model):
    coll_path, paths = indexed
    os.truncate(coll_path / "vectors" / "image.f32", 4 * model.dim * 4)
    paths[-1].unlink()
    report = check_collection(coll_path)
    assert ("vectors", "error") in kinds(report)
    repaired = repair_collection(coll_path, report, INLINE)
    assert (repaired.reembedded, repaired.forgotten) == (7, 1) and repaired.after.clean
    assert_matches_files(coll_path, model, paths[:-1])


def test_torn_tail_is_a_notice_and_trimmed_by_the_next_writer(indexed, model):
    coll_path, _ = indexed
    with open(coll_path / "vectors" / "image.f32", "ab") as handle:
        handle.write(b"\x01" * model.dim * 4 * 2)
    report = check_collection(coll_path)
    assert kinds(report) == {("vectors", "notice")} and report.clean
    with Collection.open(coll_path) as coll, coll.writing():
        pass
    assert check_collection(coll_path).problems == []


@pytest.mark.parametrize("damage", ["garbage", "other-collection"])
def test_damaged_ann_index_is_skipped_by_search_and_rebuilt(tmp_path, model, damage, monkeypatch):
    monkeypatch.setattr("sharpclip.store.collection.SearchConfig",
                        lambda: SearchConfig(ann_threshold=4))
    monkeypatch.setattr("sharpclip.store.integrity.Collection.uses_ann",
                        staticmethod(lambda live, exact, config=None: not exact and live >= 4))
    paths = write_scenes(tmp_path / "in", 10, seed=42)
    with Collection.create(tmp_path / "c.sc", model) as coll:
        coll.add([tmp_path / "in"], config=INLINE)
    index_file = tmp_path / "c.sc" / "index" / "image.faiss"
    assert index_file.exists()
    if damage == "garbage":
        index_file.write_bytes(b"SHARPCLIP-ANN\n" + b"\xff" * 64)
    else:  # a well-formed index whose vectors are another collection's
        other = write_scenes(tmp_path / "other", 10, seed=43, prefix="o")
        with Collection.create(tmp_path / "o.sc", model) as coll:
            coll.add([tmp_path / "other"], config=INLINE)
        shutil.copy(tmp_path / "o.sc" / "index" / "image.faiss", index_file)
        assert other
    report = check_collection(tmp_path / "c.sc")
    assert ("index", "warning") in kinds(report)
    with Collection.open(tmp_path / "c.sc") as coll:
        for path in paths:
            hit = coll.search(image=path, k=1).hits[0]
            assert hit.path == str(path) and hit.score == pytest.approx(1.0, abs=1e-4)
    repaired = repair_collection(tmp_path / "c.sc", report, INLINE)
    assert repaired.index_rebuilt and repaired.after.clean


def test_an_index_cut_in_place_under_a_reader_that_maps_it_is_dropped_not_touched(
        tmp_path, model, monkeypatch, caplog):
    """A reader maps the index's graph. Truncating the file in place (same inode: the pages
    behind the mapping gone) is seen by the next search's check of the file, before the mapping
    is touched: that search scans exactly and warns, and does not crash."""
    monkeypatch.setattr("sharpclip.store.collection.SearchConfig",
                        lambda: SearchConfig(ann_threshold=4))
    paths = write_scenes(tmp_path / "in", 10, seed=42)
    with Collection.create(tmp_path / "c.sc", model) as coll:
        coll.add([tmp_path / "in"], config=INLINE)
    index_file = tmp_path / "c.sc" / "index" / "image.faiss"
    with Collection.open(tmp_path / "c.sc") as coll:
        assert coll.search(image=paths[0], k=1).query["mode"] == "ann"
        with open(index_file, "r+b") as f:
            f.truncate(index_file.stat().st_size // 3)
        with caplog.at_level("WARNING"):
            for path in paths:
                result = coll.search(image=path, k=1)
                assert result.query["mode"] == "exact" and result.hits[0].path == str(path)
    assert "unusable ANN index" in caplog.text


def test_damaged_cache_is_reported_and_deleted(indexed, model):
    coll_path, paths = indexed
    with Collection.open(coll_path, model) as coll:
        coll.search(like=paths[0], k=3, condition="colour")
    cache = next((coll_path / "cache").glob("condition-*-w.npy"))
    cache.write_bytes(cache.read_bytes()[:-8] + b"\x00" * 8)
    report = check_collection(coll_path)
    assert kinds(report) == {("cache", "warning")}
    repaired = repair_collection(coll_path, report, INLINE)
    assert repaired.caches_deleted == 1 and not cache.exists() and repaired.after.clean


def test_garbage_catalog_is_an_error_repair_refuses(indexed):
    coll_path, _ = indexed
    with open(coll_path / "collection.sqlite", "r+b") as handle:
        handle.write(b"\x00" * 100)
    report = check_collection(coll_path)
    assert kinds(report) == {("catalog", "error")}
    with pytest.raises(CollectionError, match="backup"):
        repair_collection(coll_path, report, INLINE)


def test_check_cli_exit_status_and_json(indexed, model, capsys):
    coll_path, paths = indexed
    c = str(coll_path)
    assert main(["check", "-c", c]) == 0
    assert "clean" in capsys.readouterr().out
    os.truncate(coll_path / "vectors" / "image.f32", 6 * model.dim * 4)
    assert main(["check", "-c", c]) == 1
    out = capsys.readouterr().out
    assert "error: vectors" in out and "--repair" in out and str(paths[4]) in out
    assert main(["check", "-c", c, "--repair", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert not document["clean"] and document["repair"]["after"]["clean"]
    assert main(["check", "-c", str(coll_path.parent / "nothing")]) == 1
    assert "not a sharpclip collection" in capsys.readouterr().err


# -- compact ----------------------------------------------------------------------------------


def churn(coll_path: Path, folder: Path, model, cycles: int) -> None:
    """index/remove cycles that orphan rows: each cycle changes two files and removes one."""
    rng = np.random.default_rng(0)
    for cycle in range(cycles):
        files = sorted(folder.glob("*.png"))
        for path in files[:2]:
            shapes.render(shapes.random_spec(rng, "single"), 64, rng).save(path)
            os.utime(path, ns=(0, 10**18 + cycle))
        with Collection.open(coll_path, model) as coll:
            coll.add([folder], config=INLINE)
            with coll.writing():
                coll.remove([files[-1]])
        files[-1].unlink()
        write_scenes(folder, 1, seed=100 + cycle, prefix=f"new{cycle}-")


def test_compact_keeps_every_item_and_reclaims_the_orphans(indexed, model):
    coll_path, _ = indexed
    folder = coll_path.parent / "in"
    churn(coll_path, folder, model, cycles=4)
    with Collection.open(coll_path, model) as coll:
        coll.add([folder], config=INLINE)
        rows_before = coll.vectors().shape[0]
        live = coll.counts()["ok"]
        queries = [p for p in sorted(folder.glob("*.png"))[:3]]
        before = [[(h.path, round(h.score, 5)) for h in coll.search(image=q, k=5).hits]
                  for q in queries]
        with coll.writing():
            report = compact(coll)
        assert (report.rows_before, report.rows_after) == (rows_before, live)
        assert rows_before > live and report.bytes_freed == (rows_before - live) * model.dim * 4
        after = [[(h.path, round(h.score, 5)) for h in coll.search(image=q, k=5).hits]
                 for q in queries]
        assert after == before
    assert_matches_files(coll_path, model, sorted(folder.glob("*.png")))
    assert check_collection(coll_path).problems == []
    assert [f.name for f in (coll_path / "vectors").iterdir()] != ["image.f32"]  # a new file
    assert len(list((coll_path / "vectors").iterdir())) == 1


def test_compact_rebuilds_the_ann_index(tmp_path, model, monkeypatch):
    monkeypatch.setattr("sharpclip.store.collection.SearchConfig",
                        lambda: SearchConfig(ann_threshold=4))
    monkeypatch.setattr("sharpclip.store.compact.SearchConfig",
                        lambda: SearchConfig(ann_threshold=4))
    paths = write_scenes(tmp_path / "in", 10, seed=44)
    with Collection.create(tmp_path / "c.sc", model) as coll:
        coll.add([tmp_path / "in"], config=INLINE)
        with coll.writing():
            coll.remove(paths[:3])
            compact(coll)
        indexes = list((tmp_path / "c.sc" / "index").iterdir())
        assert len(indexes) == 1 and indexes[0].stem == coll.snapshot().file.stem
        index, fresh = coll.backend.reader_index(*coll.read_vectors())
        assert fresh.size == 0 and len(index) == 7
        assert coll.search(image=paths[5], k=1).hits[0].path == str(paths[5])


def test_compact_cli(indexed, model, capsys):
    coll_path, paths = indexed
    with Collection.open(coll_path) as coll, coll.writing():
        coll.remove(paths[:4])
    assert main(["compact", "-c", str(coll_path)]) == 0
    assert "12 vector rows to 8" in capsys.readouterr().out
    assert_matches_files(coll_path, model, paths[4:])


# -- schema migration ----------------------------------------------------------------------


def test_a_schema_1_collection_is_migrated_on_open(tmp_path):
    coll_path = tmp_path / "v1.sc"
    shutil.copytree(FIXTURE, coll_path)
    before = (coll_path / "vectors" / "image.f32").read_bytes()
    with Collection.open(coll_path) as coll:
        items = coll.items()
        assert [(Path(i.path).name, i.status, i.row) for i in items] == [
            ("bad.png", "error", None), ("scene0.png", "ok", 0), ("scene1.png", "ok", 1),
            ("scene2.png", "ok", 2), ("scene3.png", "ok", 3), ("scene4.png", "ok", 6)]
        vectors = coll.vectors()
        assert vectors.shape == (7, coll.info.dim)
        _, rows = coll.nearest(np.array(vectors[[0, 6]]), 1)
        assert rows[:, 0].tolist() == [0, 6]
    assert (coll_path / "vectors" / "image.f32").read_bytes() == before
    db = sqlite3.connect(coll_path / "collection.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
        str(SCHEMA_VERSION),)
    assert db.execute("SELECT start, count FROM vector_batches").fetchall() == [(0, 7)]
    db.close()
    report = check_collection(coll_path)
    assert report.clean and kinds(report) == {("orphans", "notice")}


def test_a_newer_schema_is_refused_with_the_fix(indexed):
    coll_path, _ = indexed
    db = sqlite3.connect(coll_path / "collection.sqlite")
    with db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(CollectionError, match="newer sharpclip.*pip install --upgrade"):
        Collection.open(coll_path)


def test_commit_records_a_checksum_per_batch(tmp_path, model):
    with Collection.create(tmp_path / "c.sc", model) as coll, coll.writing():
        vectors = np.random.default_rng(0).standard_normal((5, model.dim)).astype(np.float32)
        coll.commit([ItemUpdate(f"/x/{i}.png", str(i), 1, 1, vector_index=i) for i in range(3)],
                    vectors[:3])
        coll.commit([ItemUpdate(f"/y/{i}.png", str(i), 1, 1, vector_index=i) for i in range(2)],
                    vectors[3:])
        import hashlib

        batches = coll._db.execute("SELECT start, count, sha256 FROM vector_batches").fetchall()
        assert batches == [(0, 3, hashlib.sha256(vectors[:3].tobytes()).hexdigest()),
                           (3, 2, hashlib.sha256(vectors[3:].tobytes()).hexdigest())]
