"""``sharpclip finetune RECIPE``: run a recipe's stages on a training set and write a Hugging Face
checkpoint directory with ``sharpclip_provenance.json`` (METHODS.md §4).

The run keeps ``OUT/.checkpoint/state.pt`` (model, class proxies, optimiser, schedule, step, the
mined pseudo-captions and the metrics before training) every ``checkpoint_every`` steps;
``resume=True`` continues from it and ends with the weights an uninterrupted run would have.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from sharpclip.eval.folder import encode_set, model_metrics
from sharpclip.finetune.arcface import ArcFaceHead
from sharpclip.finetune.augment import RESIZE_FACTOR, Augmentation
from sharpclip.finetune.data import TrainingSet
from sharpclip.finetune.loop import Checkpointer, LoopSettings, train
from sharpclip.finetune.mining import mine_pseudo_captions
from sharpclip.finetune.objectives import ImageObjective, TextObjective, image_batch, text_batch
from sharpclip.finetune.recipes import (
    IMAGE_OBJECTIVES,
    FinetuneConfig,
    RecipeError,
    freeze_for,
    stages_of,
)

PROVENANCE = "sharpclip_provenance.json"
STATE = Path(".checkpoint") / "state.pt"
PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "vocab.json", "merges.txt", "spiece.model",
                   "added_tokens.json", "chat_template.jinja")
METRICS_SAMPLE = 2000  # training images the before/after metrics are computed on, at most


def hold_side(model) -> int:
    """The side training images are held at: the augmentation's 1.125 x the input side."""
    return round(RESIZE_FACTOR * max(model.preprocess.crop_hw))


def _sample(training: TrainingSet, limit: int) -> TrainingSet:
    if len(training.images) <= limit:
        return training
    keep = np.sort(np.random.default_rng(0).choice(len(training.images), limit, replace=False))
    where = {int(old): new for new, old in enumerate(keep)}
    return TrainingSet([training.images[i] for i in keep], training.labels[keep],
                       training.class_names,
                       pairs=[(where[i], c) for i, c in training.pairs if i in where])


def _rea_pairs(training: TrainingSet, mined: np.ndarray | None) -> list[tuple[int, str]]:
    """Re-A's image-caption pairs: the data's own, else the mined pseudo-captions, else class
    prompts ("a photo of a {class}")."""
    if training.pairs:
        return list(training.pairs)
    if mined is not None and (mined >= 0).any():
        return [(i, training.pool[j]) for i, row in enumerate(mined) for j in row if j >= 0]
    return [(i, f"a photo of a {training.class_names[label]}")
            for i, label in enumerate(training.labels)]


def _check_output(out: Path, resume: bool) -> None:
    if (out / PROVENANCE).is_file():
        raise RecipeError(f"{out} already holds a fine-tuned model; choose a new --out")
    if resume:
        if not (out / STATE).is_file():
            raise RecipeError(f"{out}: nothing to resume (no {STATE}); run without --resume")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RecipeError(f"{out} exists and is not empty; choose a new --out, or pass --resume "
                          "to continue an interrupted run there")


def _fresh_state(recipe, config, base, training) -> dict:
    """What a run needs from the base model before any stage: metrics, mined captions, proxies."""
    state = {"format": 1, "recipe": recipe, "config": asdict(config),
             "base_fingerprint": base.fingerprint, "data_digest": training.digest,
             "stage": 0, "step": 0, "loop": None, "head": None}
    state["before"] = model_metrics(base, _sample(training, METRICS_SAMPLE))
    embeddings = encode_set(base, training)
    means = np.stack([embeddings[training.labels == c].mean(axis=0)
                      for c in range(len(training.class_names))])
    state["proxies"] = torch.from_numpy(means / np.linalg.norm(means, axis=1, keepdims=True))
    state["mined"], state["threshold"], state["pool_embeddings"] = None, None, None
    if "mcip" in stages_of(recipe):
        pool = base.encode_texts(list(training.pool))
        state["mined"], state["threshold"] = mine_pseudo_captions(
            embeddings, pool, config.pseudo_captions, config.caption_threshold,
            config.caption_percentile)
        state["pool_embeddings"] = torch.from_numpy(pool)
    return state


def _check_resumable(state: dict, recipe, config, base, training, out: Path) -> None:
    expected = {"recipe": recipe, "config": asdict(config), "base_fingerprint": base.fingerprint,
                "data_digest": training.digest}
    differing = [key for key, value in expected.items() if state.get(key) != value]
    if differing:
        raise RecipeError(f"{out}: the interrupted run used another {', '.join(differing)}; "
                          "resume with the same command, or choose a new --out")


