"""One training loop for every recipe stage: HF accelerate (one CPU or GPU, or several GPUs under
``accelerate launch``), mixed precision, gradient clipping, a cosine schedule with warmup, a
progress bar, and a checkpoint every N steps from which ``--resume`` continues bit for bit.

Determinism: the batch of a step is a pure function of ``(step, process index)`` (the caller's
``batch_at``), so a resumed run draws exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sharpclip.store.faults import crash_point


@dataclass(frozen=True)
class LoopSettings:
    """How one stage trains: ``steps`` optimiser steps, the rest as in FinetuneConfig."""

    steps: int
    grad_clip: float = 1.0
    warmup_fraction: float = 0.05
    warmup_steps: int | None = None  # instead of the fraction
    checkpoint_every: int = 100
    precision: str = "no"
    progress: bool = True
    description: str = "training"


def cosine_with_warmup(steps: int, warmup: int) -> Callable[[int], float]:
    """The learning-rate factor at each step: linear warmup over ``warmup`` steps, then cosine
    decay to 0."""
    warmup = max(1, warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return factor


class Checkpointer:
    """A training state in one file, replaced atomically (a kill leaves the old or the new)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + f".partial-{os.getpid()}")
        torch.save(state, partial)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, self.path)

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)


@dataclass
class StageResult:
    """What a stage's run did."""

    steps: int
    final_loss: float | None
    seconds: float
    examples: int  # training examples seen by this process in this run (for throughput)


def train(module: torch.nn.Module, param_groups: list[dict], settings: LoopSettings,
          batch_at: Callable[[int, int, int], dict], save: Callable[[dict], None],
          resume: dict | None = None, after_step: Callable[[], None] | None = None) -> StageResult:
    """Minimise ``module(**batch_at(step, rank, world))`` over ``param_groups`` with AdamW.

    ``save`` receives ``{"step", "optimizer", "scheduler"}`` every ``checkpoint_every`` steps and
    at the end (main process only); ``resume`` is such a dict to continue from.
    """
    from accelerate import Accelerator
    from tqdm import tqdm

    accelerator = Accelerator(mixed_precision=settings.precision)
    optimizer = torch.optim.AdamW(param_groups)
    warmup = settings.warmup_steps if settings.warmup_steps is not None else round(
        settings.warmup_fraction * settings.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(settings.steps,
                                                                                warmup))
    start = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        start = int(resume["step"])
    module, optimizer = accelerator.prepare(module, optimizer)  # the schedule steps once a step
    parameters = [p for group in param_groups for p in group["params"]]
    bar = tqdm(total=settings.steps, initial=start, desc=settings.description, unit="step",
               disable=not settings.progress or not accelerator.is_main_process, dynamic_ncols=True)
    loss_value, examples, began = None, 0, time.perf_counter()
    module.train()
    for step in range(start, settings.steps):
        batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v
                 for k, v in batch_at(step, accelerator.process_index,
                                      accelerator.num_processes).items()}
        with accelerator.autocast():
            loss = module(**batch)
        accelerator.backward(loss)
        if settings.grad_clip:
            accelerator.clip_grad_norm_(parameters, settings.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step()
        loss_value = float(loss.detach())
        examples += int(next(v for v in batch.values() if torch.is_tensor(v)).shape[0])
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        done = step + 1
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save({"step": done, "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict()})
                crash_point("finetune_checkpoint_saved")
    bar.close()
    module.eval()
    return StageResult(settings.steps, loss_value, time.perf_counter() - began, examples)
