"""The ANN index's search breadth tuned to the collection: the breadth chosen on held-out vectors
reaches the target on fresh queries, is the smallest that does, and follows the collection
(build, growth, a new target) while deletions never come back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sharpclip.cli import main
from sharpclip.collection import Collection
from sharpclip.store.collection import ItemUpdate
from sharpclip.store.search_index import AnnIndex, SearchConfig, exact_topk
from sharpclip.store.tuning import (
    EF_GRID,
    add_tuned,
    effective_trials,
    recall_at_k,
    recall_lower_bound,
    tune_ef_search,
)


def cloud(n, dim, seed):
    """Isotropic unit vectors: no clusters to lean on, so the breadth matters."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def tuned():
    vectors = cloud(6000, 48, 0)
    index = AnnIndex(48, SearchConfig(hnsw_m=8, codec="sq8"))
    tuning = add_tuned(index, vectors, np.arange(len(vectors)), target=0.9, progress=False)
    return vectors, index, tuning


def fresh_recall(index, vectors, queries, ef):
    truth = exact_topk(vectors, queries, 10)[1]
    return recall_at_k(index.search(queries, 10, vectors=vectors, ef_search=ef)[1], truth)


def fresh_bound(index, vectors, queries, ef):
    """The tuner's lower bound at ``ef``, written out: Wilson's over the per-query recalls'
    effective number of independent trials."""
    truth = exact_topk(vectors, queries, 10)[1]
    found = index.search(queries, 10, vectors=vectors, ef_search=ef)[1]
    hits = [len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist())]
    p = sum(hits) / len(hits)
    variance = sum((h - p) ** 2 for h in hits) / (len(hits) - 1)
    trials = len(hits) * 10 / max(1.0, variance / (p * (1 - p) / 10)) if 0 < p < 1 else 10 * len(hits)
    return recall_lower_bound(p, trials)


def test_the_chosen_breadth_meets_the_target_on_fresh_queries(tuned):
    vectors, index, tuning = tuned
    assert tuning["met"] and tuning["recall"] >= 0.9 and tuning["queries"] == 500
    assert len(index) == 6000 and tuning["vectors"] == 5500  # the held-out ones added after
    assert index.ef_search_ == tuning["ef_search"] > EF_GRID[0]
    queries = cloud(400, 48, 9)  # never in the collection
    assert fresh_recall(index, vectors, queries, tuning["ef_search"]) >= 0.9 - 0.03
    smaller = EF_GRID[EF_GRID.index(tuning["ef_search"]) - 1]
    assert fresh_recall(index, vectors, queries, smaller) < 0.9  # and it is the smallest


def test_the_recall_lower_bound_is_wilsons():
    assert recall_lower_bound(1.0, 60) == pytest.approx(60 / 64)  # p = 1: n / (n + z^2)
    # p = 0.5, n = 100, z = 2: (0.52 - 2 sqrt(0.0026)) / 1.04
    assert recall_lower_bound(0.5, 100) == pytest.approx((0.52 - 2 * 0.0026 ** 0.5) / 1.04)
    assert recall_lower_bound(0.0, 50) == pytest.approx(0.0, abs=1e-12)
    assert recall_lower_bound(0.9, 0) == 0.0
    assert recall_lower_bound(0.95, 5000) < recall_lower_bound(0.95, 50000) < 0.95


def test_effective_trials_count_a_query_once_when_its_neighbours_go_together():
    # every query alike: nothing to inflate, Q * k trials
    assert effective_trials(np.full(50, 0.9), 10) == 500
    assert effective_trials(np.ones(6), 10) == 60 and effective_trials(np.array([]), 10) == 0
    # all or nothing per query (p = 0.8 over 10 queries): variance 0.16 * 10 / 9 against the
    # binomial 0.016, a design effect of 100 / 9, so 100 trials are worth 9 (Q - 1)
    all_or_nothing = np.array([1.0] * 8 + [0.0] * 2)
    assert effective_trials(all_or_nothing, 10) == pytest.approx(9.0)
    # neighbours found independently (binomial per query): about Q * k
    independent = np.random.default_rng(0).binomial(10, 0.9, 4000) / 10
    assert effective_trials(independent, 10) == pytest.approx(40000, rel=0.1)
    assert recall_lower_bound(0.8, effective_trials(all_or_nothing, 10)) < recall_lower_bound(0.8, 100)


