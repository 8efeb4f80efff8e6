"""GPR-FT on real images: scikit-learn's 1,797 handwritten digits (8 x 8 grey scans, upscaled),
classes split disjoint (a seeded half of the digits trains, the other half tests), evaluated
through ``sharpclip eval folder`` before and after ``sharpclip finetune gpr``.

Run: .venv/bin/python benchmarks/finetune_digits.py [--seed 0] [--work /tmp/digits] [--image-steps N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_digits(root: Path, digits: list[int], side: int = 64) -> int:
    """One folder per digit ("digit three"), each scan upscaled to ``side`` pixels, as RGB PNG."""
    from sklearn.datasets import load_digits

    data = load_digits()
    count = 0
    for digit in digits:
        folder = root / f"digit {NAMES[digit]}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(data.target == digit):
            grey = (255 - data.images[i] * 255 / 16).astype(np.uint8)  # dark ink on white
            Image.fromarray(grey).resize((side, side), Image.BILINEAR).convert("RGB").save(
                folder / f"{i:04d}.png")
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/sharpclip-digits")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--image-steps", default=None, help="default: the recipe's default")
    args = parser.parse_args()
    work = Path(args.work) / f"seed{args.seed}"
    shutil.rmtree(work, ignore_errors=True)
    order = np.random.default_rng(args.seed).permutation(10)
    train, test = sorted(order[:5].tolist()), sorted(order[5:].tolist())
    n_train = write_digits(work / "train", train)
    n_test = write_digits(work / "test", test)
    print(f"train digits {train} ({n_train} images), test digits {test} ({n_test} images)")
    cli = [sys.executable, "-m", "sharpclip.cli"]
    subprocess.run([*cli, "finetune", "gpr", "--model", args.model, "--data", str(work / "train"),
                    "--out", str(work / "gpr"), "--seed", str(args.seed), "-q",
                    *(["--image-steps", args.image_steps] if args.image_steps else [])], check=True)
    subprocess.run([*cli, "eval", "folder", str(work / "test"), "--model", args.model,
                    "--model", str(work / "gpr"), "--out", str(work / "eval")], check=True)
    result = json.loads((work / "eval" / "results.json").read_text())
    before, after = result["methods"][args.model], result["methods"][str(work / "gpr")]
    print(f"i2i mAP on unseen digits: {before['i2i_map']:.3f} -> {after['i2i_map']:.3f}")


if __name__ == "__main__":
    main()
