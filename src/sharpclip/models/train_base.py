"""``sharpclip train base``: the bundled model's recipe (a small HF CLIPModel trained on Shapes).

A byte-level BPE tokenizer is trained on generated captions (any input tokenises: unknown words,
emoji, other scripts), then a small CLIP is trained with a multi-positive symmetric InfoNCE on
freshly generated single, counted and two-object scenes, with shape groups (hard negatives that
differ only in shape) and partial captions (see ``_batch``). Deterministic from the seed (on one
CPU thread count).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from sharpclip.concepts.vocabulary import with_article
from sharpclip.data import shapes
from sharpclip.models.preprocess import ImagePreprocessor

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<|endoftext|>", "<|startoftext|>", "<pad>")  # eos id 0: HF pools at first eos


@dataclass(frozen=True)
class BaseTrainConfig:
    """Hyperparameters of the bundled model's training run."""

    steps: int = 4500
    seed: int = 0
    batch_size: int = 128
    image_size: int = 64
    patch_size: int = 8
    width: int = 128
    layers: int = 4
    heads: int = 4
    projection_dim: int = 128
    max_text_len: int = 32
    vocab_size: int = 1024
    lr: float = 1e-3
    warmup: int = 200
    pair_fraction: float = 0.25
    shape_groups: int = 12  # per batch: scenes rendered once per shape, identical otherwise
    partial_caption_fraction: float = 0.25  # captions naming only some of an object's attributes
    checkpoint_every: int = 500  # steps between training checkpoints (for --resume)


def train_tokenizer(config: BaseTrainConfig, n_captions: int = 20000):
    """A byte-level BPE tokenizer like CLIP's, trained on generated captions."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    corpus = []
    for kind in ("single", "pair"):
        rng = np.random.default_rng(config.seed)
        for _ in range(n_captions // 2):
            corpus.extend(shapes.captions(shapes.random_spec(rng, kind), rng))
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=config.vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 1), ("<|endoftext|>", 0)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|startoftext|>",
        pad_token="<pad>", model_max_length=config.max_text_len,
    )


def _batch(config: BaseTrainConfig, rng: np.random.Generator, pre: ImagePreprocessor):
    """One training batch: pixels, captions and the (caption, image) positive mask.

    ``shape_groups`` scene specifications are rendered once per shape with identical jitter, so each
    caption's hardest negatives differ from its image in shape alone (colour, being easy, would
    otherwise carry the whole contrastive signal and shape would not be learned). The rest are
    random single, counted and two-object scenes. A partial caption ("a photo of a pentagon")
    is positive for every count-1 single-object image in the batch that has the attributes it names.
    """
    specs, images = [], []
    for _ in range(config.shape_groups):
        base = shapes.random_spec(rng, "single")
        jitter_seed = int(rng.integers(2**32))
        for shape in shapes.SHAPES:
            spec = replace(base, objects=(replace(base.objects[0], shape=shape),))
            if shapes.spec_split(spec) == "train" and len(specs) < config.batch_size:
                specs.append(spec)
                images.append(shapes.render(spec, config.image_size, np.random.default_rng(jitter_seed)))
    while len(specs) < config.batch_size:
        kind = "pair" if rng.random() < config.pair_fraction else "single"
        spec = shapes.random_spec(rng, kind)
        if shapes.spec_split(spec) == "train":
            specs.append(spec)
            images.append(shapes.render(spec, config.image_size, rng))
    texts, named = [], []
    for spec in specs:
        if spec.relation is None and spec.count == 1 and rng.random() < config.partial_caption_fraction:
            attributes = _partial_attributes(rng)
            texts.append(_partial_caption(spec.objects[0], attributes, rng))
            named.append({a: getattr(spec.objects[0], a) for a in attributes})
        else:
            texts.append(shapes.captions(spec, rng, n=1)[0])
            named.append(None)
    positives = np.eye(len(specs), dtype=bool)
    for i, wanted in enumerate(named):
        if wanted is not None:
            positives[i] = [s.relation is None and s.count == 1
                            and all(getattr(s.objects[0], a) == v for a, v in wanted.items())
                            for s in specs]
    return np.stack([pre(image) for image in images]), texts, positives


_PARTIAL_ATTRIBUTES = ("shape", "colour", "fill", "size")


def _partial_attributes(rng: np.random.Generator) -> tuple[str, ...]:
    """A random non-empty proper subset of an object's attributes."""
    while True:
        chosen = tuple(a for a in _PARTIAL_ATTRIBUTES if rng.random() < 0.4)
        if 0 < len(chosen) < len(_PARTIAL_ATTRIBUTES):
            return chosen