def test_the_tuner_keeps_the_first_breadth_whose_lower_bound_meets_the_target(tuned):
    vectors, index, _ = tuned
    queries = cloud(200, 48, 12)
    chosen = tune_ef_search(index, vectors, queries, 0.9)
    bounds = {ef: fresh_bound(index, vectors, queries, ef)
              for ef in EF_GRID[:EF_GRID.index(chosen.ef_search) + 1]}
    assert chosen.met and bounds[chosen.ef_search] >= 0.9
    assert chosen.lower_bound == pytest.approx(bounds[chosen.ef_search])
    assert all(b < 0.9 for ef, b in bounds.items() if ef < chosen.ef_search)
    assert chosen.recall >= chosen.lower_bound + 0.01  # the margin: ~2 standard errors
    # too few queries to show the target, even when every neighbour is found
    tiny = tune_ef_search(index, vectors, queries[:3], 0.95)
    assert not tiny.met and tiny.ef_search == EF_GRID[-1] and tiny.lower_bound < 0.95


def test_targets_order_the_breadths_and_an_unreachable_one_says_so(tuned):
    vectors, index, _ = tuned
    queries = cloud(100, 48, 11)
    low = tune_ef_search(index, vectors, queries, 0.6)
    high = tune_ef_search(index, vectors, queries, 0.97)
    assert low.ef_search < high.ef_search and low.met and high.met
    capped = tune_ef_search(index, vectors, queries, 1.0, grid=(16, 24))
    assert not capped.met and capped.ef_search == 24 and capped.recall < 1.0
    with pytest.raises(ValueError, match="recall target"):
        tune_ef_search(index, vectors, queries, 1.5)


def commit(coll, start, vectors):
    with coll.writing():
        coll.commit([ItemUpdate(f"/nowhere/{start + i}.png", f"h{start + i}", 1, 1,
                                vector_index=i) for i in range(len(vectors))], vectors)


def test_the_collection_tunes_on_build_and_growth_and_keeps_its_target(tmp_path, model):
    ann = SearchConfig(ann_threshold=1)
    coll = Collection.create(tmp_path / "c.sc", model)
    commit(coll, 0, cloud(1500, model.dim, 1))
    with coll.writing():
        assert coll.sync_index(ann, recall=0.8)
        assert not coll.sync_index(ann)  # nothing changed: the target stays 0.8
    first = coll.index_settings()
    assert first["codec"] == SearchConfig().codec and first["tuning"]["target"] == 0.8
    assert first["tuning"]["vectors"] == 1500 - 150 and first["tuning"]["met"]
    commit(coll, 1500, cloud(50, model.dim, 2))  # a few more: added, not re-tuned
    with coll.writing():
        assert coll.sync_index(ann)
    assert coll.index_settings()["tuning"] == first["tuning"]
    assert coll.index_settings()["vectors"] == 1550
    commit(coll, 1550, cloud(400, model.dim, 3))  # a quarter more: tuned again on them
    with coll.writing():
        coll.remove([f"/nowhere/{i}.png" for i in range(0, 1950, 7)])
        assert coll.sync_index(ann)
    grown = coll.index_settings()["tuning"]
    removed = set(range(0, 1950, 7))
    held = len(set(range(1550, 1950)) - removed) // 10
    assert grown["target"] == 0.8 and grown["queries"] == held
    assert grown["vectors"] == 1950 - len(removed) - held
    queries = cloud(30, model.dim, 4)
    _, rows = coll.nearest(queries, 10, config=ann)
    assert coll.backend.answered_by == "ann"
    assert not np.isin(rows, np.arange(0, 1950, 7)).any()  # deletions never come back
    with coll.writing():
        assert coll.sync_index(ann, recall=0.99)  # a new target: built and tuned again
    assert coll.index_settings()["tuning"]["target"] == 0.99
    assert coll.index_settings()["ef_search"] >= grown["ef_search"]
    coll.close()


def test_index_recall_option_and_status(tmp_path, capsys, monkeypatch):
    from scenes import write_scenes

    monkeypatch.setattr("sharpclip.store.collection.SearchConfig",
                        lambda: SearchConfig(ann_threshold=4))
    monkeypatch.setattr("sharpclip.store.collection.Collection.uses_ann", staticmethod(
        lambda live, exact, config=None: not exact and live >= 4))
    write_scenes(tmp_path / "in", 12, seed=5)
    coll = str(tmp_path / "c.sc")
    assert main(["index", str(tmp_path / "in"), "-c", coll, "--workers", "0", "--recall",
                 "0.9"]) == 0
    capsys.readouterr()
    assert main(["status", "-c", coll, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["ann_search"]["tuning"]["target"] == 0.9
    assert main(["status", "-c", coll]) == 0
    line = capsys.readouterr().out
    bound = status["ann_search"]["tuning"]["lower_bound"]
    assert "efSearch" in line and f"at least {bound:.3f} with confidence" in line
    with pytest.raises(SystemExit) as exit_:
        main(["index", str(tmp_path / "in"), "-c", coll, "--recall", "1.5"])
    assert exit_.value.code == 2
    assert "not a recall" in capsys.readouterr().err
