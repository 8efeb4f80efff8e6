import json

import numpy as np
import pytest

from sharpclip.cli import main
from sharpclip.data import shapes as sh


def _pixels(config):
    return [np.asarray(s.image) for s in sh.generate(config)]


def test_deterministic_from_seed():
    a = _pixels(sh.ShapesConfig(size=20, seed=3))
    b = _pixels(sh.ShapesConfig(size=20, seed=3))
    c = _pixels(sh.ShapesConfig(size=20, seed=4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_splits_share_no_specification():
    train = {s.spec.key() for s in sh.generate(sh.ShapesConfig(size=400, split="train"))}
    test = {s.spec.key() for s in sh.generate(sh.ShapesConfig(size=200, split="test"))}
    assert train and test and not train & test


def test_identity_renders_same_spec_with_jitter():
    samples = list(sh.generate(sh.ShapesConfig(kind="identity", size=8, views=4)))
    assert [s.identity for s in samples] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len({s.spec.key() for s in samples[:4]}) == 1
    first = [np.asarray(s.image) for s in samples[:4]]
    assert not any(np.array_equal(first[0], other) for other in first[1:])


def test_pair_scenes_have_two_labelled_objects_and_relation():
    for s in sh.generate(sh.ShapesConfig(kind="pair", size=30)):
        assert len(s.spec.objects) == 2 and s.spec.relation in sh.RELATIONS
        assert all(s.spec.relation in c for c in s.captions)


def test_captions_name_true_attributes():
    for s in sh.generate(sh.ShapesConfig(size=200, seed=1)):
        obj = s.spec.objects[0]
        for caption in s.captions:
            assert obj.colour in caption
            assert any(word in caption for word in sh._SYNONYMS[obj.shape])
            for size in sh.SIZES:
                if size in caption.split():
                    assert size == obj.size


def test_attribute_vocabularies_are_large_enough():
    assert len(sh.SHAPES) >= 8 and {"pentagon", "hexagon"} <= set(sh.SHAPES)
    assert len(sh.COLOURS) >= 8 and len(sh.FILLS) >= 3 and len(sh.BACKGROUNDS) >= 3


def test_object_is_drawn_in_its_colour():
    spec = sh.SceneSpec((sh.ShapeObject("square", "red", "large", "solid"),), background="white")
    pixels = np.asarray(sh.render(spec, 64, np.random.default_rng(0))).reshape(-1, 3).astype(int)
    red = (pixels[:, 0] > 150) & (pixels[:, 1] < 90) & (pixels[:, 2] < 90)
    assert red.mean() > 0.05


def test_every_attribute_varies():
    samples = list(sh.generate(sh.ShapesConfig(size=600, seed=2)))
    objs = [s.spec.objects[0] for s in samples]
    assert {o.shape for o in objs} == set(sh.SHAPES)
    assert {o.colour for o in objs} == set(sh.COLOURS)
    assert {o.fill for o in objs} == set(sh.FILLS)
    assert {s.spec.count for s in samples} == {1, 2, 3, 4}
    assert {s.spec.background for s in samples} == set(sh.BACKGROUNDS)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown kind"):
        sh.ShapesConfig(kind="triple")


def test_cli_writes_pngs_and_labels(tmp_path):
    assert main(["shapes", "--out", str(tmp_path), "--kind", "pair", "--size", "5"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == 5
    assert all((tmp_path / r["file"]).is_file() and len(r["objects"]) == 2 for r in rows)
