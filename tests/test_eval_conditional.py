"""The ``conditional`` evaluation task (eval/conditional.py): protocol pieces, a toy case where
CLAY provably beats plain cosine, and the results.json schema on the bundled model."""

import json

import numpy as np
import pytest

from sharpclip.eval.conditional import (
    CONDITIONS,
    condition_map,
    evaluate_embeddings,
    query_split,
    run_conditional,
    to_markdown,
    write_results,
)
from sharpclip.methods.conditional import ConditionalConfig


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_query_split_is_seeded_one_to_nine_and_disjoint():
    q, db = query_split(1000, seed=3)
    assert len(q) == 100 and len(db) == 900 and not set(q) & set(db)
    assert set(q) | set(db) == set(range(1000))
    np.testing.assert_array_equal(q, query_split(1000, seed=3)[0])
    assert not np.array_equal(q, query_split(1000, seed=4)[0])


def test_condition_map_uses_label_equality_and_skips_queries_without_positives():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3], [0.5, 0.5, 0.5]])
    ap = condition_map(scores, np.array(["a", "b", "z"]), np.array(["a", "b", "a"]))
    # query "a": positives at ranks 1 and 2 -> AP 1; query "b": rank 1 -> 1; "z" has none
    assert ap == pytest.approx(1.0)
    assert condition_map(-scores[:1], np.array(["a"]), np.array(["a", "b", "a"])) \
        == pytest.approx((1 / 2 + 2 / 3) / 2)


def toy(n=400, seed=0):
    """Shape dominates the raw embedding; colour lives in a weak direction the prompts isolate."""
    rng = np.random.default_rng(seed)
    colour, shape = rng.integers(2, size=n), rng.integers(2, size=n)
    e = np.eye(8)
    images = unit(3 * e[7] + 0.3 * np.where(colour, 1, -1)[:, None] * e[0]
                  + 1.0 * np.where(shape, 1, -1)[:, None] * e[1]
                  + 0.02 * rng.normal(size=(n, 8)))
    # colour prompts: "red"/"blue" along e0, wording variations (templates) along e2 and e3
    prompts = unit(np.array([3 * e[7] + s * e[0] + 0.1 * t * e[2 + (i % 2)]
                             for s in (1, -1) for i, t in enumerate((1, -1, 1, -1))]))
    labels = {"colour": np.array(["red", "blue"])[colour], "shape": np.array(["o", "x"])[shape]}
    return images, labels, prompts


def test_toy_case_clay_beats_plain():
    images, labels, prompts = toy()
    result = evaluate_embeddings(images, {"colour": labels["colour"]}, {"colour": prompts},
                                 seed=0, config=ConditionalConfig(k=1), ks=(), variances=())
    plain, clay = result["methods"]["plain"]["map"], result["methods"]["clay"]["map"]
    # k = 1 keeps exactly the colour axis: the ranking sorts by colour, AP = 1 for every query
    assert clay["colour"] == pytest.approx(1.0)
    # raw cosine ranks by shape first: the same-colour, other-shape half of the positives comes
    # after every same-shape item, at precision 1/2 .. 2/3, so AP is about 0.5 + 0.5 * 0.58
    assert plain["colour"] < 0.85 and clay["colour"] - plain["colour"] > 0.15
    assert "sweep" not in result and result["params"]["clay"]["k_used"] == {"colour": 1}


@pytest.fixture(scope="module")
def bundled_result():
    from sharpclip.models.loader import load_model

    model = load_model("bundled", device="cpu")
    return model, run_conditional(model, seed=1, size=80, ks=(2, 4), variances=(0.85,))


def test_run_conditional_on_bundled_model_follows_the_schema(bundled_result):
    model, result = bundled_result
    assert (result["task"], result["model"], result["seed"], result["size"]) == \
        ("conditional", model.fingerprint, 1, 80)
    assert set(result["methods"]) == {"plain", "clay", "clay_nolog"}
    for method in result["methods"].values():
        assert set(method["map"]) == set(CONDITIONS)
        assert all(0.0 <= v <= 1.0 for v in method["map"].values())
        assert method["map_mean"] == pytest.approx(np.mean(list(method["map"].values())))
    clay = result["params"]["clay"]
    assert clay["k"] is None and clay["log_map"] is True and clay["center"] is False
    assert result["params"]["clay_nolog"]["log_map"] is False
    assert set(clay["k_used"]) == set(CONDITIONS)
    assert all(n >= 100 for n in clay["prompts"].values())
    assert result["params"]["data"]["queries"] == 8 and result["params"]["data"]["database"] == 72
    rows = result["sweep"]["rows"]
    assert len(rows) == 2 * 3 and {r["center"] for r in rows} == {False, True}
    assert all(0.0 <= r["map_mean"] <= 1.0 for r in rows)
    assert {"plain", "clay", "clay_nolog", "sweep", "encode_images"} <= set(result["timing_s"])
    json.dumps(result)  # JSON-ready


def test_markdown_and_files(bundled_result, tmp_path):
    _, result = bundled_result
    table = to_markdown(result)
    assert table.startswith("task `conditional`")
    assert "| method | shape | colour | size | texture | count | map_mean |" in table
    assert "| k=2 | false |" in table and "| ev>=0.85 | true |" in table
    write_results(result, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == result
    assert (tmp_path / "out" / "results.md").read_text() == table
