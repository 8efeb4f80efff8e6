"""Query-conditioned local steering (methods/steering.py, METHODS.md §2b): attribute finding and
swapping, the direction's sign and overlap rule, directions that add, and the whole method with a
fake encoder and a fake gallery search."""

import numpy as np
import pytest

from sharpclip.methods.steering import (
    Attribute,
    SteerConfig,
    binding_swap,
    confusers,
    direction,
    find_attributes,
    nearest_confuser,
    parse_steer,
    steer,
    steer_query,
    swap_value,
)

VALUES = {
    "colour": ["red", "blue", "green", "light blue"],
    "shape": ["circle", "square", "pentagon"],
    "size": ["small", "large"],
}


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --- text side -------------------------------------------------------------------------------

def test_find_attributes():
    assert find_attributes("a Red pentagon", VALUES) == [
        Attribute("colour", "red", 2, 5), Attribute("shape", "pentagon", 6, 14)]
    text = "a LIGHT  blue circle"
    assert find_attributes(text, VALUES) == [
        Attribute("colour", "light blue", 2, 13), Attribute("shape", "circle", 14, 20)]
    assert find_attributes("a florp zibble", VALUES) == []
    assert find_attributes("", VALUES) == [] and find_attributes("a red cat", {}) == []
    assert find_attributes("reddish squares, bluesy", VALUES) == []  # whole words only
    found = find_attributes("(red), blue! small-circle?", VALUES)
    assert [(a.value, a.start, a.end) for a in found] == [
        ("red", 1, 4), ("blue", 7, 11), ("small", 13, 18), ("circle", 19, 25)]


def test_swap_value_and_confusers():
    text = "a Red pentagon"
    red, pentagon = find_attributes(text, VALUES)
    assert swap_value(text, red, "blue") == "a Blue pentagon"
    assert swap_value(text, pentagon, "square") == "a Red square"
    assert swap_value("A RED DOT", Attribute("colour", "red", 2, 5), "green") == "A GREEN DOT"
    with pytest.raises(ValueError, match="not at"):
        swap_value(text, Attribute("colour", "red", 0, 3), "blue")
    assert confusers(red, VALUES) == ["blue", "green", "light blue"]
    assert confusers(Attribute("size", "Large", 0, 5), VALUES) == ["small"]
    with pytest.raises(ValueError, match="texture"):
        confusers(Attribute("texture", "striped", 0, 7), VALUES)


@pytest.mark.parametrize("text, swapped", [
    ("a red circle left of a blue square", "a blue circle left of a red square"),
    ("A Red circle to the left of a blue square", "A Blue circle to the left of a red square"),
    ("a small red circle above a large red square", "a large red circle above a small red square"),
    ("two shapes: a red circle below a light blue pentagon",
     "two shapes: a light blue circle below a red pentagon"),
    ("a red circle left of a red square", "a red square left of a red circle"),  # shapes differ
    ("a red circle left of a square", "a red square left of a circle"),
    ("a red circle", None),
    ("a red circle, a blue square and a green star", None),  # three parts
])
def test_binding_swap(text, swapped):
    assert binding_swap(text, VALUES) == swapped


@pytest.mark.parametrize("text", ["a red circle", "a red circle left of a red square",
                                  "a red circle left of a square", "a circle left of a square"])
def test_binding_swap_none_without_a_differing_condition(text):
    assert binding_swap(text, {"colour": VALUES["colour"]}) is None


def test_parse_steer():
    assert parse_steer("colour=red", VALUES) == ("colour", "red")
    assert parse_steer(" Colour = LIGHT  Blue ", VALUES) == ("colour", "light blue")
    with pytest.raises(ValueError, match=r"'colour'.*colour, shape, size"):
        parse_steer("colour", VALUES)
    with pytest.raises(ValueError, match=r"'texture=striped'.*colour, shape, size"):
        parse_steer("texture=striped", VALUES)
    with pytest.raises(ValueError, match=r"'colour=purple'.*'purple'.*red, blue"):
        parse_steer("colour=purple", VALUES)


