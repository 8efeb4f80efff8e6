import json
from dataclasses import replace

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


# --- layouts, object boxes, binding twins and shape confusers (the binding benchmark) ---------

def _pair_specs(count, seed=0):
    rng = np.random.default_rng(seed)
    specs = []
    while len(specs) < count:
        spec = sh.random_spec(rng, "pair")
        if spec.objects[0].colour != spec.objects[1].colour:
            specs.append(spec)
    return specs


def _recoloured(spec, colour):
    return replace(spec, objects=tuple(replace(o, colour=colour) for o in spec.objects))


def _object_mask(spec, seed, layout):
    """Pixels that change when every object is drawn in another colour: the objects' pixels."""
    other = next(c for c in ("cyan", "red", "yellow")
                 if c not in {o.colour for o in spec.objects})
    image = np.asarray(sh.render(spec, 64, np.random.default_rng(seed), layout)).astype(int)
    moved = np.asarray(sh.render(_recoloured(spec, other), 64, np.random.default_rng(seed),
                                 layout)).astype(int)
    return (image != moved).any(axis=2)


def _in_boxes(boxes, shape):
    inside = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        inside[y0:y1, x0:x1] = True
    return inside


def _nearest_colour(pixels):
    names = list(sh.COLOURS)
    palette = np.array([sh.COLOURS[c] for c in names])
    return names[int(np.argmin(((palette - np.median(pixels, axis=0)) ** 2).sum(axis=1)))]


def test_fixed_layout_is_the_default_and_unchanged():
    spec = _pair_specs(1)[0]
    a = np.asarray(sh.render(spec, 64, np.random.default_rng(5)))
    b, boxes = sh.render_with_boxes(spec, 64, np.random.default_rng(5), "fixed")
    assert np.array_equal(a, np.asarray(b)) and len(boxes) == 2
    assert sh.ShapesConfig().layout == "fixed"
    with pytest.raises(ValueError, match="unknown layout"):
        sh.ShapesConfig(layout="random")
    with pytest.raises(ValueError, match="unknown layout"):
        sh.render(spec, 64, np.random.default_rng(0), "random")


@pytest.mark.parametrize("layout", sh.LAYOUTS)
def test_binding_twin_differs_only_in_the_objects_colours(layout):
    for i, spec in enumerate(_pair_specs(12, seed=1)):
        twin = sh.binding_twin(spec)
        assert [o.colour for o in twin.objects] == [o.colour for o in spec.objects][::-1]
        assert [(o.shape, o.size, o.fill) for o in twin.objects] == \
            [(o.shape, o.size, o.fill) for o in spec.objects]
        image, boxes = sh.render_with_boxes(spec, 64, np.random.default_rng(i), layout)
        twin_image, twin_boxes = sh.render_with_boxes(twin, 64, np.random.default_rng(i), layout)
        assert boxes == twin_boxes
        mask = _object_mask(spec, i, layout)
        assert np.array_equal(mask, _object_mask(twin, i, layout))  # same pixels drawn
        a, b = np.asarray(image).astype(int), np.asarray(twin_image).astype(int)
        assert np.array_equal(a[~mask], b[~mask])  # everything else identical
        for box, obj, swapped in zip(boxes, spec.objects, twin.objects):
            inside = mask & _in_boxes([box], mask.shape)
            assert _nearest_colour(a[inside]) == obj.colour
            assert _nearest_colour(b[inside]) == swapped.colour


def test_binding_twin_needs_two_colours():
    spec = _pair_specs(1)[0]
    same = _recoloured(spec, "red")
    with pytest.raises(ValueError, match="changes nothing"):
        sh.binding_twin(same)
    single = sh.SceneSpec((sh.ShapeObject("circle", "red", "small", "solid"),))
    with pytest.raises(ValueError, match="pair scene"):
        sh.binding_twin(single)


@pytest.mark.parametrize("layout", sh.LAYOUTS)
def test_shape_confuser_differs_only_in_one_shape(layout):
    assert set(sh.CONFUSABLE) <= set(sh.SHAPES) and set(sh.CONFUSABLE.values()) <= set(sh.SHAPES)
    specs = [s for s in _pair_specs(40, seed=2) if sh.confusable_objects(s)][:12]
    for i, spec in enumerate(specs):
        index = sh.confusable_objects(spec)[-1]
        confuser = sh.shape_confuser(spec, index)
        changed = [(a, b) for a, b in zip(spec.objects, confuser.objects) if a != b]
        assert changed == [(spec.objects[index],
                            replace(spec.objects[index],
                                       shape=sh.CONFUSABLE[spec.objects[index].shape]))]
        image, boxes = sh.render_with_boxes(spec, 64, np.random.default_rng(i), layout)
        other, other_boxes = sh.render_with_boxes(confuser, 64, np.random.default_rng(i), layout)
        keep = 1 - index
        assert boxes[keep] == other_boxes[keep]
        differ = (np.asarray(image) != np.asarray(other)).any(axis=2)
        assert differ.any()
        assert not (differ & ~_in_boxes([boxes[index], other_boxes[index]], differ.shape)).any()
        # the replaced object keeps its colour
        mask = _object_mask(confuser, i, layout) & _in_boxes([other_boxes[index]], differ.shape)
        assert _nearest_colour(np.asarray(other).astype(int)[mask]) == spec.objects[index].colour


