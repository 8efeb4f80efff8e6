"""Exact and ANN top-K search, each checked against a literal full-sort reference."""

from __future__ import annotations

import json
import os

import faiss
import numpy as np
import pytest

from sharpclip.store.search_index import (
    CODECS,
    AnnIndex,
    SearchConfig,
    exact_topk,
    merge_topk,
    needs_ann,
    rescore,
)


def reference_topk(vectors, queries, k, valid=None):
    """Literal reference: float64 scores, Python sort by (-score, row), deleted rows dropped."""
    vectors = np.asarray(vectors, np.float64)
    queries = np.atleast_2d(np.asarray(queries, np.float64))
    keep = range(len(vectors)) if valid is None else np.flatnonzero(valid)
    out_scores, out_rows = [], []
    for q in queries:
        ranked = sorted(((float(vectors[r] @ q), int(r)) for r in keep), key=lambda t: (-t[0], t[1]))
        out_scores.append([s for s, _ in ranked[:k]])
        out_rows.append([r for _, r in ranked[:k]])
    return np.array(out_scores).reshape(len(queries), -1), np.array(out_rows).reshape(len(queries), -1)


def clustered(n, dim=32, n_clusters=40, seed=0):
    """Unit vectors around random centres (so that nearest neighbours are meaningful)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).standard_normal((n_clusters, dim))
    x = centres[rng.integers(0, n_clusters, n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall_at(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


# -- exact ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, None])
@pytest.mark.parametrize("k", [1, 5, 203])
@pytest.mark.parametrize("mask", ["none", "some", "most"])
def test_exact_topk_matches_full_sort_with_ties(chunk_rows, k, mask):
    # Small integers: every dot product is exact in float32, and there are many ties.
    rng = np.random.default_rng(0)
    vectors = rng.integers(-2, 3, (200, 8)).astype(np.float32)
    queries = rng.integers(-2, 3, (6, 8)).astype(np.float32)
    valid = {"none": None, "some": rng.random(200) > 0.3, "most": rng.random(200) > 0.97}[mask]
    scores, rows = exact_topk(vectors, queries, k, valid=valid, chunk_rows=chunk_rows)
    ref_scores, ref_rows = reference_topk(vectors, queries, k, valid)
    n_valid = 200 if valid is None else int(valid.sum())
    assert scores.shape == rows.shape == (6, min(k, n_valid))
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_array_equal(scores, ref_scores)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("k", [1, 10, 60])
@pytest.mark.parametrize("mask", ["none", "some", "few"])
def test_exact_topk_on_long_chunks_matches_full_sort(transposed, k, mask):
    """Chunks long enough for the group-maximum floor (>= 64 k rows), with ties at the k-th
    score, masks that leave whole groups empty, and the transposed (d, N) layout."""
    rng = np.random.default_rng(5)
    vectors = rng.integers(-2, 3, (5003, 4)).astype(np.float32)  # 5003: groups leave a tail
    queries = rng.integers(-2, 3, (3, 4)).astype(np.float32)
    vectors[-1] = 3 * queries[0]  # its best row sits in the tail beyond the whole strides
    valid = {"none": None, "some": rng.random(5003) > 0.5,
             "few": np.isin(np.arange(5003), rng.choice(5003, 2 * k, replace=False))}[mask]
    given = np.ascontiguousarray(vectors.T) if transposed else vectors
    for chunk_rows in (None, 1024):
        scores, rows = exact_topk(given, queries, k, valid=valid, chunk_rows=chunk_rows,
                                  transposed=transposed)
        ref_scores, ref_rows = reference_topk(vectors, queries, k, valid)
        np.testing.assert_array_equal(rows, ref_rows)
        np.testing.assert_array_equal(scores, ref_scores)


@pytest.mark.parametrize("transposed", [False, True])
def test_exact_topk_on_long_chunks_ranks_damaged_nan_vectors_last(transposed):
    """The group-maximum floor (see test above) with NaN scores and the best rows last."""
    rng = np.random.default_rng(6)
    vectors = rng.standard_normal((5003, 4)).astype(np.float32)
    damaged = rng.choice(5003, 7, replace=False)
    vectors[damaged] = np.nan
    query = rng.standard_normal(4).astype(np.float32)
    vectors[-3:] = 3 * query  # the best three sit in the tail beyond the whole strides
    given = np.ascontiguousarray(vectors.T) if transposed else vectors
    _, rows = exact_topk(given, query, 20, transposed=transposed)
    assert rows[0, :3].tolist() == [5000, 5001, 5002]
    kept = np.delete(np.arange(5003), damaged)
    _, ref_rows = reference_topk(vectors[kept], query, 20)
    np.testing.assert_array_equal(rows[0], kept[ref_rows[0]])


@pytest.mark.parametrize("chunk_rows", [3, None])
def test_exact_topk_ranks_a_damaged_nan_vector_last(chunk_rows):
    """A row whose score is NaN (damaged bytes) ranks below every finite one and is returned
    only when nothing else is left."""
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((12, 8)).astype(np.float32)
    vectors[[0, 7]] = np.nan
    query = vectors[3]
    scores, rows = exact_topk(vectors, query, 12, chunk_rows=chunk_rows)
    _, ref_rows = reference_topk(np.delete(vectors, [0, 7], 0), query, 10)
    np.testing.assert_array_equal(rows[0, :10], np.delete(np.arange(12), [0, 7])[ref_rows[0]])
    assert set(rows[0, 10:].tolist()) == {0, 7} and np.isneginf(scores[0, 10:]).all()


def test_exact_topk_float_data_on_memmap(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((500, 16)).astype(np.float32)
    mm = np.memmap(tmp_path / "v.f32", np.float32, "w+", shape=data.shape)
    mm[:] = data
    mm.flush()
    mm = np.memmap(tmp_path / "v.f32", np.float32, "r", shape=data.shape)
    queries = rng.standard_normal((4, 16)).astype(np.float32)
    valid = rng.random(500) > 0.2
    scores, rows = exact_topk(mm, queries, 10, valid=valid, chunk_rows=33)
    ref_scores, ref_rows = reference_topk(data, queries, 10, valid)
    np.testing.assert_array_equal(rows, ref_rows)  # random floats: no near-ties at this size
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert valid[rows].all()


def test_exact_topk_shapes_and_errors():
    x = np.eye(4, dtype=np.float32)
    scores, rows = exact_topk(x, x[2], 2, valid=np.array([True, True, False, True]))
    assert rows.tolist() == [[0, 1]] and scores.tolist() == [[0.0, 0.0]]
    assert exact_topk(x, x, 3, valid=np.zeros(4, bool))[1].shape == (4, 0)
    assert exact_topk(np.empty((0, 4), np.float32), x, 3)[1].shape == (4, 0)
    # float64 storage is accepted (upcast chunk by chunk) and gives the same rows
    np.testing.assert_array_equal(exact_topk(x.astype(np.float64), x, 2)[1], exact_topk(x, x, 2)[1])
    with pytest.raises(ValueError, match=r"shape \(Q, 4\)"):
        exact_topk(x, np.ones(3, np.float32), 1)
    with pytest.raises(ValueError, match="boolean mask"):
        exact_topk(x, x, 1, valid=np.ones(3, bool))
    with pytest.raises(ValueError, match="k must be"):
        exact_topk(x, x, 0)
    with pytest.raises(ValueError, match="NaN"):
        exact_topk(x, np.full(4, np.nan, np.float32), 1)


# -- ANN ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data():
    vectors = clustered(3000)
    queries = clustered(100, seed=7)
    return vectors, queries


@pytest.mark.parametrize("codec", CODECS)
def test_ann_agrees_with_exact(data, codec):
    vectors, queries = data
    rows = np.arange(len(vectors)) * 3 + 1000  # collection rows need not be 0..n-1
    stored = np.zeros((rows.max() + 1, vectors.shape[1]), np.float32)  # the collection's file
    stored[rows] = vectors
    index = AnnIndex.build(vectors, rows, SearchConfig(codec=codec), progress=False)
    assert len(index) == len(vectors)
    _, truth = exact_topk(vectors, queries, 10)
    scores, found = index.search(queries, 10, vectors=stored)
    assert recall_at(found, rows[truth]) >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first
    # re-ranked from the stored vectors: the scores are the returned rows' true inner products
    pos = (found - 1000) // 3
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", vectors[pos], queries), atol=1e-5)
    graph_scores, graph_rows = index.search(queries, 10)  # the graph's own scores
    assert recall_at(graph_rows, rows[truth]) >= 0.9
    if codec == "flat":
        np.testing.assert_allclose(graph_scores, scores, atol=1e-5)


@pytest.mark.parametrize("codec", ["sq8", "fp16"])
def test_compressed_graph_holds_less_and_reranks_to_the_exact_order(data, codec):
    """8-bit codes: where the exact top-10 is among the pool, the re-ranked answer is exactly it,
    in order. fp16 codes (only the k results re-scored): each score is exact, the order is by it,
    and no row is returned over one that beats it by more than fp16's score error."""
    vectors, queries = data
    config = SearchConfig(codec=codec, ef_search=200)
    index = AnnIndex.build(vectors, np.arange(len(vectors)), config, progress=False)
    flat = AnnIndex.build(vectors, np.arange(len(vectors)), SearchConfig(codec="flat"),
                          progress=False)
    ratio = {"sq8": 0.25, "fp16": 0.5}[codec]  # bytes per dimension vs float32's 4
    graph = flat.nbytes() - len(vectors) * vectors.shape[1] * 4
    assert index.nbytes() == pytest.approx(graph + ratio * len(vectors) * vectors.shape[1] * 4,
                                           rel=0.02)
    ref_scores, ref_rows = reference_topk(vectors, queries, 10)
    scores, rows = index.search(queries, 10, vectors=vectors)
    exact = np.einsum("qkd,qd->qk", vectors[rows], queries)
    np.testing.assert_allclose(scores, exact, atol=1e-5)
    if codec == "sq8":
        np.testing.assert_array_equal(rows, ref_rows)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
        return
    assert np.all(np.diff(scores, axis=1) <= 0)
    # a half-precision component is off by at most 2**-11 of itself, so a score by at most
    # 2**-11 * sum |q_i x_i|; a row displaces a better one only within twice that
    bound = 2 * 2.0 ** -11 * np.abs(vectors).max() * np.abs(queries).sum(1) * 1.01
    assert np.all(scores[:, -1] >= ref_scores[:, -1] - bound)
    assert recall_at(rows, ref_rows) >= 0.99


