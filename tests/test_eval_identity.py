"""The ``identity`` task (eval/identity.py): its protocol, rankings, metrics and a tiny run."""

import json
from dataclasses import replace

import numpy as np
import pytest

from sharpclip.eval import identity as ident
from sharpclip.eval.metrics import ranked_scores
from sharpclip.methods.calibration import CVEConfig, DCCConfig


def test_hand_made_identities_give_the_hand_computed_metrics():
    # 3 identities: gallery images 0-1 are identity 0, 2-4 identity 1, 5 identity 2
    gallery = [0, 0, 1, 1, 1, 2]
    relevant = ident.identity_relevance([0, 1, 2], gallery)
    assert relevant.tolist() == [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]]
    # the pipeline's hits first (in its order), the rest by the candidate set's cosine
    hits = [[0, 2], [0, 2, 3], [5]]
    base = np.array([[0.9, 0.5, 0.1, 0.4, 0.3, 0.2],   # rest: 1, 3, 4, 5
                     [0.1, 0.8, 0.9, 0.7, 0.2, 0.3],   # rest: 1, 5, 4
                     [0.9, 0.8, 0.7, 0.6, 0.5, 0.0]])
    scores = np.stack([ranked_scores(h, b) for h, b in zip(hits, base)])
    order = np.argsort(-scores, axis=1, kind="stable")
    assert order.tolist() == [[0, 2, 1, 3, 4, 5], [0, 2, 3, 1, 5, 4], [5, 0, 1, 2, 3, 4]]
    metrics = ident.part_metrics(scores, relevant)
    # q0: positives at ranks 1, 3; q1: at 2, 3, 6; q2: at 1
    ap = [(1 + 2 / 3) / 2, (1 / 2 + 2 / 3 + 3 / 6) / 3, 1.0]
    inp = [2 / 3, 3 / 6, 1.0]
    assert metrics["map"] == pytest.approx(np.mean(ap))
    assert metrics["minp"] == pytest.approx(np.mean(inp))
    assert metrics["recall@1"] == pytest.approx(2 / 3)
    assert metrics["recall@5"] == metrics["recall@10"] == 1.0
    assert set(ident.part_metrics(scores, relevant, "pair_")) == {
        "pair_recall@1", "pair_recall@5", "pair_recall@10", "pair_map", "pair_minp"}
    each = ident.per_query(scores, relevant)
    assert each["recall@1"].tolist() == [1.0, 0.0, 1.0]
    assert each["minp"] == pytest.approx(inp)
    same = ident.paired_difference(each["minp"], each["minp"])
    assert same == {"diff": 0.0, "ci95": [0.0, 0.0]}
    better = ident.paired_difference(each["minp"] + 0.1, each["minp"])
    assert better["diff"] == pytest.approx(0.1) and better["ci95"][0] > 0


def test_identity_part_queries_hit_every_rendering_of_their_identity():
    part = ident.identity_part(seed=5, size=40, views=4, captions=2)
    assert len(part.images) == 40 and part.relevant.shape == (len(part.queries), 40)
    counts = np.bincount(part.labels)
    assert (counts >= 4).all() and (counts % 4 == 0).all()  # equal specifications merge
    assert part.relevant.any(axis=1).all()
    for q in range(len(part.queries)):
        label = part.labels[part.relevant[q]][0]
        assert part.relevant[q].tolist() == (part.labels == label).tolist()
    assert 10 <= len(part.queries) <= 20  # 10 identities, up to 2 captions each
    renderings = [np.asarray(part.images[i]) for i in np.flatnonzero(part.labels == 0)[:2]]
    assert not np.array_equal(*renderings)  # fresh jitter per view


def test_pooling_cache_gives_the_index_vectors(model):
    part = ident.identity_part(seed=1, size=8)
    config = CVEConfig(p_decay=70.0, p_suppress=90.0)
    plain, v_hat = ident.encode_part(model, part, config, chunk=5)
    cache = ident.PoolingCache(model, part.images, chunk=3)
    np.testing.assert_allclose(cache.plain, plain, atol=1e-5)
    np.testing.assert_allclose(cache.v_hat(config), v_hat, atol=1e-5)
    np.testing.assert_allclose(plain, model.encode_images(part.images), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_result(model):
    return ident.run_identity(model, seed=2, size=24, pair_size=12)


def test_tiny_run_has_the_contract_schema(tiny_result, tmp_path):
    result = tiny_result
    assert result["task"] == "identity" and result["seed"] == 2 and result["size"] == 24
    assert isinstance(result["model"], str) and result["model"]
    assert tuple(result["methods"]) == ident.METHODS
    wanted = {*ident.COLUMNS, *(f"pair_{c}" for c in ident.COLUMNS)}
    for metrics in result["methods"].values():
        assert set(metrics) == wanted
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in metrics.values())
        assert metrics["recall@1"] <= metrics["recall@5"] <= metrics["recall@10"]
    assert {"cve", "dcc", "data"} <= set(result["params"])
    assert set(ident.METHODS) <= set(result["timing_s"])
    assert result["params"]["data"]["identity_gallery"] == 24
    ident.write_results(result, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["task"] == "identity"
    table = (tmp_path / "results.md").read_text()
    assert table == ident.to_markdown(result)
    assert all(f"| {m} |" in table for m in ident.METHODS) and "two-object" in table
    masked = result["diagnostics"]["dcc"]["identity"]["dcc"]["masked_per_query"]
    assert masked > 0  # DCC masked something in the queries
    vs_plain = result["diagnostics"]["vs_plain"]
    assert set(vs_plain) == {"cve", "dcc", "cve+dcc"}
    for by_part in vs_plain.values():
        for name in ("identity", "pair"):
            for d in by_part[name].values():
                assert d["ci95"][0] <= d["diff"] <= d["ci95"][1]
    assert "difference from plain" in table


def test_neutral_settings_reduce_every_method_to_plain(model):
    # rho 0: v_hat = v; lam 0: DCC re-ranks the shortlist by the plain cosine
    result = ident.run_identity(model, seed=3, size=16, pair_size=0,
                                cve=replace(CVEConfig(), rho=0.0), dcc=DCCConfig(lam=0.0))
    plain = result["methods"]["plain"]
    for method in ("cve", "dcc", "cve+dcc"):
        assert result["methods"][method] == pytest.approx(plain, abs=1e-9)


def test_unknown_method_is_refused(model):
    with pytest.raises(ValueError, match="unknown method"):
        ident.run_identity(model, size=8, pair_size=0, methods=("plain", "magic"))
