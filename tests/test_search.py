"""Searching a collection: text, image, --like, conditions, deletions, exact vs ANN, the CLI."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import faiss
import numpy as np
import pytest

from sharpclip.cli import main
from sharpclip.collection import Collection
from sharpclip.data import shapes
from sharpclip.ingest import IndexConfig
from sharpclip.store.collection import ItemUpdate
from sharpclip.store.search_index import FORMAT_VERSION, AnnIndex, SearchConfig
from test_search_index import legacy_file

INLINE = IndexConfig(workers=0, batch_size=16, progress=False)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, model):
    """120 labelled single-object scenes indexed into a collection."""
    root = tmp_path_factory.mktemp("gallery")
    labels = {}
    for i, sample in enumerate(shapes.generate(shapes.ShapesConfig(size=120, seed=11, max_count=1))):
        path = root / "images" / f"s{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        sample.image.save(path)
        labels[str(path)] = sample.spec
    coll = Collection.create(root / "c.sc", model)
    coll.add([root / "images"], config=INLINE)
    return coll, labels


def test_text_search_finds_the_named_colour(gallery):
    coll, labels = gallery
    hits = coll.search(text="a photo of a red shape", k=5).hits
    assert len(hits) == 5 and all(a.score >= b.score for a, b in pairwise(hits))
    assert all(labels[h.path].objects[0].colour == "red" for h in hits)


def test_like_and_image_queries_find_the_item_itself(gallery):
    coll, labels = gallery
    path = sorted(labels)[7]
    assert coll.search(like=path, k=3).hits[0].path == path
    assert coll.search(image=path, k=3).hits[0].path == path


def test_condition_ranks_by_that_condition_and_cache_follows_generation(gallery):
    coll, labels = gallery
    query = sorted(labels)[3]
    colour = labels[query].objects[0].colour
    hits = coll.search(like=query, k=6, condition="colour").hits
    assert sum(labels[h.path].objects[0].colour == colour for h in hits) >= 5
    cached = sorted(p.name for p in (coll.path / "cache").glob("condition-*.npy"))
    assert len(cached) == 2
    again = coll.search(like=query, k=6, condition="colour").hits
    assert [h.path for h in again] == [h.path for h in hits]
    with pytest.raises(ValueError, match="compares images"):
        coll.search(text="red", condition="colour")
    with pytest.raises(ValueError, match="colour"):
        coll.search(like=query, condition="no-such-condition")


def test_removed_items_never_come_back(tmp_path, model):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, sample in enumerate(shapes.generate(shapes.ShapesConfig(size=30, seed=12))):
        sample.image.save(folder / f"x{i:02d}.png")
    coll = Collection.create(tmp_path / "c.sc", model)
    coll.add([folder], config=INLINE)
    target = folder / "x05.png"
    assert coll.search(image=target, k=1).hits[0].path == str(target)
    with coll.writing():
        assert coll.remove([target]) == 1
    for exact in (True, False):
        found = {h.path for h in coll.search(image=target, k=30, exact=exact).hits}
        assert str(target) not in found and len(found) == 29
    _, rows = coll.nearest(coll.model.encode_texts(["a star"]), 30,
                           config=SearchConfig(ann_threshold=1))
    removed_row = int(np.setdiff1d(np.arange(30), coll.live_rows()[0])[0])
    assert removed_row not in rows[0].tolist()


def test_ann_agrees_with_exact(gallery):
    coll, _ = gallery
    queries = coll.model.encode_texts([f"a photo of a {c} {s}" for c in ("red", "blue", "green")
                                       for s in ("circle", "star", "square")])
    _, exact_rows = coll.nearest(queries, 10, exact=True)
    with coll.writing():  # the writer builds the index; searches only read it
        assert coll.sync_index(SearchConfig(ann_threshold=1))
    assert (coll.path / "index" / "image.faiss").exists() and coll.has_index()
    _, ann_rows = coll.nearest(queries, 10, config=SearchConfig(ann_threshold=1))
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ann_rows, exact_rows)])
    assert recall >= 0.95


def test_real_photos_end_to_end_through_the_cli(tmp_path, capsys):
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    folder = tmp_path / "photos"
    (folder / "cats").mkdir(parents=True)
    for name in ("astronaut", "coffee", "rocket", "camera", "horse"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.jpg", quality=92)
    for name in ("chelsea", "cat"):
        Image.fromarray(getattr(data, name)()).save(folder / "cats" / f"{name}.png")
    coll = str(tmp_path / "photos.sc")
    assert main(["index", str(folder), "-c", coll, "--workers", "0", "-q"]) == 0
    assert "indexed 7 new" in capsys.readouterr().out
    assert main(["search", "a cat", "-c", coll, "-k", "7", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["hits"]) == 7 and result["query"]["text"] == "a cat"
    assert set(result["timing_ms"]) == {"encode", "candidates"}
    # A re-encoded, resized copy of a photo finds the original first.
    copy = tmp_path / "query.jpg"
    Image.fromarray(data.coffee()).resize((300, 200)).save(copy, quality=70)
    assert main(["search", "--image", str(copy), "-c", coll, "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert Path(hits[0]["path"]).name == "coffee.jpg"
    assert main(["search", "--like", str(folder / "cats" / "cat.png"), "-c", coll, "-k", "2"]) == 0
    assert "cat.png" in capsys.readouterr().out.splitlines()[0]
    assert main(["remove", str(folder / "cats"), "-c", coll]) == 0
    assert "removed 2 items" in capsys.readouterr().out
    assert main(["status", "-c", coll, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["items"], status["failed"]) == (5, 0)
    assert main(["search", "--like", str(folder / "cats" / "cat.png"), "-c", coll]) == 1
    assert "not an indexed item" in capsys.readouterr().err
    assert main(["index", str(folder), "-c", coll, "--model", str(tmp_path / "nope"), "-q"]) == 1


def unit_vectors(rng, n, dim):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def commit_synthetic(coll, names, vectors):
    with coll.writing():
        coll.commit([ItemUpdate(f"/nowhere/{name}.png", name, 1, 1, vector_index=i)
                     for i, name in enumerate(names)], vectors)


def test_searches_read_the_writers_index_and_make_up_for_its_lag(tmp_path, model):
    """Only the writer saves the index; a search between two syncs masks the rows removed since
    and scans the rows added since exactly, so it agrees with the exact scan throughout."""
    rng = np.random.default_rng(0)
    ann = SearchConfig(ann_threshold=1)
    queries = unit_vectors(rng, 5, model.dim)
    coll = Collection.create(tmp_path / "c.sc", model)
    commit_synthetic(coll, [f"a{i}" for i in range(50)], unit_vectors(rng, 50, model.dim))
    assert not coll.has_index()  # nothing built it: the search scans exactly
    np.testing.assert_array_equal(coll.nearest(queries, 10, config=ann)[1],
                                  coll.nearest(queries, 10, exact=True)[1])
    assert not (coll.path / "index").exists()
    with coll.writing():
        assert coll.sync_index(ann)
    file = coll.path / "index" / "image.faiss"
    saved = file.stat().st_mtime_ns
    commit_synthetic(coll, [f"b{i}" for i in range(20)], unit_vectors(rng, 20, model.dim))
    with coll.writing():
        coll.remove([f"/nowhere/a{i}.png" for i in range(0, 50, 5)])
    _, rows = coll.nearest(queries, 10, config=ann)
    np.testing.assert_array_equal(rows, coll.nearest(queries, 10, exact=True)[1])
    assert set(rows.ravel()) <= set(coll.live_rows()[0].tolist())
    assert (rows >= 50).any()  # rows the saved index does not hold yet are found
    assert file.stat().st_mtime_ns == saved  # the search wrote nothing
    asked = {*rows.ravel().tolist(), 0, 5, -1, 10**6}  # row 0 and 5 belong to removed items
    expected = {i.row: (i.id, i.path) for i in coll.items("ok") if i.row in asked}
    assert coll.paths_for_rows(sorted(asked)) == expected and 0 not in expected
    with coll.writing():
        assert coll.sync_index(ann)
        assert not coll.sync_index(ann)  # already up to date: not written again
    with Collection.open(coll.path) as reopened:
        index, fresh = reopened.backend.reader_index(*reopened.read_vectors())
        assert fresh.size == 0 and len(index) == 60
        np.testing.assert_array_equal(reopened.nearest(queries, 10, config=ann)[1], rows)


def test_an_index_of_an_older_format_is_written_again_by_the_next_sync(tmp_path, model):
    """An index saved before format 3 (its graph after the header, so readers cannot map it)
    is rewritten by the writer's next sync even when nothing changed; readers then map it."""
    rng = np.random.default_rng(4)
    ann = SearchConfig(ann_threshold=1)
    queries = unit_vectors(rng, 5, model.dim)
    coll = Collection.create(tmp_path / "c.sc", model)
    commit_synthetic(coll, [f"a{i}" for i in range(60)], unit_vectors(rng, 60, model.dim))
    with coll.writing():
        assert coll.sync_index(ann)
    file = coll.path / "index" / "image.faiss"
    legacy_file(AnnIndex.load(file), file, 2)
    with Collection.open(coll.path) as reader:  # an old file still serves searches
        before = reader.nearest(queries, 10, config=ann)[1]
        assert reader.backend.reader_index(*reader.read_vectors())[0].format_version_ == 2
    with coll.writing():
        assert coll.sync_index(ann)  # nothing new, but the file is of an older format
        assert not coll.sync_index(ann)
    assert AnnIndex.load(file).format_version_ == FORMAT_VERSION
    with Collection.open(coll.path) as reader:
        np.testing.assert_array_equal(reader.nearest(queries, 10, config=ann)[1], before)
        np.testing.assert_array_equal(before, coll.nearest(queries, 10, exact=True)[1])