@pytest.mark.parametrize("codec", CODECS)
def test_removed_rows_never_returned(data, codec):
    vectors, queries = data
    rows = np.arange(len(vectors))
    index = AnnIndex.build(vectors, rows, SearchConfig(codec=codec), progress=False)
    rng = np.random.default_rng(3)
    removed = rng.choice(len(vectors), 900, replace=False)
    # query with the removed vectors themselves: each is its own best match while present
    probe = np.concatenate([vectors[removed[:50]], queries])
    assert len(index) == len(vectors)  # searched and counted before: nothing kept goes stale
    np.testing.assert_array_equal(index.search(probe[:50], 1, vectors=vectors)[1][:, 0],
                                  removed[:50])
    assert index.remove(removed) == 900
    assert index.remove(removed[:10]) == 0  # already gone
    assert len(index) == len(vectors) - 900
    _, ann_rows = index.search(probe, 10, vectors=vectors)
    assert not np.isin(index.search(probe, 10)[1], removed).any()
    valid = np.ones(len(vectors), bool)
    valid[removed] = False
    _, exact_rows = exact_topk(vectors, probe, 10, valid=valid)
    assert not np.isin(ann_rows, removed).any()
    assert not np.isin(exact_rows, removed).any()
    assert recall_at(ann_rows, exact_rows) >= 0.95
    assert index.deleted_fraction == pytest.approx(0.3)
    assert index.needs_rebuild  # 30% deleted > 20% default


