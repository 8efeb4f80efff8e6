"""The trainable objectives of the recipe stages (METHODS.md §4), as modules whose forward is the
loss, and the batches they train on (pure functions of the step and process index)."""

from __future__ import annotations

import numpy as np
import torch

from sharpclip.finetune.arcface import ArcFaceHead
from sharpclip.finetune.augment import Augmentation
from sharpclip.finetune.infonce import MAX_LOGIT_SCALE, multi_positive_loss, symmetric_infonce
from sharpclip.finetune.mc_arcmargin import mc_arcmargin_loss


def pooled(output) -> torch.Tensor:
    """The pooled, projected embedding of a transformers v5 features output."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


class ImageObjective(torch.nn.Module):
    """GPR-FT's ArcFace on the image tower (§4a); with a caption bank, MCIP's
    ``(1 - w) * ArcFace + w * MC-ArcMargin`` (§4c) against the frozen text tower's captions."""

    def __init__(self, model, head: ArcFaceHead, caption_bank: torch.Tensor | None = None,
                 caption_weight: float = 0.25):
        super().__init__()
        self.model = model
        self.head = head
        self.caption_weight = caption_weight
        self.register_buffer("caption_bank", caption_bank if caption_bank is not None
                             else torch.zeros(0), persistent=False)

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor,
                caption_ids: torch.Tensor | None = None) -> torch.Tensor:
        features = pooled(self.model.get_image_features(pixel_values=pixels))
        loss = self.head(features, labels)
        if caption_ids is None:
            return loss
        captions = self.caption_bank[caption_ids.clamp(min=0)]
        margin = mc_arcmargin_loss(features, captions, caption_ids, self.head.scale,
                                   self.head.margin)
        return (1 - self.caption_weight) * loss + self.caption_weight * margin


class TextObjective(torch.nn.Module):
    """Re-A (§4b): symmetric InfoNCE between the text tower and fixed image features."""

    def __init__(self, model, image_features: torch.Tensor, siglip: bool):
        super().__init__()
        self.model = model
        self.siglip = siglip
        self.register_buffer("image_features", image_features, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                image_index: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        extra = {} if self.siglip else {"attention_mask": attention_mask}
        text = pooled(self.model.get_text_features(input_ids=input_ids, **extra))
        return symmetric_infonce(self.image_features[image_index], text, self.model.logit_scale,
                                 positives)

    def clamp_temperature(self) -> None:
        """Keep the learnable temperature at most ln 100 (CLIP's clamp)."""
        with torch.no_grad():
            self.model.logit_scale.clamp_(max=MAX_LOGIT_SCALE)


OBJECTIVE_STREAMS = {"arcface": 0, "mcip": 1, "rea": 2}


class ContrastiveObjective(torch.nn.Module):
    """Both towers of a CLIP under multi-positive symmetric InfoNCE (``sharpclip train base``)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             pixel_values=pixel_values)
        return multi_positive_loss(outputs.logits_per_text, positives)


def step_rng(seed: int, objective: str, step: int, rank: int) -> np.random.Generator:
    """The generator of one step's batch on one process (the loop's determinism contract). It
    depends on the objective, not the stage's place in a recipe, so ``2sft`` trains exactly as
    ``gpr`` followed by ``rea`` on its result."""
    return np.random.default_rng([seed, OBJECTIVE_STREAMS[objective], step, rank])


def draw(rng: np.random.Generator, population: int, size: int) -> np.ndarray:
    """``size`` indices from ``range(population)``, without repeats when there are enough."""
    return rng.choice(population, size=size, replace=population < size)


def image_batch(training, preprocess, augmentation: Augmentation | None, mined, seed: int,
                objective: str, batch_size: int):
    """``batch_at`` for an image stage: augmented pixels, labels, and pseudo-caption ids."""
    labels = torch.from_numpy(np.asarray(training.labels))
    mined_ids = None if mined is None else torch.from_numpy(np.asarray(mined, np.int64))

    def batch_at(step: int, rank: int, world: int) -> dict:
        rng = step_rng(seed, objective, step, rank)
        chosen = draw(rng, len(training.images), max(1, batch_size // world))
        images = [training.image(int(i)) for i in chosen]
        if augmentation is not None:
            images = [augmentation(image, rng) for image in images]
        batch = {"pixels": torch.from_numpy(preprocess.batch(images)),
                 "labels": labels[torch.from_numpy(chosen)]}
        if mined_ids is not None:
            batch["caption_ids"] = mined_ids[torch.from_numpy(chosen)]
        return batch

    return batch_at


def text_batch(pairs, tokenize, seed: int, objective: str, batch_size: int):
    """``batch_at`` for Re-A: tokenised captions, their images, and the positive mask (same image
    or same caption)."""

    def batch_at(step: int, rank: int, world: int) -> dict:
        rng = step_rng(seed, objective, step, rank)
        chosen = [pairs[int(i)] for i in draw(rng, len(pairs), max(1, batch_size // world))]
        images = np.array([image for image, _ in chosen])
        texts = [caption for _, caption in chosen]
        same_text = np.array([[a == b for b in texts] for a in texts])
        tokens = tokenize(texts)
        return {"input_ids": tokens["input_ids"],
                "attention_mask": tokens.get("attention_mask", torch.ones_like(tokens["input_ids"])),
                "image_index": torch.from_numpy(images),
                "positives": torch.from_numpy((images[:, None] == images[None, :]) | same_text)}

    return batch_at