def _stage(objective: str, base, training: TrainingSet, state: dict, config: FinetuneConfig,
           resuming: bool):
    """What one stage trains: its loss module, parameter groups (only the objective's
    parameters unfrozen), ``batch_at``, and the class-proxy head (image stages)."""
    model = base.model
    trainable = freeze_for(model, objective)
    if objective not in IMAGE_OBJECTIVES:  # Re-A against the current image tower, kept fixed
        features = torch.from_numpy(encode_set(base, training)).to(base.device)
        module = TextObjective(model, features, base.model_type == "siglip")
        scale = [p for p in trainable if p is model.logit_scale]
        rest = [p for p in trainable if p is not model.logit_scale]
        groups = [{"params": rest, "lr": config.text_lr, "weight_decay": config.weight_decay},
                  {"params": scale, "lr": config.text_lr, "weight_decay": 0.0}]
        batch_at = text_batch(_rea_pairs(training, state["mined"]), base.tokenize, config.seed,
                              objective, config.batch_size)
        return module, groups, batch_at, None
    head = ArcFaceHead(state["proxies"], config.arcface_scale, config.arcface_margin)
    if resuming:
        head.load_state_dict(state["head"])
    mcip = objective == "mcip"
    module = ImageObjective(model, head, state["pool_embeddings"] if mcip else None,
                            config.mcip_caption_weight)
    groups = [{"params": trainable, "lr": config.image_lr, "weight_decay": config.weight_decay},
              {"params": list(head.parameters()), "lr": config.image_lr * config.proxy_lr_factor,
               "weight_decay": config.weight_decay}]
    augmentation = Augmentation(max(base.preprocess.crop_hw)) if config.augment else None
    batch_at = image_batch(training, base.preprocess, augmentation,
                           state["mined"] if mcip else None, config.seed, objective,
                           config.batch_size)
    return module, groups, batch_at, head


def finetune(recipe: str, base, training: TrainingSet, out: str | Path | None,
             config: FinetuneConfig | None = None, resume: bool = False,
             progress: bool = True) -> dict:
    """Fine-tune the loaded ``base`` model (modified in place) with ``recipe`` on ``training``,
    save it to ``out`` (None: keep it in memory only, no checkpoints); returns the provenance."""
    config = config or FinetuneConfig()
    objectives = stages_of(recipe)
    if "mcip" in objectives and not training.pool:
        raise RecipeError(f"recipe {recipe} mines pseudo-captions from a caption pool: pass "
                          "--captions FILE (one caption per line), or train on a Shapes set")
    if len(training.class_names) < 2:
        raise RecipeError("fine-tuning needs at least two classes")
    out = None if out is None else Path(out).expanduser()
    if out is not None:
        _check_output(out, resume)
    checkpointer = None if out is None else Checkpointer(out / STATE)
    state = checkpointer.load() if resume and checkpointer else None
    if state is None:
        state = _fresh_state(recipe, config, base, training)
    else:
        _check_resumable(state, recipe, config, base, training, out)
        base.model.load_state_dict(state["model"])
    model = base.model
    began, stage_reports = time.perf_counter(), state.setdefault("stages", [])
    for index, objective in enumerate(objectives):
        steps = config.image_steps if objective in IMAGE_OBJECTIVES else config.text_steps
        if index < state["stage"] or (index == state["stage"] and state["step"] >= steps):
            continue
        resuming = index == state["stage"] and state["loop"] is not None
        settings = LoopSettings(steps, grad_clip=config.grad_clip,
                                warmup_fraction=config.warmup_fraction,
                                checkpoint_every=config.checkpoint_every,
                                precision=config.precision, progress=progress,
                                description=f"{recipe} {index + 1}/{len(objectives)} {objective}")
        module, groups, batch_at, head = _stage(objective, base, training, state, config,
                                                resuming)
        after = module.clamp_temperature if objective == "rea" else None

        def save(loop_state: dict, index=index, head=head) -> None:
            state.update(stage=index, step=loop_state["step"], loop=loop_state,
                         model=model.state_dict(),
                         head=None if head is None else head.state_dict())
            if checkpointer is not None:
                checkpointer.save(state)

        result = train(module, groups, settings, batch_at, save,
                       resume=state["loop"] if resuming else None, after_step=after)
        stage_reports.append({"objective": objective, "steps": steps,
                              "final_loss": result.final_loss,
                              "examples_per_s": round(result.examples / result.seconds, 1)
                              if result.seconds > 0 else None})
        state.update(loop=None)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    provenance = {
        "base_model": base.name, "base_fingerprint": state["base_fingerprint"], "recipe": recipe,
        "hyperparameters": asdict(config), "data": training.source, "data_hash": training.digest,
        "data_summary": training.summary(), "pseudo_caption_threshold": state["threshold"],
        "stages": stage_reports, "train_seconds": round(time.perf_counter() - began, 1),
        "metrics_before": state["before"],
        "metrics_after": model_metrics(base, _sample(training, METRICS_SAMPLE)),
        "metrics_on": "the training data (not held out; compare models on held-out classes "
                      "with `sharpclip eval folder`)",
    }
    if out is not None and _main_process():
        _save_checkpoint(base, out, provenance)
    return provenance


def _main_process() -> bool:
    """False in the other processes of a multi-GPU run (``accelerate launch``): one writes."""
    from accelerate import PartialState

    return PartialState().is_main_process


def _save_checkpoint(base, out: Path, provenance: dict) -> None:
    """The model as a Hugging Face directory (the base's processor files copied verbatim), with
    the provenance; the training state goes last."""
    out.mkdir(parents=True, exist_ok=True)
    for name in PROCESSOR_FILES:
        if (Path(base.path) / name).is_file():
            shutil.copyfile(Path(base.path) / name, out / name)
    base.model.save_pretrained(out)
    (out / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    shutil.rmtree(out / STATE.parent, ignore_errors=True)