def test_an_index_built_with_other_graph_settings_is_rebuilt_on_its_next_sync(tmp_path, model,
                                                                              caplog):
    """A graph cannot be re-wired in place: an index saved with another build width, degree or
    codec (e.g. by a version with other defaults) is rebuilt with the wanted ones, saying why;
    one built with them is kept."""
    rng = np.random.default_rng(3)
    old = SearchConfig(ann_threshold=1, ef_construction=40, codec="sq8")
    new = SearchConfig(ann_threshold=1)
    coll = Collection.create(tmp_path / "c.sc", model)
    commit_synthetic(coll, [f"a{i}" for i in range(60)], unit_vectors(rng, 60, model.dim))
    with coll.writing():
        assert coll.sync_index(old)
        assert not coll.sync_index(old)  # same settings, nothing new: kept
        with caplog.at_level("INFO", logger="sharpclip.store.local_backend"):
            assert coll.sync_index(new)
        assert not coll.sync_index(new)
    assert "efConstruction 40 -> 100, codec sq8 -> fp16" in caplog.text
    assert "over 60 vectors" in caplog.text
    with Collection.open(coll.path) as reopened:
        index, fresh = reopened.backend.reader_index(*reopened.read_vectors())
        assert (index.config.ef_construction, index.index_.hnsw.efConstruction) == (100, 100)
        assert index.config.codec == "fp16"
        storage = faiss.downcast_index(index.index_.storage)
        assert isinstance(storage, faiss.IndexScalarQuantizer)
        assert storage.code_size == model.dim * 2  # two bytes a dimension
        assert fresh.size == 0 and len(index) == 60


def test_a_snapshot_never_mixes_two_commits(tmp_path, model):
    """The generation, the vector file and the live rows are read together: a commit by another
    process after the snapshot changes nothing in it, and the next snapshot sees it whole."""
    rng = np.random.default_rng(1)
    coll = Collection.create(tmp_path / "c.sc", model)
    commit_synthetic(coll, [str(i) for i in range(25)], unit_vectors(rng, 25, model.dim))
    before = coll.snapshot()
    with Collection.open(coll.path) as other:
        commit_synthetic(other, [str(i) for i in range(25, 30)], unit_vectors(rng, 5, model.dim))
    assert (before.rows, len(before.live_rows)) == (25, 25)
    assert coll.vectors(snapshot=before).shape[0] == 25
    after, vectors = coll.read_vectors()
    assert after.generation == before.generation + 1
    assert (after.rows, len(after.live_rows), vectors.shape[0]) == (30, 30, 30)
