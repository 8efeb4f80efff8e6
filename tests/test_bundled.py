from sharpclip.data.shapes import ShapesConfig, generate
from sharpclip.eval.retrieval import zeroshot_accuracy
from sharpclip.models import load_model


def test_bundled_model_meets_the_attribute_floors_on_held_out_scenes():
    model = load_model("bundled", device="cpu")
    assert model.model_type == "clip" and model.dim == 128
    samples = list(generate(ShapesConfig(size=200, seed=11, split="test", max_count=1)))
    accuracy = zeroshot_accuracy(model, samples)
    assert accuracy["colour"] >= 0.9
    assert accuracy["shape"] >= 0.6  # chance 0.125
    assert accuracy["background"] >= 0.75  # chance 0.33; 0.823 on the model card's 1,000 scenes