def test_shape_confuser_default_and_refusal():
    spec = sh.SceneSpec((sh.ShapeObject("star", "red", "small", "solid"),
                         sh.ShapeObject("hexagon", "blue", "large", "dotted")), relation="above")
    assert sh.shape_confuser(spec).objects[1].shape == "pentagon"
    with pytest.raises(ValueError, match="no confusable shape"):
        sh.shape_confuser(spec, 0)
    none = sh.SceneSpec((sh.ShapeObject("star", "red", "small", "solid"),
                         sh.ShapeObject("cross", "blue", "large", "dotted")), relation="above")
    with pytest.raises(ValueError, match="no object has a confusable shape"):
        sh.shape_confuser(none)
    single = sh.SceneSpec((sh.ShapeObject("circle", "red", "small", "solid"),))
    assert sh.shape_confuser(single).objects[0].shape == "pentagon"


@pytest.mark.parametrize("layout", sh.LAYOUTS)
def test_boxes_contain_the_drawn_objects(layout):
    for i, spec in enumerate(_pair_specs(10, seed=3)):
        _, boxes = sh.render_with_boxes(spec, 64, np.random.default_rng(i), layout)
        mask = _object_mask(spec, i, layout)
        assert not (mask & ~_in_boxes(boxes, mask.shape)).any()
        for box in boxes:  # tight: every box edge touches a drawn pixel
            x0, y0, x1, y1 = box
            inner = mask[y0:y1, x0:x1]
            assert inner[0].any() and inner[-1].any() and inner[:, 0].any() and inner[:, -1].any()
    single = sh.SceneSpec((sh.ShapeObject("circle", "red", "small", "solid"),), count=3)
    _, boxes = sh.render_with_boxes(single, 64, np.random.default_rng(0))
    assert len(boxes) == 3


def test_varied_layout_varies_and_keeps_the_relation():
    samples = list(sh.generate(sh.ShapesConfig(kind="pair", size=300, seed=4, layout="varied")))
    n = 64
    centres, widths = [], {"small": set(), "large": set()}
    for k, s in enumerate(samples):
        _, boxes = sh.render_with_boxes(s.spec, n, np.random.default_rng(k), "varied")
        (a0, b0, a1, b1), (c0, d0, c1, d1) = boxes
        assert all(0 <= v <= n for box in boxes for v in box)
        relation = s.spec.relation
        if relation == "left of":
            assert a1 <= c0
        elif relation == "right of":
            assert c1 <= a0
        elif relation == "above":
            assert b1 <= d0
        else:
            assert d1 <= b0
        for (x0, y0, x1, y1), obj in zip(boxes, s.spec.objects):
            centres.append(((x0 + x1) / 2, (y0 + y1) / 2))
            if obj.shape in ("circle", "square"):
                widths[obj.size].add(x1 - x0)
    centres = np.array(centres)
    for axis in (0, 1):  # objects anywhere on both axes, not only at +-0.25
        assert centres[:, axis].min() < 0.2 * n and centres[:, axis].max() > 0.8 * n
        off_grid = np.abs(centres[:, axis] - n / 2)
        assert ((off_grid > 4) & (np.abs(off_grid - n / 4) > 4)).mean() > 0.3
    assert len(widths["small"]) >= 3 and len(widths["large"]) >= 3  # several scales
    assert max(widths["small"]) < max(widths["large"])
    fixed = list(sh.generate(sh.ShapesConfig(kind="pair", size=300, seed=4)))
    assert [s.spec for s in fixed] == [s.spec for s in samples]  # same labels, new places
    assert not np.array_equal(np.asarray(fixed[0].image), np.asarray(samples[0].image))


def test_layout_leaves_single_scenes_alone():
    a = _pixels(sh.ShapesConfig(size=30, seed=6))
    b = _pixels(sh.ShapesConfig(size=30, seed=6, layout="varied"))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
