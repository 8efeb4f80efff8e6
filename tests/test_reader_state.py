"""What a reader keeps between queries (snapshots, masks, memory maps, checksum verdicts, condition
prompts): reused while nothing changed, and never past a change that matters."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from sharpclip.collection import Collection
from sharpclip.query.condition import condition_prompts
from sharpclip.store.collection import ItemUpdate


def unit_vectors(rng, n, dim):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def commit(coll, names, vectors):
    with coll.writing():
        coll.commit([ItemUpdate(f"/nowhere/{name}.png", name, 1, 1, vector_index=i)
                     for i, name in enumerate(names)], vectors)


def literal_topk(vectors, live_rows, query, k):
    """The top-k live rows by a full sort of every live row's score (ties: lower row first)."""
    scores = vectors[live_rows] @ query
    order = np.lexsort((live_rows, -scores))[:k]
    return live_rows[order]


def test_exact_search_with_and_without_removed_rows_matches_a_literal_sort(tmp_path, model):
    rng = np.random.default_rng(3)
    coll = Collection.create(tmp_path / "c.sc", model)
    data = unit_vectors(rng, 60, model.dim)
    commit(coll, [str(i) for i in range(60)], data)
    query = unit_vectors(rng, 1, model.dim)[0]
    snap = coll.snapshot()
    assert snap.all_live()
    np.testing.assert_array_equal(coll.nearest(query, 7, exact=True)[1][0],
                                  literal_topk(data, np.arange(60), query, 7))
    best = coll.nearest(query, 3, exact=True)[1][0]
    with coll.writing():
        coll.remove([f"/nowhere/{row}.png" for row in best])
    snap = coll.snapshot()
    assert not snap.all_live() and snap.live_mask().sum() == 57
    with pytest.raises(ValueError):
        snap.live_mask()[0] = True  # shared by every query of the generation: read-only
    rows = coll.nearest(query, 7, exact=True)[1][0]
    np.testing.assert_array_equal(rows, literal_topk(data, snap.live_rows, query, 7))
    assert not set(best) & set(rows.tolist())


def test_one_query_sees_one_state(tmp_path, model):
    """Inside `reading`, a commit by another process is not seen; the next query sees it."""
    rng = np.random.default_rng(4)
    coll = Collection.create(tmp_path / "c.sc", model)
    commit(coll, [str(i) for i in range(10)], unit_vectors(rng, 10, model.dim))
    with coll.reading():
        first = coll.snapshot()
        with Collection.open(coll.path) as other:
            commit(other, ["late"], unit_vectors(rng, 1, model.dim))
        assert coll.snapshot() is first and coll.read_vectors()[1].shape[0] == 10
        assert len(coll.nearest(np.ones(model.dim, np.float32), 20, exact=True)[1][0]) == 10
        assert coll.item("/nowhere/late.png") is None  # the catalog too: one read transaction
    assert coll.item("/nowhere/late.png") is not None
    assert coll.snapshot().generation == first.generation + 1
    assert len(coll.nearest(np.ones(model.dim, np.float32), 20, exact=True)[1][0]) == 11


def test_a_batch_rewritten_at_the_same_rows_is_hashed_again(tmp_path, model):
    """A damaged batch is left out; once its rows are cut and committed again (new bytes, new
    checksum, same start), the verdict kept for the old batch no longer applies."""
    rng = np.random.default_rng(5)
    coll = Collection.create(tmp_path / "c.sc", model)
    commit(coll, ["a0", "a1", "a2", "a3"], unit_vectors(rng, 4, model.dim))
    commit(coll, ["b0", "b1", "b2", "b3"], unit_vectors(rng, 4, model.dim))
    with open(coll.path / "vectors" / "image.f32", "r+b") as handle:
        handle.seek(5 * model.dim * 4)
        handle.write(np.full(model.dim, 0.3, np.float32).tobytes())
    np.testing.assert_array_equal(coll.intact_rows(np.arange(8)), [True] * 4 + [False] * 4)
    with coll.writing():
        assert coll.truncate_vector_set("image", 4, "test") == 4
    commit(coll, ["c0", "c1", "c2", "c3"], unit_vectors(rng, 4, model.dim))
    assert coll.item("/nowhere/c0.png").row == 4  # the same rows as the damaged batch
    assert coll.intact_rows(np.arange(8)).all()
    with open(coll.path / "vectors" / "image.f32", "r+b") as handle:  # the earlier batch's
        handle.seek(1 * model.dim * 4)  # verdict carries over: hashed once per process
        handle.write(np.full(model.dim, 0.3, np.float32).tobytes())
    assert coll.intact_rows(np.arange(4)).all()
    with Collection.open(coll.path) as fresh:  # a new process hashes it and leaves it out
        np.testing.assert_array_equal(fresh.intact_rows(np.arange(8)), [False] * 4 + [True] * 4)


