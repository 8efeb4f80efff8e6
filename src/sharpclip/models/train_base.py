"""``sharpclip train base``: the bundled model's recipe (a small HF CLIPModel trained on Shapes).

A byte-level BPE tokenizer is trained on generated captions (any input tokenises: unknown words,
emoji, other scripts), then a small CLIP is trained with symmetric InfoNCE on freshly generated
single, counted and two-object scenes. Deterministic from the seed (on one CPU thread count).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from sharpclip.data import shapes
from sharpclip.models.preprocess import ImagePreprocessor

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<|endoftext|>", "<|startoftext|>", "<pad>")  # eos id 0: HF pools at first eos


@dataclass(frozen=True)
class BaseTrainConfig:
    """Hyperparameters of the bundled model's training run."""

    steps: int = 3000
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
    shared_colour_fraction: float = 0.3  # batches of single scenes sharing one colour and fill


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
    """One training batch. In a "shared" batch every scene has one colour and fill, so only shape,
    size, count, position and background tell the captions apart: colour alone is easy to learn
    and would otherwise dominate the contrastive signal."""
    images, texts = [], []
    shared = None
    if rng.random() < config.shared_colour_fraction:
        shared = (list(shapes.COLOURS)[rng.integers(len(shapes.COLOURS))],
                  shapes.FILLS[rng.integers(len(shapes.FILLS))])
    for _ in range(config.batch_size):
        kind = "pair" if shared is None and rng.random() < config.pair_fraction else "single"
        spec = _draw_spec(rng, kind, shared)
        while shapes.spec_split(spec) != "train":
            spec = _draw_spec(rng, kind, shared)
        images.append(pre(shapes.render(spec, config.image_size, rng)))
        texts.append(shapes.captions(spec, rng, n=1)[0])
    return np.stack(images), texts


def _draw_spec(rng: np.random.Generator, kind: str, shared: tuple[str, str] | None):
    spec = shapes.random_spec(rng, kind)
    if shared is None:
        return spec
    colour, fill = shared
    objects = tuple(replace(obj, colour=colour, fill=fill) for obj in spec.objects)
    return replace(spec, objects=objects)


def train_base(config: BaseTrainConfig, out: Path) -> dict:
    """Train the base model and save an HF checkpoint (model, tokenizer, image processor) to out."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

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
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.1)

    def lr_at(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        progress = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.5 * (1 + np.cos(np.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
    start = time.perf_counter()
    labels = torch.arange(config.batch_size)
    model.train()
    for step in range(config.steps):
        pixels, texts = _batch(config, rng, pre)
        tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        outputs = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                    pixel_values=torch.from_numpy(pixels))
        loss = (torch.nn.functional.cross_entropy(outputs.logits_per_image, labels)
                + torch.nn.functional.cross_entropy(outputs.logits_per_text, labels)) / 2
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        if step % 50 == 0 or step == config.steps - 1:
            log.info("step %d/%d loss %.4f (%.0fs)", step, config.steps, loss.item(),
                     time.perf_counter() - start)
    out = Path(out)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    record = {"config": asdict(config), "train_seconds": round(time.perf_counter() - start, 1),
              "final_loss": round(float(loss.item()), 4)}
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