def test_config_validation():
    for kwargs, word in (({"m": 0}, "m"), ({"m": 2.0}, "m"), ({"beta": -0.1}, "beta"),
                         ({"beta": float("nan")}, "beta")):
        with pytest.raises(ValueError, match=word):
            SteerConfig(**kwargs)


# --- vector side -----------------------------------------------------------------------------

def test_direction_sign_and_steered_query():
    rng = np.random.default_rng(0)
    e1 = np.eye(6)[0]
    positive = unit(e1 + rng.normal(scale=0.2, size=(10, 6)))
    negative = unit(-e1 + rng.normal(scale=0.2, size=(10, 6)))
    d = direction(np.arange(10), positive, np.arange(10, 20), negative)
    assert d.dtype == np.float32 and np.linalg.norm(d) == pytest.approx(1, abs=1e-6)
    assert d @ e1 > 0.95
    query = unit(np.eye(6)[1] + 0.3 * e1)
    steered = steer(query, [d], 0.2)
    centre = unit(positive.mean(axis=0))
    assert np.linalg.norm(steered) == pytest.approx(1, abs=1e-6)
    assert steered @ centre > query @ centre + 0.05


def test_direction_drops_the_overlap():
    pos = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 5.0]])
    neg = np.array([[0, 0, 5.0], [0, -1.0, 0]])
    # id 7 is in both: its (huge) vector is ignored on both sides
    d = direction(np.array([1, 2, 7]), pos, np.array([7, 3]), neg)
    assert np.allclose(d, unit(pos[:2].mean(axis=0) - neg[1]))
    assert direction(np.array([1, 2]), pos[:2], np.array([2, 1]), pos[:2][::-1]) is None
    assert direction(np.array([1]), pos[:1], np.array([2]), pos[:1]) is None  # difference 0


def test_directions_add_not_average():
    query, d1, d2 = np.eye(4)[:3]
    expected = unit(query + 0.2 * (d1 + d2))
    steered = steer(query, [d1, d2], 0.2)
    assert np.allclose(steered, expected, atol=1e-6)
    assert not np.allclose(steered, unit(query + 0.1 * (d1 + d2)), atol=1e-3)
    same = steer(query, [], 0.2)
    assert np.array_equal(same, query) and same is not query
    assert np.allclose(steer(query, [d1], 0.0), query)


def test_nearest_confuser():
    query = unit([1.0, 0.2, 0])
    candidates = np.array([[0, 1.0, 0], [2.0, 2.0, 0], [0.9, 0.15, 0]])  # the largest dot
    assert nearest_confuser(query, candidates) == 2  # product is row 1; the largest cosine row 2
    with pytest.raises(ValueError):
        nearest_confuser(query, np.zeros((0, 3)))


# --- the whole method ------------------------------------------------------------------------

D = 12
E = np.eye(D)
RED, BLUE, GREEN, CIRCLE, SQUARE = E[0], E[1], E[2], E[3], E[4]


class FakeModel:
    """A dict from text to vector (a seeded random vector for any other text), and a brute-force
    kNN over a small gallery; both record their calls."""

    def __init__(self, table, gallery):
        self.table, self.gallery = table, gallery
        self.encoded, self.searched = [], []

    def encode_texts(self, texts):
        self.encoded.append(list(texts))
        rows = []
        for text in texts:
            if text not in self.table:
                seed = sum(map(ord, text))
                self.table[text] = unit(np.random.default_rng(seed).normal(size=D))
            rows.append(self.table[text])
        return np.array(rows, dtype=np.float32)

    def knn(self, vector, m):
        self.searched.append(np.array(vector))
        ids = np.argsort(-(self.gallery @ vector), kind="stable")[:m]
        return ids, self.gallery[ids]


def colour_world(seed=0):
    """Texts bind colour weakly (0.5); images of a red circle are around n(RED + CIRCLE)."""
    rng = np.random.default_rng(seed)
    query = unit(0.5 * RED + CIRCLE)
    table = {"a red circle": query, "a blue circle": unit(0.5 * BLUE + CIRCLE),
             "a green circle": unit(0.5 * GREEN + 0.2 * CIRCLE)}
    centres = [RED + CIRCLE, BLUE + CIRCLE, GREEN + CIRCLE]
    clusters = [unit(c + rng.normal(scale=0.05, size=(8, D))) for c in centres]
    gallery = np.vstack(clusters).astype(np.float32)  # ids 0-7 red, 8-15 blue, 16-23 green
    return query, FakeModel(table, gallery)