def test_needs_rebuild_after_many_deletions(data):
    vectors, _ = data
    index = AnnIndex.build(vectors[:500], np.arange(500), progress=False)
    index.remove(np.arange(50))
    assert not index.needs_rebuild
    index.remove(np.arange(150))
    assert index.needs_rebuild


def test_everything_removed_and_k_larger_than_index(data):
    vectors, queries = data
    index = AnnIndex.build(vectors[:20], np.arange(20), progress=False)
    _, rows = index.search(queries[:3], 50)
    assert rows.shape == (3, 20) and set(rows[0]) == set(range(20))
    index.remove(np.arange(20))
    assert index.search(queries[:3], 5)[1].shape == (3, 0)
    assert AnnIndex(32).search(queries[:1], 5)[1].shape == (1, 0)


@pytest.mark.parametrize("codec", CODECS)
def test_incremental_add_equals_one_build(data, codec):
    """Graphs built in different insertion orders differ, but at this size and efSearch both
    find the best 10 by their codes, so their results are equal: the exact top-10 once re-ranked
    (fp16, whose k results only are re-scored: the top-10 by half-precision scores, which can
    swap near-ties at the 10th)."""
    vectors, queries = data
    config = SearchConfig(ef_search=256, threads=1, codec=codec)
    rows = np.arange(len(vectors))
    once = AnnIndex.build(vectors, rows, config, progress=False)
    steps = AnnIndex(vectors.shape[1], config)
    for part in np.array_split(rows, 5):
        steps.add(vectors[part], part, progress=False)
    np.testing.assert_array_equal(steps.rows_, once.rows_)
    _, exact_rows = exact_topk(vectors, queries, 10)
    _, a = once.search(queries, 10, vectors=vectors)
    _, b = steps.search(queries, 10, vectors=vectors)
    np.testing.assert_array_equal(a, b)
    if codec == "fp16":
        assert recall_at(a, exact_rows) >= 0.99
    else:
        np.testing.assert_array_equal(a, exact_rows)


