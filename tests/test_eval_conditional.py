"""The ``conditional`` evaluation task (eval/conditional.py): protocol pieces, a toy case where
CLAY provably beats plain cosine, and the results.json schema on the bundled model."""

import json

import numpy as np
import pytest

from sharpclip.cli import main
from sharpclip.eval.conditional import (
    CONDITIONS,
    METHODS,
    PAIRS,
    condition_map,
    evaluate_embeddings,
    joint_labels,
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


def test_pair_relevance_needs_the_same_value_of_every_named_condition():
    labels = {"colour": np.array(["red", "red", "blue", "red", "blue"]),
              "shape": np.array(["o", "x", "o", "o", "o"])}
    joint = joint_labels(labels, "colour+shape")
    same = joint[:, None] == joint[None, :]
    expected = np.array([[a == b and c == d for b, d in zip(labels["colour"], labels["shape"])]
                         for a, c in zip(labels["colour"], labels["shape"])])
    np.testing.assert_array_equal(same, expected)
    assert same[0, 3] and not same[0, 1] and not same[0, 2] and same[2, 4]
    # query red-o against the database [red-x, blue-o, red-o, blue-o]: the one positive
    # (red-o) is ranked 3rd -> AP 1/3; by colour alone positives at ranks 1 and 3 -> AP 5/6
    scores = np.array([[0.9, 0.8, 0.7, 0.1]])
    assert condition_map(scores, joint[:1], joint[1:]) == pytest.approx(1 / 3)
    assert condition_map(scores, labels["colour"][:1], labels["colour"][1:]) \
        == pytest.approx((1 + 2 / 3) / 2)


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
    assert set(result["methods"]) == {"plain", *METHODS}
    for method in result["methods"].values():
        assert set(method["map"]) == set(CONDITIONS) | set(PAIRS)
        assert all(0.0 <= v <= 1.0 for v in method["map"].values())
        assert method["map_mean"] == pytest.approx(np.mean([method["map"][c]
                                                            for c in CONDITIONS]))
        assert method["map_mean_pairs"] == pytest.approx(np.mean([method["map"][p]
                                                                  for p in PAIRS]))
    clay, params = result["params"]["clay"], result["params"]
    assert clay["k"] is None and clay["log_map"] is True and clay["center"] is False
    assert clay["weighting"] == "value" and clay["combine"] == "mean"
    assert params["clay_nolog"]["log_map"] is False and params["clay_asym"]["asymmetric"]
    assert params["clay_norot"]["rotation"] is False and params["clay_k50"]["k"] == 50
    assert clay["prompts_per_value"] == 4 and params["clay_k50"]["prompts_per_value"] is None
    assert params["clay_pooled"]["combine"] == "pooled"
    assert set(params["clay_pooled"]["k_used"]) == set(CONDITIONS) | set(PAIRS)
    methods = result["methods"]
    for c in CONDITIONS:  # pooling changes only pairs
        assert methods["clay_pooled"]["map"][c] == methods["clay"]["map"][c]
    assert set(clay["k_used"]) == set(CONDITIONS)
    assert all(n >= 100 for n in clay["prompts"].values())
    assert result["params"]["data"]["queries"] == 8 and result["params"]["data"]["database"] == 72
    rows = result["sweep"]["rows"]
    assert len(rows) == 7 * 3 and {r["center"] for r in rows} == {False, True}
    assert {r["weighting"] for r in rows} == {"prompt", "value", "value_mean"}
    assert {r["prompts_per_value"] for r in rows} == {4, 8, 16, None}
    assert all(0.0 <= r["map_mean"] <= 1.0 for r in rows)
    assert {"plain", *METHODS, "sweep", "encode_images"} <= set(result["timing_s"])
    json.dumps(result)  # JSON-ready


def test_markdown_and_files(bundled_result, tmp_path):
    _, result = bundled_result
    table = to_markdown(result)
    assert table.startswith("task `conditional`")
    assert "| method | shape | colour | size | texture | count | map_mean |" in table
    assert "| method | colour+shape | colour+texture | shape+count | size+colour | " \
        "map_mean_pairs |" in table
    assert "| k=2 | all | prompt | false |" in table and "| ev>=0.85 | 4 | value | true |" in table
    write_results(result, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == result
    assert (tmp_path / "out" / "results.md").read_text() == table


def write_value_folders(root, per_value=6, broken=1):
    """Shapes images in red/ and blue/ (colour is the user's condition), one file per value
    that is not an image."""
    from sharpclip.data import shapes

    rng, made = np.random.default_rng(5), {"red": 0, "blue": 0}
    while min(made.values()) < per_value:
        spec = shapes.random_spec(rng, "single")
        colour = spec.objects[0].colour
        if made.get(colour, per_value) < per_value:
            (root / colour).mkdir(parents=True, exist_ok=True)
            shapes.render(spec, 64, rng).save(root / colour / f"{made[colour]}.png")
            made[colour] += 1
    for i in range(broken):
        (root / "red" / f"broken{i}.png").write_bytes(b"not a png")
    return root


HUE = ("conditions:\n  hue:\n    values: [red, blue]\n"
       "    templates: ['a {value} shape', 'a photo of a {value} object', 'something {value}']\n")


def test_user_folder_self_check_end_to_end(tmp_path, capsys):
    data = write_value_folders(tmp_path / "data")
    (tmp_path / "hue.yaml").write_text(HUE)
    out = tmp_path / "out"
    assert main(["eval", "conditional", "--concepts", str(tmp_path / "hue.yaml"),
                 "--data", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| plain | " in printed and "| clay | " in printed and "skipped 1 unreadable" in printed
    result = json.loads((out / "results.json").read_text())
    assert result["condition"] == "hue" and set(result["methods"]) == {"plain", "clay"}
    assert result["size"] == 12 and result["params"]["data"]["values"] == {"blue": 6, "red": 6}
    assert len(result["params"]["data"]["skipped"]) == 1
    assert "broken0.png" in result["params"]["data"]["skipped"][0]
    # the plain number is the protocol on these images: recompute it from the embeddings
    from sharpclip.data.imagefiles import load_rgb
    from sharpclip.models.loader import load_model

    paths = sorted((data / "blue").glob("[0-9]*.png")) + sorted((data / "red").glob("[0-9]*.png"))
    vectors = load_model("bundled", device="cpu").encode_images([load_rgb(p) for p in paths])
    labels = np.array(["blue"] * 6 + ["red"] * 6)
    q, db = query_split(12, 0)
    assert result["methods"]["plain"]["map"]["hue"] == pytest.approx(
        condition_map(vectors[q] @ vectors[db].T, labels[q], labels[db]), abs=1e-6)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "green").mkdir(), "green: no readable images in this value folder"),
    (lambda d: __import__("shutil").rmtree(d / "blue"), "only one value folder (red)"),
    (lambda d: None, None),
])
def test_user_folder_errors_are_one_line(tmp_path, capsys, damage, message):
    data = write_value_folders(tmp_path / "data", per_value=2, broken=0)
    damage(data)
    if message is None:  # two images per value: the folder works, and --condition is required
        (tmp_path / "two.yaml").write_text(HUE + "  shade:\n    values: [a, b]\n"
                                           "    templates: ['{value}']\n")
        assert main(["eval", "conditional", "--concepts", str(tmp_path / "two.yaml"),
                     "--data", str(data), "--out", str(tmp_path / "o")]) == 1
        message = "defines 2 conditions (hue, shade); name the one"
    else:
        assert main(["eval", "conditional", "--condition", "colour", "--data", str(data),
                     "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_search_under_two_conditions_ranks_by_the_mean_of_their_similarities(tmp_path, model):
    """`--condition colour+shape` uses the default combination (the mean of the per-condition
    similarities), computed here from the collection's vectors and the vocabulary."""
    from scenes import write_scenes
    from sharpclip.collection import Collection
    from sharpclip.concepts import load_vocabulary
    from sharpclip.ingest import IndexConfig
    from sharpclip.methods.conditional import conditional_similarity_literal, gallery_mean

    paths = write_scenes(tmp_path / "in", 10, seed=4)
    with Collection.create(tmp_path / "c.sc", model) as coll:
        coll.add([tmp_path / "in"], config=IndexConfig(workers=0, progress=False))
        hits = coll.search(like=paths[0], k=10, condition="colour+shape").hits
    from sharpclip.data.imagefiles import load_rgb

    vectors = model.encode_images([load_rgb(p) for p in paths])
    vocabulary, mu_v = load_vocabulary(), gallery_mean(vectors)
    expected = np.mean([conditional_similarity_literal(
        vectors[:1], vectors, model.encode_texts(prompts), mu_v, ConditionalConfig(), values)[0]
        for prompts, values in map(vocabulary.labelled_prompts_for, ("colour", "shape"))], axis=0)
    by_path = {str(p): s for p, s in zip(paths, expected)}
    assert len(hits) == 10
    for hit in hits:
        assert hit.score == pytest.approx(by_path[str(hit.path)], abs=1e-4)