def test_intact_rows_row_by_row_and_as_arrays_agree_with_a_literal_check(tmp_path, model):
    """A few rows (a query's hits) are checked one by one, many as arrays: both give what hashing
    each row's batch against its recorded checksum gives, for damaged batches, rows past the
    committed ones and rows before any batch (-1)."""
    import hashlib

    from sharpclip.store import collection as store

    rng = np.random.default_rng(8)
    coll = Collection.create(tmp_path / "c.sc", model)
    sizes = [3, 5, 1, 7, 4, 6]
    for b, size in enumerate(sizes):
        commit(coll, [f"{b}-{i}" for i in range(size)], unit_vectors(rng, size, model.dim))
    n = sum(sizes)
    with open(coll.path / "vectors" / "image.f32", "r+b") as handle:
        for row in (4, 9, 20):  # batches 1, 3 and 5
            handle.seek(row * model.dim * 4)
            handle.write(np.full(model.dim, 0.3, np.float32).tobytes())
    batches = coll._db.execute("SELECT start, count, sha256 FROM vector_batches").fetchall()
    data = np.fromfile(coll.path / "vectors" / "image.f32", np.float32).reshape(-1, model.dim)

    def literal(row):
        for start, count, digest in batches:
            if start <= row < start + count:
                return hashlib.sha256(data[start:start + count].tobytes()).hexdigest() == digest
        return True

    rows = rng.integers(-1, n + 3, size=200)
    expected = [literal(r) for r in rows.tolist()]
    assert not all(expected) and any(expected)
    few = np.concatenate([coll.intact_rows(rows[i:i + 10]) for i in range(0, 200, 10)])
    with Collection.open(coll.path) as fresh:  # no verdicts kept yet: the array path hashes
        assert len(rows) > store._FEW_ROWS
        many = fresh.intact_rows(rows)
    np.testing.assert_array_equal(few, expected)
    np.testing.assert_array_equal(many, expected)


def test_a_cut_vector_file_raises_even_with_a_map_kept(tmp_path, model):
    rng = np.random.default_rng(6)
    coll = Collection.create(tmp_path / "c.sc", model)
    commit(coll, [str(i) for i in range(6)], unit_vectors(rng, 6, model.dim))
    assert coll.vectors() is coll.vectors()  # one map, reused
    with open(coll.path / "vectors" / "image.f32", "r+b") as handle:
        handle.truncate(3 * model.dim * 4)
    with pytest.raises(ValueError, match="check -c"):
        coll.vectors()


def test_condition_prompts_follow_the_vocabulary_file(tmp_path):
    path = tmp_path / "mine.json"

    def write(prompts):
        path.write_text(json.dumps({"conditions": {"fill": {"values": ["a", "b"],
                                                            "prompts": prompts}}}))

    write(["x", "y"])
    first = condition_prompts("fill", path)
    assert first[0] == ["x", "y"] and condition_prompts("fill", path) is first
    time.sleep(0.01)
    write(["x", "y", "z"])
    assert condition_prompts("fill", path)[0] == ["x", "y", "z"]
    assert condition_prompts("fill", path)[1] != first[1]


def test_a_warm_conditional_query_follows_every_change(tmp_path, model):
    """The projected gallery a conditional query keeps between queries (one condition, and the
    side-by-side "a+b") is never used past a commit: an item added since is found, one removed
    since is gone."""
    rng = np.random.default_rng(7)
    coll = Collection.create(tmp_path / "c.sc", model)
    data = unit_vectors(rng, 40, model.dim)
    commit(coll, [str(i) for i in range(40)], data)
    like = "/nowhere/3.png"
    for condition in ("colour", "colour+shape"):
        before = [h.path for h in coll.search(like=like, k=5, condition=condition).hits]
        assert before[0] == like
        twin = f"/nowhere/twin-{condition}.png"
        commit(coll, [f"twin-{condition}"], data[3:4])  # the same vector: similarity 1 too
        during = [h.path for h in coll.search(like=like, k=5, condition=condition).hits]
        assert set(during[:2]) == {like, twin}
        with coll.writing():
            assert coll.remove([twin]) == 1
        assert [h.path for h in coll.search(like=like, k=5, condition=condition).hits] == before


class ModelLoaded(RuntimeError):
    pass


def test_a_warm_condition_cache_is_read_once_and_a_like_query_loads_no_model(tmp_path, model,
                                                                             monkeypatch):
    """A condition's cache, once read and verified, serves later queries from memory (damage to
    its files afterwards cannot reach them; a new process reads and checks them again); a query
    by a stored item never loads the model, a text query does."""
    rng = np.random.default_rng(8)
    with Collection.create(tmp_path / "c.sc", model) as coll:
        commit(coll, [str(i) for i in range(30)], unit_vectors(rng, 30, model.dim))
        expected = [(h.path, h.score) for h in
                    coll.search(like="/nowhere/4.png", k=5, condition="colour").hits]

    def no_model(spec):
        raise ModelLoaded(spec)

    monkeypatch.setattr(Collection, "load_model", staticmethod(no_model))
    with Collection.open(tmp_path / "c.sc") as fresh:
        def hits():
            return [(h.path, h.score) for h in
                    fresh.search(like="/nowhere/4.png", k=5, condition="colour").hits]

        assert hits() == expected
        for file in (tmp_path / "c.sc" / "cache").iterdir():
            file.write_bytes(b"garbage")
        assert hits() == expected
        assert fresh.search(like="/nowhere/4.png", k=3).hits[0].path == "/nowhere/4.png"
        with pytest.raises(ModelLoaded):
            fresh.search(text="a red circle")
    with Collection.open(tmp_path / "c.sc") as again, pytest.raises(ModelLoaded):
        again.search(like="/nowhere/4.png", k=5, condition="colour")  # recomputed: needs it