def test_add_checks_rows(data):
    vectors, _ = data
    index = AnnIndex.build(vectors[:10], np.arange(10), progress=False)
    with pytest.raises(ValueError, match="already in the index"):
        index.add(vectors[:1], [3], progress=False)
    with pytest.raises(ValueError, match="same row twice"):
        index.add(vectors[:2], [20, 20], progress=False)
    with pytest.raises(ValueError, match=r"vectors \(n, 32\)"):
        index.add(vectors[:2, :8], [20, 21], progress=False)
    index.remove([3])
    index.add(vectors[3:4], [3], progress=False)  # a removed row may come back through add
    assert len(index) == 10
    _, rows = index.search(vectors[3], 1)
    assert rows.tolist() == [[3]]


@pytest.mark.parametrize("codec", CODECS)
def test_save_load_round_trip(data, tmp_path, codec):
    vectors, queries = data
    config = SearchConfig(hnsw_m=16, ef_search=64, ann_threshold=1234, codec=codec)
    index = AnnIndex.build(vectors, np.arange(len(vectors)) + 7, config, progress=False)
    index.remove([7, 8, 100])
    index.tuning_ = {"ef_search": 48, "recall": 0.97, "target": 0.95}
    path = tmp_path / "ann.index"
    index.save(path)
    index.save(path)  # overwriting is atomic too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.index"]
    loaded = AnnIndex.load(path)
    assert loaded.config == config and loaded.dim == index.dim
    assert loaded.tuning_ == index.tuning_ and loaded.ef_search_ == 48
    np.testing.assert_array_equal(loaded.rows_, index.rows_)
    np.testing.assert_array_equal(loaded.deleted_, index.deleted_)
    for got, want in zip(loaded.search(queries, 10), index.search(queries, 10)):
        np.testing.assert_array_equal(got, want)
    # its own copy of the vectors (or their codes) plus the graph; within 1% of faiss's
    # serialised size
    faiss_size = faiss.serialize_index(index.index_).nbytes + index.rows_.nbytes + len(vectors)
    assert index.nbytes() == pytest.approx(faiss_size, rel=0.01)
    assert codec != "flat" or index.nbytes() > vectors.nbytes

    empty = tmp_path / "empty.index"
    AnnIndex(5).save(empty)
    assert len(AnnIndex.load(empty)) == 0
    (tmp_path / "junk").write_bytes(b"not an index")
    with pytest.raises(ValueError, match="not a sharpclip ANN index"):
        AnnIndex.load(tmp_path / "junk")


