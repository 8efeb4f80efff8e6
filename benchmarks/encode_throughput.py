"""Encode throughput of a model: images/s (preprocessing included and model-only) and texts/s.

Run: .venv/bin/python benchmarks/encode_throughput.py [--model bundled] [--n 1024]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from sharpclip.data.shapes import ShapesConfig, generate
from sharpclip.models import load_model


def _rate(n: int, fn) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--n", type=int, default=1024)
    args = parser.parse_args()
    model = load_model(args.model)
    samples = list(generate(ShapesConfig(size=args.n, image_size=model.preprocess.crop_hw[0])))
    images = [s.image for s in samples]
    texts = [s.captions[0] for s in samples]
    pixels = model.preprocess.batch(images)
    full = _rate(args.n, lambda: model.encode_images(images))
    bs = model.batch_size
    forward = _rate(args.n, lambda: [model.encode_pixels(pixels[i:i + bs])
                                     for i in range(0, args.n, bs)])
    text = _rate(args.n, lambda: model.encode_texts(texts))
    print(f"machine: {platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"device {model.device}, model {args.model} ({model.fingerprint}), batch {bs}")
    print("| measure | per second |\n|---|---|")
    print(f"| images, preprocess + encode | {full:.0f} |")
    print(f"| images, model forward only | {forward:.0f} |")
    print(f"| ratio (pipeline / forward) | {full / forward:.2f} |")
    print(f"| texts, tokenise + encode | {text:.0f} |")


if __name__ == "__main__":
    main()
