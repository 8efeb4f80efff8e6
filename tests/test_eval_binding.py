"""The ``binding`` task (eval/binding.py): its scenes, regions, metrics and a tiny end-to-end run."""

import json
from dataclasses import replace

import numpy as np
import pytest

from sharpclip.data import shapes
from sharpclip.eval import binding as b
from sharpclip.eval.retrieval import matches, named_attributes


@pytest.fixture(scope="module")
def pair_part():
    return b.binding_part(seed=3, size=12, layout="varied")


@pytest.fixture(scope="module")
def single_part():
    return b.confusion_part(seed=3, size=12)


def test_binding_gallery_is_scene_twin_confuser(pair_part):
    part = pair_part
    assert len(part.images) == 36 and len(part.queries) == 12
    assert part.relevant.shape == (12, 36)
    for q in range(12):
        scene, twin, confuser = part.specs[3 * q:3 * q + 3]
        assert part.truth[q] == 3 * q and part.twin[q] == 3 * q + 1
        assert twin == shapes.binding_twin(scene)
        changed = [i for i in range(2) if scene.objects[i] != confuser.objects[i]]
        assert len(changed) == 1
        assert confuser.objects[changed[0]].shape == shapes.CONFUSABLE[
            scene.objects[changed[0]].shape]
        assert scene.objects[0].colour != scene.objects[1].colour
        assert shapes.spec_split(scene) == "test"
        # the caption names the scene; neither hard negative matches it
        assert part.relevant[q, 3 * q] and not part.relevant[q, 3 * q + 1:3 * q + 3].any()
        assert part.boxes[3 * q] == part.boxes[3 * q + 1]  # twin: same pixels drawn
        a = np.asarray(part.images[3 * q]).astype(int)
        t = np.asarray(part.images[3 * q + 1]).astype(int)
        inside = np.zeros(a.shape[:2], bool)
        for x0, y0, x1, y1 in part.boxes[3 * q]:
            inside[y0:y1, x0:x1] = True
        assert (a != t).any() and np.array_equal(a[~inside], t[~inside])


def test_relevance_follows_the_labels(pair_part):
    part = pair_part
    for q in range(len(part.queries)):
        named = named_attributes(part.queries[q], part.specs[part.truth[q]])
        assert part.relevant[q].tolist() == [matches(named, s) for s in part.specs]


def test_confusion_gallery_pairs_each_scene_with_its_look_alike(single_part):
    part = single_part
    assert len(part.images) == 24 and part.look_alike
    for q, text in enumerate(part.queries):
        scene, confuser = part.specs[2 * q:2 * q + 2]
        obj = scene.objects[0]
        assert scene.count == 1 and obj.shape in shapes.CONFUSABLE
        assert confuser.objects[0] == replace(obj, shape=shapes.CONFUSABLE[obj.shape])
        assert part.look_alike[q] == shapes.CONFUSABLE[obj.shape]
        assert obj.shape in text.split() and obj.colour in text.split()
        assert part.relevant[q, 2 * q] and not part.relevant[q, 2 * q + 1]


def test_oracle_box_is_a_square_window_around_the_object():
    for box in [(3, 4, 10, 9), (50, 52, 63, 64), (0, 0, 64, 20), (20, 30, 28, 36)]:
        for window in (0.0, 0.5):
            x0, y0, x1, y1 = b.oracle_box(box, 64, window)
            assert x1 - x0 == y1 - y0 >= round(window * 64)
            assert 0 <= x0 and 0 <= y0 and x1 <= 64 and y1 <= 64
            assert x0 <= box[0] and y0 <= box[1] and box[2] <= x1 and box[3] <= y1


def test_sub_grids_and_on_demand_regions_match_direct_encoding(model, pair_part):
    part = b.Part(pair_part.name, pair_part.images[:6], pair_part.specs[:6],
                  pair_part.boxes[:6], pair_part.queries[:2], pair_part.truth[:2],
                  pair_part.twin[:2], pair_part.relevant[:2, :6])
    every = b.encode_part(model, part, "whole+halves+2x2+3x3", chunk=4)
    direct = b.encode_part(model, part, "whole+2x2")
    for got, want in zip(every.grid_regions("whole+2x2"), direct.grid_regions("whole+2x2")):
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(every.whole, direct.whole, atol=1e-5)
    np.testing.assert_allclose(every.whole, model.encode_images(part.images), atol=1e-5)
    no_whole = b.encode_part(model, part, "2x2")
    np.testing.assert_allclose(no_whole.whole, direct.whole, atol=1e-5)

    whole_only = b.encode_part(model, part, regions=False)
    galleries = b._galleries(whole_only, "whole+2x2", part, model.encode_images, b.DEFAULT_ORACLE)
    ids = np.array([4, 1])
    vectors, owner, boxes = galleries["grid"].regions(ids)
    from sharpclip.query.gallery import ArrayGallery

    precomputed = ArrayGallery(direct.whole, regions=direct.grid_regions("whole+2x2"))
    want = precomputed.regions(ids)
    np.testing.assert_allclose(vectors, want[0], atol=1e-5)
    assert owner.tolist() == want[1].tolist() and boxes.tolist() == want[2].tolist()
    vectors, owner, boxes = galleries["oracle"].regions(ids)
    want = ArrayGallery(every.whole, regions=every.oracle_regions()).regions(ids)
    np.testing.assert_allclose(vectors, want[0], atol=1e-5)
    assert owner.tolist() == want[1].tolist() == [0, 0, 0, 1, 1, 1]
    assert boxes.tolist() == want[2].tolist() and boxes[0].tolist() == [0, 0, 64, 64]
    assert galleries["grid"].computed == 2