def legacy_file(index: AnnIndex, path, version: int) -> None:
    """``index`` in the layout of formats 1-2 (written before format 3): a magic line, the
    header's length and the header, ``rows_`` and ``deleted_`` as .npy, then faiss's bytes."""
    header = {"format_version": version, "kind": f"hnsw_{index.config.codec}_ip",
              "dim": index.dim, "config": dict(index.config.__dict__), "tuning": index.tuning_,
              "faiss_version": faiss.__version__, "n": len(index.rows_), "has_index": True}
    if version == 1:  # before codecs and tuning existed
        for key in ("codec", "train_rows"):
            del header["config"][key]
        del header["tuning"]
    encoded = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(b"SHARPCLIP-ANN\n" + len(encoded).to_bytes(8, "little") + encoded)
        np.save(f, index.rows_)
        np.save(f, index.deleted_)
        f.write(faiss.serialize_index(index.index_).tobytes())


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("mmap", [False, True])
def test_index_files_of_older_formats_keep_working(data, tmp_path, version, mmap):
    """Files of formats 1 (a flat graph, no tuning) and 2 (the graph after the header) load,
    mapped or not (they cannot be mapped: read into memory), and search as they were saved."""
    vectors, queries = data
    index = AnnIndex.build(vectors, np.arange(len(vectors)), SearchConfig(codec="flat"),
                           progress=False)
    index.remove([4, 9])
    index.tuning_ = {"ef_search": 48, "recall": 0.97, "target": 0.95}
    legacy_file(index, tmp_path / "old.index", version)
    loaded = AnnIndex.load(tmp_path / "old.index", mmap=mmap)
    assert loaded.config.codec == "flat" and loaded.format_version_ == version
    assert loaded.tuning_ == (None if version == 1 else index.tuning_)
    np.testing.assert_array_equal(loaded.deleted_, index.deleted_)
    for got, want in zip(loaded.search(queries, 10, ef_search=64),
                         index.search(queries, 10, ef_search=64)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("codec", CODECS)
def test_a_mapped_index_searches_as_the_saved_one_and_outlives_its_file(data, tmp_path, codec):
    """``load(mmap=True)`` maps the graph from the file (no copy in the heap): it answers
    exactly as the saved index, masks removals, and keeps answering after a writer replaced
    the file (the mapping holds the old one) or another process removed it."""
    vectors, queries = data
    index = AnnIndex.build(vectors, np.arange(len(vectors)), SearchConfig(codec=codec),
                           progress=False)
    path = tmp_path / "ann.index"
    index.save(path)
    mapped = AnnIndex.load(path, mmap=True)
    want = index.search(queries, 10, vectors=vectors)
    for got, expected in zip(mapped.search(queries, 10, vectors=vectors), want):
        np.testing.assert_array_equal(got, expected)
    AnnIndex.build(vectors[::-1].copy(), np.arange(len(vectors)), SearchConfig(codec=codec),
                   progress=False).save(path)  # the writer's next save
    path.unlink()
    for got, expected in zip(mapped.search(queries, 10, vectors=vectors), want):
        np.testing.assert_array_equal(got, expected)
    gone = want[1][:, :3].ravel()
    mapped.remove(gone)
    assert not np.isin(mapped.search(queries, 10, vectors=vectors)[1], gone).any()


@pytest.mark.parametrize("mmap", [False, True])
def test_load_reads_the_graph_of_the_file_it_opened(data, tmp_path, monkeypatch, mmap):
    """faiss opens the index by name after the header was read: a writer's save landing in
    between (``os.replace``) must not pair one file's header with the other's graph."""
    vectors, queries = data
    first = AnnIndex.build(vectors, np.arange(len(vectors)), progress=False)
    second = AnnIndex.build(vectors[:100], np.arange(100), progress=False)
    path, other = tmp_path / "ann.index", tmp_path / "other.index"
    first.save(path)
    second.save(other)
    read_index = faiss.read_index

    def after_a_save(*args):
        os.replace(other, path)
        return read_index(*args)

    monkeypatch.setattr(faiss, "read_index", after_a_save)
    loaded = AnnIndex.load(path, mmap=mmap)
    assert not other.exists() and loaded.index_.ntotal == len(loaded.rows_) == len(vectors)
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], first.search(queries, 10)[1])


