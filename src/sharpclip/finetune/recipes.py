"""The fine-tuning recipes (METHODS.md §4) and the parameters each one trains.

A recipe is a sequence of *stages*; each stage trains one part of the model with one objective:

- ``image`` stage, objective ``arcface`` (GPR-FT, §4a): the image tower and its projection, plus
  learnable class proxies, with ArcFace (s = 30, m = 0.1);
- ``image`` stage, objective ``mcip`` (§4c): the same parameters with
  ``0.75 * ArcFace + 0.25 * MC-ArcMargin`` against pseudo-captions of the frozen text tower;
- ``text`` stage (Re-A, §4b): the text tower's last block, final layer norm and projection and the
  temperature, against fixed image features of the current image tower, with symmetric InfoNCE.

Everything a stage does not name stays frozen (``trainable_names``).
"""

from __future__ import annotations

from dataclasses import dataclass

RECIPES: dict[str, tuple[str, ...]] = {
    "gpr": ("arcface",),
    "rea": ("rea",),
    "2sft": ("arcface", "rea"),
    "mcip": ("mcip",),
    "mcip+rea": ("mcip", "rea"),
}
IMAGE_OBJECTIVES = ("arcface", "mcip")


class RecipeError(ValueError):
    """A recipe or its configuration cannot be used; the message says what to do."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyperparameters shared by every recipe (METHODS.md §4 where it fixes them: s, m, weight
    decay, proxy learning rate, schedule, clip, the MCIP weights and top-20 captions)."""

    seed: int = 0
    batch_size: int = 64
    image_steps: int = 300
    text_steps: int = 200
    image_lr: float = 1e-4
    proxy_lr_factor: float = 100.0
    text_lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    arcface_scale: float = 30.0
    arcface_margin: float = 0.1
    mcip_caption_weight: float = 0.25  # the loss is (1 - w) * ArcFace + w * MC-ArcMargin
    pseudo_captions: int = 20  # top captions per training image from the pool
    caption_threshold: float | None = None  # an absolute cosine; None: the percentile below
    caption_percentile: float = 99.0  # of the base model's image-caption similarities
    augment: bool = True
    checkpoint_every: int = 100
    precision: str = "no"  # accelerate's mixed precision: no, bf16, fp16

    def __post_init__(self) -> None:
        for name in ("batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise RecipeError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("image_steps", "text_steps"):
            if getattr(self, name) < 0:
                raise RecipeError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.mcip_caption_weight <= 1.0:
            raise RecipeError(f"mcip_caption_weight must be in [0, 1], got {self.mcip_caption_weight}")
        if not 0.0 <= self.caption_percentile <= 100.0:
            raise RecipeError(f"caption_percentile must be in [0, 100], got {self.caption_percentile}")
        if self.precision not in ("no", "bf16", "fp16"):
            raise RecipeError(f"precision must be no, bf16 or fp16, got {self.precision!r}")


def stages_of(recipe: str) -> tuple[str, ...]:
    """The objectives ``recipe`` runs, in order."""
    try:
        return RECIPES[recipe]
    except KeyError:
        raise RecipeError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}") from None


def _text_tail_prefixes(model) -> tuple[str, ...]:
    last = len(model.text_model.encoder.layers) - 1
    projection = "text_projection." if hasattr(model, "text_projection") else "text_model.head."
    return (f"text_model.encoder.layers.{last}.", "text_model.final_layer_norm.", projection)


def trainable_names(model, objective: str) -> list[str]:
    """Names of ``model``'s parameters a stage with ``objective`` trains (CLIP or SigLIP)."""
    names = [name for name, _ in model.named_parameters()]
    if objective in IMAGE_OBJECTIVES:
        prefixes = ("vision_model.", "visual_projection.")
        return [n for n in names if n.startswith(prefixes)]
    if objective == "rea":
        prefixes = _text_tail_prefixes(model)
        return [n for n in names if n.startswith(prefixes) or n == "logit_scale"]
    raise RecipeError(f"unknown objective {objective!r}")


def freeze_for(model, objective: str) -> list:
    """Set ``requires_grad`` for exactly the parameters of ``objective``; returns them."""
    wanted = set(trainable_names(model, objective))
    chosen = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in wanted)
        if name in wanted:
            chosen.append(parameter)
    return chosen