def test_part_metrics_on_known_rankings(pair_part, single_part):
    n = len(pair_part.images)
    rows = np.arange(len(pair_part.queries))
    scores = np.zeros((len(rows), n))
    scores[rows, pair_part.truth] = 1.0
    scores[rows, pair_part.twin] = 0.5
    best = b.part_metrics(pair_part, scores)
    assert best["binding_accuracy"] == 1.0 and best["recall@1"] == 1.0
    scores[rows, pair_part.twin] = 2.0
    worse = b.part_metrics(pair_part, scores)
    assert worse["binding_accuracy"] == 0.0 and worse["recall@1"] == 0.0
    assert worse["recall@10"] == 1.0
    assert all(0.0 <= v <= 1.0 for v in (*best.values(), *worse.values()))

    part = single_part
    scores = np.zeros((len(part.queries), len(part.images)))
    rows = np.arange(len(part.queries))
    scores[rows, part.truth] = 2.0
    scores[rows, part.truth + 1] = 1.0  # the look-alike second
    metrics = b.part_metrics(part, scores)
    shapes_in_gallery = np.array([s.objects[0].shape for s in part.specs])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    assert metrics["confusion@10"] == pytest.approx(
        np.mean(shapes_in_gallery[top] == np.array(part.look_alike)[:, None]))
    assert metrics["confusion@10"] >= 0.1 and metrics["confusion_recall@10"] == 1.0


def test_steering_texts_are_what_steering_encodes(model):
    from sharpclip.methods.steering import SteerConfig, steer_query

    values = b.vocabulary_values()
    text = "a red striped circle left of a blue hexagon drawn as an outline"
    asked = []

    def encode(texts):
        asked.extend(texts)
        return model.encode_texts(list(texts))

    def knn(vector, m):
        return np.arange(m), np.eye(m, len(vector), dtype=np.float32)

    steer_query(text, encode([text])[0], values, encode, knn, SteerConfig())
    assert set(asked[1:]) == set(b.steering_texts(text, values, SteerConfig()))


def test_tiny_run_schema_and_oracle_parts_beat_plain_binding(model, tmp_path):
    result = b.run_binding(model, seed=5, size=40, confusion_size=20)
    assert set(result) >= {"task", "model", "seed", "size", "layout", "methods", "params",
                           "timing_s"}
    assert (result["task"], result["seed"], result["size"], result["layout"]) == \
        ("binding", 5, 40, "varied")
    assert result["model"] == model.fingerprint
    assert list(result["methods"]) == list(b.METHODS)
    keys = {"recall@1", "recall@10", "map", "ndcg@10", "binding_accuracy", "confusion@10",
            "confusion_recall@10", "confusion_map"}
    for metrics in result["methods"].values():
        assert set(metrics) == keys
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in metrics.values())
    methods = result["methods"]
    # part matching only re-orders the shortlist: a one-part (confusion) query is left alone
    assert methods["parts"]["confusion@10"] == methods["plain"]["confusion@10"]
    assert result["diagnostics"]["parts"]["binding"]["ms_per_query"]["parts"] > 0
    assert result["diagnostics"]["parts"]["confusion"]["regions_encoded_on_demand"] == 0
    assert "steer" in result["diagnostics"]["steer"]["binding"]["ms_per_query"]
    # objects matched to their own crops bind colours far better than the whole image
    assert methods["parts (oracle objects)"]["binding_accuracy"] >= \
        methods["plain"]["binding_accuracy"]
    assert result["params"]["data"]["binding_gallery"] == 120
    assert json.loads(json.dumps(result)) == result
    b.write_results(result, tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert all(f"| {m} |" in table for m in b.METHODS) and "layout `varied`" in table
    assert json.loads((tmp_path / "results.json").read_text())["task"] == "binding"


def test_fixed_layout_is_labelled_and_bad_values_refused(model):
    result = b.run_binding(model, seed=1, size=6, confusion_size=4, layout="fixed",
                           methods=("plain",))
    assert result["layout"] == "fixed" and list(result["methods"]) == ["plain"]
    assert "layout `fixed`" in b.to_markdown(result)
    with pytest.raises(ValueError, match="unknown layout"):
        b.run_binding(model, size=4, layout="diagonal")
    with pytest.raises(ValueError, match="unknown method"):
        b.run_binding(model, size=4, methods=("clip",))


def test_oracle_crops_pad_or_keep_the_frame(pair_part):
    image, boxes = pair_part.images[0], pair_part.boxes[0]
    fill = b.border_colour(image)
    padded, windows = b.oracle_crops(image, boxes, b.OracleConfig(0.5))
    assert [c.size for c in padded] == [(32, 32)] * 2 and windows == [
        b.oracle_box(box, 64, 0.5) for box in boxes]
    framed, same = b.oracle_crops(image, boxes, b.OracleConfig(0.0, frame=True))
    assert same == [b.oracle_box(box, 64, 0.0) for box in boxes]
    pixels = np.asarray(image)
    for crop, (x0, y0, x1, y1) in zip(framed, same):
        array = np.asarray(crop)
        assert crop.size == image.size
        assert np.array_equal(array[y0:y1, x0:x1], pixels[y0:y1, x0:x1])
        outside = np.ones(array.shape[:2], bool)
        outside[y0:y1, x0:x1] = False
        assert (array[outside] == fill).all()
    with pytest.raises(ValueError, match="oracle window"):
        b.OracleConfig(window=1.5)