def test_damaged_index_files_are_refused_with_the_fix(data, tmp_path):
    vectors, _ = data
    index = AnnIndex.build(vectors, np.arange(len(vectors)), progress=False)
    index.save(tmp_path / "good.index")
    raw = (tmp_path / "good.index").read_bytes()
    cases = {"cut.index": raw[:-5],  # the magic line torn off
             "short.index": raw[:len(raw) // 2] + raw[-22:],  # the graph cut, the tail kept
             "huge.index": raw[:-22] + (1 << 40).to_bytes(8, "little") + raw[-14:],
             "garbled.index": b"\xff" * 64 + raw[64:]}  # the graph's own header overwritten
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        for mmap in (False, True):
            with pytest.raises(ValueError, match="rebuild the index"):
                AnnIndex.load(tmp_path / name, mmap=mmap)


def test_policy_and_config():
    assert not needs_ann(199, 200) and needs_ann(200, 200)
    with pytest.raises(ValueError, match="hnsw_m"):
        SearchConfig(hnsw_m=0)
    with pytest.raises(ValueError, match="max_deleted_fraction"):
        SearchConfig(max_deleted_fraction=1.5)
    with pytest.raises(ValueError, match="codec must be one of flat, sq8, fp16"):
        SearchConfig(codec="pq")


def test_rescore_and_merge_against_literal_sorting():
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((40, 8)).astype(np.float32)
    queries = rng.standard_normal((3, 8)).astype(np.float32)
    rows = np.array([[5, -1, 7, 2], [0, 1, -1, -1], [39, 38, 3, 4]])
    scores, got = rescore(vectors, queries, rows)
    for q in range(3):
        expected = sorted(((float(vectors[r] @ queries[q]), r) for r in rows[q] if r >= 0),
                          key=lambda t: (-t[0], t[1]))
        kept = got[q][got[q] >= 0].tolist()
        assert kept == [r for _, r in expected]
        np.testing.assert_allclose(scores[q][:len(kept)], [s for s, _ in expected], rtol=1e-5)
        assert np.isneginf(scores[q][len(kept):]).all()
    # one query with every row found takes a shorter path: same answer, ties to the lower row
    vectors[[9, 3]] = vectors[21]
    one = np.array([[21, 9, 0, 3]])
    for q in range(3):
        scores, got = rescore(vectors, queries[q], one)
        expected = sorted(((float(vectors[r] @ queries[q]), r) for r in one[0]),
                          key=lambda t: (-t[0], t[1]))
        assert got.tolist() == [[r for _, r in expected]] and scores.dtype == np.float32
        np.testing.assert_allclose(scores[0], [s for s, _ in expected], rtol=1e-5)
    first = (np.array([[0.9, 0.5]], np.float32), np.array([[4, 8]]))
    second = (np.array([[0.7, 0.5]], np.float32), np.array([[1, 2]]))
    merged = merge_topk(first, second, 3)
    assert merged[1].tolist() == [[4, 1, 2]]  # the tie at 0.5 goes to the lower row
    np.testing.assert_allclose(merged[0], [[0.9, 0.7, 0.5]])