def _partial_caption(obj: shapes.ShapeObject, attributes: tuple[str, ...],
                     rng: np.random.Generator) -> str:
    """A caption naming only ``attributes`` of ``obj`` ("a large red shape", "a photo of a star")."""
    noun = shapes.synonym(obj.shape, rng) if "shape" in attributes else "shape"
    adjectives = [getattr(obj, a) for a in ("size", "colour") if a in attributes]
    if "fill" in attributes and rng.random() < 0.5:
        phrase = " ".join([*adjectives, shapes.synonym(obj.fill, rng), noun])
    else:
        phrase = " ".join([*adjectives, noun])
        if "fill" in attributes:
            phrase += " " + shapes.FILL_PHRASE[obj.fill]
    return [with_article(phrase), "a photo of " + with_article(phrase), phrase][int(rng.integers(3))]


def train_base(config: BaseTrainConfig, out: Path, resume: bool = False,
               progress: bool = True) -> dict:
    """Train the base model and save an HF checkpoint (model, tokenizer, image processor) to out.

    Runs on the fine-tuning loop (``sharpclip.finetune.loop``: progress bar, a checkpoint every
    ``checkpoint_every`` steps in ``OUT/.checkpoint``, ``resume``). Batches come from one generator in order, as
    they always have (so the recipe reproduces the shipped weights); the checkpoint carries the
    generator's state, so a resumed run draws the batches the uninterrupted one would have.
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from sharpclip.finetune.loop import Checkpointer, LoopSettings, train
    from sharpclip.finetune.objectives import ContrastiveObjective

    out = Path(out)
    checkpointer = Checkpointer(out / ".checkpoint" / "state.pt")
    state = checkpointer.load() if resume else None
    if resume and state is None:
        raise ValueError(f"{out}: nothing to resume (no .checkpoint/state.pt); run without --resume")
    if state is not None and state["config"] != asdict(config):
        raise ValueError(f"{out}: the interrupted run used other settings; resume with the same "
                         "command, or choose a new --out")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    tokenizer = train_tokenizer(config)
    model_config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": config.width,
                     "intermediate_size": 4 * config.width, "num_hidden_layers": config.layers,
                     "num_attention_heads": config.heads, "max_position_embeddings": config.max_text_len,
                     "pad_token_id": 2, "bos_token_id": 1, "eos_token_id": 0},
        vision_config={"hidden_size": config.width, "intermediate_size": 4 * config.width,
                       "num_hidden_layers": config.layers, "num_attention_heads": config.heads,
                       "image_size": config.image_size, "patch_size": config.patch_size},
        projection_dim=config.projection_dim,
    )
    model = CLIPModel(model_config)
    processor = CLIPImageProcessor(size={"shortest_edge": config.image_size},
                                   crop_size={"height": config.image_size, "width": config.image_size})
    pre = ImagePreprocessor.from_config(processor.to_dict())
    if state is not None:
        model.load_state_dict(state["model"])
        rng.bit_generator.state = state["rng"]
    next_step = [0 if state is None else state["loop"]["step"]]

    def batch_at(step: int, rank: int, world: int) -> dict:
        if step != next_step[0]:
            raise RuntimeError(f"train base draws its batches in order (asked {step}, "
                               f"next {next_step[0]})")
        next_step[0] += 1
        pixels, texts, positives = _batch(config, rng, pre)
        tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        return {"pixel_values": torch.from_numpy(pixels), "input_ids": tokens["input_ids"],
                "attention_mask": tokens["attention_mask"],
                "positives": torch.from_numpy(positives)}

    def save(loop_state: dict) -> None:
        checkpointer.save({"config": asdict(config), "loop": loop_state, "rng": rng.bit_generator.state,
                           "model": model.state_dict()})

    def clamp_temperature() -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))

    settings = LoopSettings(config.steps, grad_clip=1.0, warmup_steps=config.warmup,
                            checkpoint_every=config.checkpoint_every, progress=progress, description="train base")
    start = time.perf_counter()
    result = train(ContrastiveObjective(model),
                   [{"params": list(model.parameters()), "lr": config.lr, "weight_decay": 0.1}],
                   settings, batch_at, save, resume=None if state is None else state["loop"],
                   after_step=clamp_temperature)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    record = {"config": asdict(config), "train_seconds": round(time.perf_counter() - start, 1),
              "final_loss": None if result.final_loss is None else round(result.final_loss, 4)}
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out / ".checkpoint", ignore_errors=True)
    return record