def test_steer_query_end_to_end():
    query, fake = colour_world()
    values = {"colour": ["red", "green", "blue"]}
    result = steer_query("a red circle", query, values, fake.encode_texts, fake.knn,
                         SteerConfig(m=5, beta=0.2))
    assert fake.encoded == [["a green circle", "a blue circle"]]  # one call for all confusers
    assert result.details == [{"condition": "colour", "value": "red", "confuser": "blue",
                               "contrast": "a blue circle", "overlap": 0, "used": True}]
    gallery = fake.gallery.astype(np.float64)
    pos = np.argsort(-(gallery @ query))[:5]
    neg = np.argsort(-(gallery @ unit(0.5 * BLUE + CIRCLE)))[:5]
    assert set(pos) <= set(range(8)) and set(neg) <= set(range(8, 16))
    expected = unit(query + 0.2 * unit(gallery[pos].mean(axis=0) - gallery[neg].mean(axis=0)))
    assert np.allclose(result.vector, expected, atol=1e-5)
    red, blue = unit(gallery[:8].mean(axis=0)), unit(gallery[8:16].mean(axis=0))
    assert result.vector @ red > query @ red + 0.01  # towards the positive neighbours
    assert result.vector @ blue < query @ blue - 0.05  # away from the negative ones


def test_steer_query_overlap_is_reported():
    query, fake = colour_world()
    result = steer_query("a red circle", query, {"colour": ["red", "blue", "green"]},
                         fake.encode_texts, fake.knn, SteerConfig(m=20))
    detail = result.details[0]
    assert detail["overlap"] > 0 and detail["used"] is True


def test_steer_query_with_binding_swap_and_explicit_attributes():
    text = "a red circle left of a blue square"
    table = {text: unit(RED + CIRCLE + BLUE + SQUARE)}
    gallery = unit(np.random.default_rng(1).normal(size=(40, D))).astype(np.float32)
    fake = FakeModel(table, gallery)
    values = {"colour": ["red", "blue"], "shape": ["circle", "square"]}
    result = steer_query(text, table[text], values, fake.encode_texts, fake.knn, SteerConfig(m=6))
    assert [d["condition"] for d in result.details] == ["colour", "shape", "colour", "shape",
                                                        "binding"]
    binding = result.details[-1]
    assert binding["contrast"] == "a blue circle left of a red square"
    assert (binding["value"], binding["confuser"]) == ("red, blue", "blue, red")
    assert fake.encoded == [["a blue circle left of a blue square",  # every contrast, one call
                             "a red square left of a blue square",
                             "a red circle left of a red square",
                             "a red circle left of a blue circle",
                             "a blue circle left of a red square"]]
    assert len(fake.searched) == 1 + 5  # N+ once, one N- per direction
    no_binding = steer_query(text, table[text], values, fake.encode_texts, fake.knn,
                             SteerConfig(m=6, binding_swap=False))
    assert len(no_binding.details) == 4
    only = steer_query(text, table[text], values, fake.encode_texts, fake.knn,
                       SteerConfig(binding_swap=False),
                       attributes=[Attribute("shape", "square", 28, 34)])
    assert [d["contrast"] for d in only.details] == ["a red circle left of a blue circle"]


def test_steer_query_without_attributes_returns_the_query():
    query, fake = colour_world()
    result = steer_query("a florp zibble", query, {"colour": ["red", "blue"]},
                         fake.encode_texts, fake.knn, SteerConfig())
    assert result.details == [] and np.array_equal(result.vector, query)
    assert result.vector is not query
    assert fake.encoded == [] and fake.searched == []


def test_a_spatial_relation_is_not_an_attribute():
    values = {"position": ["left", "right"], "colour": ["red", "blue"]}
    found = find_attributes("a red circle left of a blue square on the left", values)
    assert [(a.condition, a.value) for a in found] == [("colour", "red"), ("colour", "blue"),
                                                       ("position", "left")]
    assert found[-1].start == len("a red circle left of a blue square on the ")
