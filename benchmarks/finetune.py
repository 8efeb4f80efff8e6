"""Fine-tuning cost per recipe (METHODS.md §4): training throughput (images or captions per
second of the training stages, measured by the loop) and the peak resident memory of the whole
run, each recipe in its own process so that the peaks do not mix. The recipes run one after the
other in one invocation, so their ratios are side by side.

Run: .venv/bin/python benchmarks/finetune.py [--model bundled] [--steps 40] [--threads 2]
     .venv/bin/python benchmarks/finetune.py --model DIR --precision bf16   (on a GPU)
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys

RECIPES = ("gpr", "rea", "2sft", "mcip", "mcip+rea")


def one(recipe: str, model: str, steps: int, batch: int, precision: str, threads: int) -> dict:
    """Run ``recipe`` in this process; its stages' throughput and this process's peak RSS."""
    import torch

    from sharpclip.eval.finetune import class_split, render_classes
    from sharpclip.finetune.recipes import FinetuneConfig
    from sharpclip.finetune.run import finetune, hold_side
    from sharpclip.models import load_model

    torch.set_num_threads(threads)
    base = load_model(model)
    train_objects, _ = class_split(0)
    training, _ = render_classes(train_objects, 8, 0, hold_side(base), "train")
    config = FinetuneConfig(image_steps=steps, text_steps=steps, batch_size=batch,
                            precision=precision)
    record = finetune(recipe, base, training, None, config, progress=False)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"recipe": recipe, "stages": record["stages"], "peak_rss_mib": round(peak_kib / 1024)}
    if torch.cuda.is_available():
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--steps", type=int, default=40, help="steps per stage")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.model, args.steps, args.batch_size, args.precision,
                             args.threads)))
        return
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; model {args.model}; "
          f"{args.steps} steps per stage, batch {args.batch_size}, precision {args.precision}, "
          f"{args.threads} threads")
    print("| recipe | stage | examples/s | peak RSS (MiB) |")
    print("|---|---|---|---|")
    for recipe in args.recipes.split(","):
        run = subprocess.run([sys.executable, __file__, "--one", recipe, "--model", args.model,
                              "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                              "--precision", args.precision, "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        result = json.loads(run.stdout.strip().splitlines()[-1])
        for stage in result["stages"]:
            print(f"| {recipe} | {stage['objective']} | {stage['examples_per_s']} | "
                  f"{result['peak_rss_mib']} |")


if __name__ == "__main__":
    main()
