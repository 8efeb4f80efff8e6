"""The query pipeline: one battery over both galleries, each stage alone, the plan's checks, the
CLI's messages, and the module boundaries (store/ imports nothing above data/)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from scenes import write_scenes
from sharpclip.cli import main
from sharpclip.collection import Collection
from sharpclip.data import shapes
from sharpclip.data.imagefiles import load_rgb
from sharpclip.data.regions import RegionGrid, region_crops
from sharpclip.ingest import IndexConfig
from sharpclip.methods.conditional import project
from sharpclip.methods.parts import PartsConfig
from sharpclip.methods.steering import SteerConfig
from sharpclip.query.condition import condition_projection
from sharpclip.query.gallery import ArrayGallery, CollectionGallery
from sharpclip.query.pipeline import (
    Candidates,
    PartRerank,
    QueryError,
    QueryPlan,
    Steer,
    run_query,
)

GRID = RegionGrid("whole+2x2")
SRC = Path(__file__).parents[1] / "src" / "sharpclip"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, model):
    """Pair scenes indexed with regions, and the same data as in-memory arrays."""
    folder = tmp_path_factory.mktemp("pairs")
    config = shapes.ShapesConfig(kind="pair", size=24, seed=5)
    paths = []
    for i, sample in enumerate(shapes.generate(config)):
        sample.image.save(folder / f"p{i:02d}.png")
        paths.append(folder / f"p{i:02d}.png")
    coll_path = tmp_path_factory.mktemp("c") / "c.sc"
    with Collection.create(coll_path, model) as coll:
        coll.add([folder], config=IndexConfig(workers=0, progress=False, regions=GRID))
    images = [load_rgb(p) for p in paths]
    crops = [model.encode_images(region_crops(im, GRID)) for im in images]
    boxes = np.concatenate([GRID.boxes(im.width, im.height) for im in images])
    owner = np.repeat(np.arange(len(paths)), len(GRID))
    array = ArrayGallery(model.encode_images(images), regions=(np.concatenate(crops), owner, boxes))
    return coll_path, paths, array


def test_both_galleries_answer_alike(indexed, model):
    coll_path, paths, array = indexed
    with Collection.open(coll_path) as coll:
        disk = CollectionGallery(coll)
        id_of = {coll.item(p).id: n for n, p in enumerate(paths)}
        query = model.encode_texts(["a red square"])[0]
        s1, i1 = array.nearest(query, 5)
        s2, i2 = disk.nearest(query, 5)
        assert [id_of[int(i)] for i in i2] == i1.tolist()
        np.testing.assert_allclose(s1, s2, atol=1e-5)
        ids = np.array([coll.item(paths[n]).id for n in (3, 0, 7)])
        np.testing.assert_allclose(disk.vectors(ids), array.vectors([3, 0, 7]), atol=1e-5)
        r1, o1, b1 = array.regions([3, 0, 7])
        r2, o2, b2 = disk.regions(ids)
        np.testing.assert_allclose(r1, r2, atol=1e-5)
        assert o1.tolist() == o2.tolist() == np.repeat([0, 1, 2], len(GRID)).tolist()
        assert b1.tolist() == b2.tolist()
        assert disk.computed_on_demand == 0
        W, _ = condition_projection(coll, "colour")  # under a condition: the same subspace
        whole = array.vectors(range(len(paths)))
        by_colour = ArrayGallery(whole, conditions={"colour": (W, project(whole, W))})
        like = array.vectors([4])[0]
        s1, i1 = by_colour.nearest(like, 6, condition="colour")
        s2, i2 = disk.nearest(like, 6, condition="colour")
        assert [id_of[int(i)] for i in i2] == i1.tolist() and i1[0] == 4
        np.testing.assert_allclose(s1, s2, atol=1e-5)


def test_regions_on_demand_equal_stored_ones(indexed, model, tmp_path):
    _, paths, array = indexed
    with Collection.create(tmp_path / "plain.sc", model) as coll:
        coll.add(paths[:6], config=IndexConfig(workers=0, progress=False))
        disk = CollectionGallery(coll, grid=GRID)
        ids = [coll.item(p).id for p in paths[:6]]
        vectors, _owner, _ = disk.regions(ids)
        np.testing.assert_allclose(vectors, array.regions(range(6))[0], atol=1e-5)
        assert disk.computed_on_demand == 6
        disk.regions(ids)
        assert disk.computed_on_demand == 6  # cached in the process


class FakeEncoder:
    """Texts to fixed unit vectors (a table), so the stages can be checked by hand."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def __call__(self, texts):
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def unit(*values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_part_rerank_fixes_a_binding_the_plain_order_gets_wrong():
    red_circle, blue_square = unit(1, 0, 0, 0), unit(0, 1, 0, 0)
    red_square, blue_circle = unit(0, 0, 1, 0), unit(0, 0, 0, 1)
    text = "a red circle left of a blue square"
    encode = FakeEncoder({text: unit(1, 1, 0.9, 0.9), "a red circle": red_circle,
                          "a blue square": blue_square})
    # item 0: the swapped twin (red square + blue circle), item 1: the true scene
    whole = np.stack([unit(0.5, 0.5, 1, 1), unit(1, 1, 0.2, 0.2)])
    regions = np.stack([red_square, blue_circle, red_circle, blue_square])
    gallery = ArrayGallery(whole, regions=(regions, np.array([0, 0, 1, 1]), np.zeros((4, 4), int)))
    plain = run_query(QueryPlan(text=text, k=2), gallery, encode)
    assert plain.ids.tolist() == [0, 1]
    reranked = run_query(QueryPlan(text=text, k=2, rerank=PartsConfig(lam=0.5)), gallery, encode)
    assert reranked.ids.tolist() == [1, 0]
    assert reranked.why[0]["parts"]["alignment"] == pytest.approx(1.0, abs=1e-6)
    assert [m["phrase"] for m in reranked.why[0]["parts"]["matches"]] == ["a red circle",
                                                                        "a blue square"]
    assert set(reranked.timing_ms) == {"encode", "candidates", "parts"}


def test_part_rerank_stage_only_reorders_the_shortlist():
    rng = np.random.default_rng(3)
    whole = rng.standard_normal((30, 8)).astype(np.float32)
    whole /= np.linalg.norm(whole, axis=1, keepdims=True)
    regions = np.repeat(whole, 3, axis=0) + 0.1 * rng.standard_normal((90, 8)).astype(np.float32)
    gallery = ArrayGallery(whole, regions=(regions, np.repeat(np.arange(30), 3), np.zeros((90, 4))))
    encode = FakeEncoder({"a": whole[0], "b": whole[1]})
    scores, ids = gallery.nearest(unit(*np.ones(8)), 12)
    shortlist = Candidates(ids, scores.astype(float), [{} for _ in ids])
    refined, details = PartRerank(PartsConfig(lam=1.0)).refine("a and b", shortlist, gallery, encode)
    assert sorted(refined.ids.tolist()) == sorted(ids.tolist()) and details["parts"] == ["a", "b"]
    one, details = PartRerank(PartsConfig()).refine("a", shortlist, gallery, encode)
    assert one is shortlist and "skipped" in details


def test_steer_stage_moves_the_query_toward_its_attribute():
    values = {"colour": ["red", "blue"]}
    red, blue = unit(1, 0, 0.2), unit(0, 1, 0.2)
    encode = FakeEncoder({"a red thing": unit(0.6, 0.5, 0.6), "a blue thing": unit(0.5, 0.6, 0.6)})
    rng = np.random.default_rng(0)
    gallery_vectors = np.concatenate([red + 0.05 * rng.standard_normal((10, 3)),
                                      blue + 0.05 * rng.standard_normal((10, 3))]).astype(np.float32)
    gallery = ArrayGallery(gallery_vectors / np.linalg.norm(gallery_vectors, axis=1, keepdims=True))
    query = encode(["a red thing"])[0]
    steered, details = Steer(SteerConfig(m=5, beta=0.5)).rewrite("a red thing", query, gallery,
                                                                 encode, values)
    assert float(steered @ red) > float(query @ red)
    assert details["attributes"][0]["confuser"] == "blue"
    with pytest.raises(QueryError, match="no known attribute"):
        Steer(SteerConfig()).rewrite("a thing", query, gallery, encode, values)


@pytest.mark.parametrize("plan, message", [
    ({"text": "   "}, "no words"), ({"text": "?!..."}, "no words"),
    ({"text": "a", "image": object()}, "exactly one"), ({}, "exactly one"),
    ({"text": "a", "k": 0}, "k must be"), ({"text": "a", "condition": "colour"}, "compares images"),
    ({"vector": np.ones(3), "rerank": PartsConfig()}, "text queries"),
])
def test_plans_that_cannot_run_say_why(plan, message):
    with pytest.raises(QueryError, match=message):
        QueryPlan(**plan)


def test_cli_methods_end_to_end_and_bad_input(indexed, capsys, tmp_path):
    coll_path = str(indexed[0])
    text = "a red circle left of a blue square"
    assert main(["search", text, "-c", coll_path, "-k", "3", "--rerank", "parts", "--steer",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    hit = result["hits"][0]
    assert set(hit["why"]) == {"steer", "parts"} and len(hit["why"]["parts"]["matches"]) == 2
    used = [[d["condition"], d["value"], d["confuser"]]
            for d in result["query"]["steer"]["attributes"] if d["used"]]
    assert hit["why"]["steer"]["beta"] == 0.2 and hit["why"]["steer"]["attributes"] == used
    assert result["query"]["steer"]["attributes"][0]["value"] == "red"
    assert main(["search", text, "-c", coll_path, "-k", "2", "--rerank", "parts", "--why"]) == 0
    out = capsys.readouterr().out
    assert "'a red circle' -> box" in out and "alignment" in out
    assert main(["search", text, "-c", coll_path, "--steer", "colour=red", "-k", "1"]) == 0
    capsys.readouterr()
    for argv, message in [
        (["search", "?!", "-c", coll_path], "has no words"),
        (["search", "a thing", "-c", coll_path, "--steer"], "names no known attribute"),
        (["search", "a red thing", "-c", coll_path, "--steer", "colour=mauve"], "mauve"),
        (["search", "--image", str(indexed[1][0]), "-c", coll_path, "--rerank", "parts"],
         "text queries"),
        (["search", "a", "-c", coll_path, "--shortlist", "5"], "add --rerank parts"),
    ]:
        code = main(argv)
        err = capsys.readouterr().err
        assert code in (1, 2) and message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


def test_rerank_on_a_collection_without_regions_computes_them_and_says_so(tmp_path, model, capsys):
    folder = tmp_path / "in"
    write_scenes(folder, 5, seed=9)
    coll = str(tmp_path / "c.sc")
    assert main(["index", str(folder), "-c", coll, "--workers", "0", "-q"]) == 0
    capsys.readouterr()
    assert main(["search", "a red circle and a blue square", "-c", coll, "--rerank", "parts"]) == 0
    captured = capsys.readouterr()
    assert "on demand" in captured.err and len(captured.out.splitlines()) == 5


def test_store_imports_nothing_above_data():
    allowed = ("sharpclip.store", "sharpclip.data")
    for file in sorted((SRC / "store").glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sharpclip"):
                assert node.module.startswith(allowed), f"{file.name} imports {node.module}"


def test_methods_touch_no_files_or_sqlite():
    for file in sorted((SRC / "methods").glob("*.py")):
        names = _imported_modules(file)
        assert not names & {"sqlite3", "os", "pathlib", "sharpclip.store", "sharpclip.data"}, file


def _imported_modules(file: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_regions_rerank_and_steer_work_with_other_checkpoints(tmp_path, kind):
    """Tiny random CLIP (40 px, dim 24) and SigLIP checkpoints: regions stored at index time equal
    the checkpoint's own embeddings of the padded crops, and the methods run end to end."""
    from sharpclip.models import load_model
    from tiny_checkpoints import save_tiny_clip, save_tiny_siglip

    save = save_tiny_clip if kind == "clip" else save_tiny_siglip
    model = load_model(str(save(tmp_path / kind)))
    folder = tmp_path / "in"
    paths = write_scenes(folder, 4, seed=12)
    with Collection.create(tmp_path / "c.sc", model) as coll:
        coll.add([folder], config=IndexConfig(workers=0, progress=False, regions=GRID))
        disk = CollectionGallery(coll)
        vectors, _, _ = disk.regions([coll.item(paths[2]).id])
        np.testing.assert_allclose(vectors, model.encode_images(region_crops(load_rgb(paths[2]),
                                                                             GRID)), atol=1e-5)
        result = coll.search(text="a red circle and a blue square", k=3, rerank="parts",
                             steer="colour=red")
        assert len(result.hits) == 3 and all("parts" in h.why for h in result.hits)
        assert result.query["steer"]["attributes"][0]["value"] == "red"
        assert disk.computed_on_demand == 0 and vectors.shape[1] == model.dim
