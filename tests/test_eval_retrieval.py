import json

from sharpclip.cli import main
from sharpclip.data.shapes import SceneSpec, ShapeObject
from sharpclip.eval.retrieval import matches, named_attributes
from tiny_checkpoints import save_tiny_clip

RED_PENT = ShapeObject("pentagon", "red", "small", "striped")
BLUE_HEX = ShapeObject("hexagon", "blue", "large", "solid")


def test_caption_matches_only_named_attributes():
    spec = SceneSpec((RED_PENT,), background="gray", position="left")
    named = named_attributes("a red striped pentagon", spec)
    assert matches(named, SceneSpec((ShapeObject("pentagon", "red", "large", "striped"),)))
    assert not matches(named, SceneSpec((ShapeObject("hexagon", "red", "small", "striped"),)))
    sized = named_attributes("a small red striped pentagon on a gray background", spec)
    assert not matches(sized, SceneSpec((RED_PENT,), background="white"))
    assert not matches(sized, SceneSpec((ShapeObject("pentagon", "red", "large", "striped"),),
                                        background="gray"))


def test_pair_relation_reads_both_ways_and_binding_counts():
    spec = SceneSpec((RED_PENT, BLUE_HEX), relation="left of")
    named = named_attributes("a red striped pentagon left of a blue solid hexagon", spec)
    assert matches(named, SceneSpec((BLUE_HEX, RED_PENT), relation="right of"))
    assert not matches(named, SceneSpec((RED_PENT, BLUE_HEX), relation="above"))
    swapped = (ShapeObject("pentagon", "blue", "small", "striped"),
               ShapeObject("hexagon", "red", "large", "solid"))
    assert not matches(named, SceneSpec(swapped, relation="left of"))


def test_eval_retrieval_cli_writes_contract_schema(tmp_path):
    ckpt = save_tiny_clip(tmp_path / "ckpt", image_size=32)
    out = tmp_path / "out"
    assert main(["eval", "retrieval", "--model", str(ckpt), "--size", "60", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    plain = result["methods"]["plain"]
    assert result["task"] == "retrieval" and result["size"] == 60
    for group in ("single", "pair"):
        assert set(plain[group]) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text")
                                     for k in (1, 5, 10)}
    assert {"shape", "colour"} <= set(plain["zeroshot_accuracy"])
    values = [v for g in plain.values() for v in g.values()]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert (out / "results.md").read_text().startswith("task `retrieval`")


def test_missing_model_directory_is_a_one_line_error(tmp_path, capsys):
    assert main(["eval", "retrieval", "--model", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 1
    assert "nope" in capsys.readouterr().err


def test_demo_runs_on_any_checkpoint(tmp_path, capsys):
    ckpt = save_tiny_clip(tmp_path / "ckpt", image_size=32)
    assert main(["demo", "--model", str(ckpt), "--size", "40"]) == 0
    out = capsys.readouterr().out
    assert "text query: 'a red circle'" in out and "image query" in out
    assert "image_retrieval_recall@10" in out
