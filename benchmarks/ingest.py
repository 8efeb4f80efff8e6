"""Ingest throughput: files on disk -> stored vectors, against the model's forward alone.

For each model (the bundled one and a ViT-B/32-sized CLIP built from config with random weights:
speed does not depend on weight values) and each worker count, in one run on the same images:
indexing images/s end to end (fresh collection: hash, decode, preprocess, embed, commit) divided by
model-only forward images/s (preprocessed tensors already in memory, same batch size; the mean
of one pass just before and one just after the ingest run, so that a change in the machine's
load weighs on both sides of the ratio). Also the model's achieved FLOP/s beside a float32
matmul's FLOP/s measured in the same run, the decode worker's steps in ms per image, and where the
ingest run's wall time went (``IndexReport.timings``): the model waiting for decoded images
(worker start-up included), the model embedding, the store committing, and the rest (listing
files, the final index sync, opening the collection).

torch is imported inside functions only: decode workers are spawned, and a spawned process
re-imports this script, so a top-level ``import torch`` would cost every worker 1.5 CPU-seconds
that the CLI's workers never pay.

Run: .venv/bin/python benchmarks/ingest.py [--n 256] [--batch-size 32] [--workers auto 0 1 2]
     [--fast-decode]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sharpclip.collection import Collection
from sharpclip.ingest import IndexConfig
from sharpclip.models import ImagePreprocessor, load_model


def write_photos(folder: Path, n: int, size: tuple[int, int] = (640, 480)) -> list[Path]:
    """JPEG files cut from scikit-image's sample photos (varied crops, so no two are identical)."""
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field()]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        src = Image.fromarray(sources[i % len(sources)])
        scale = rng.uniform(1.3, 2.0)
        big = src.resize((int(size[0] * scale), int(size[1] * scale)))
        x, y = rng.integers(0, big.width - size[0]), rng.integers(0, big.height - size[1])
        path = folder / f"photo{i:05d}.jpg"
        big.crop((x, y, x + size[0], y + size[1])).save(path, quality=88)
        paths.append(path)
    return paths


def vit_b32(folder: Path) -> Path:
    """A randomly initialised CLIP with ViT-B/32's shapes (224 px, patch 32, width 768, 12 layers)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from sharpclip.models.loader import BUNDLED_DIR

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(projection_dim=512))
    model.save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # any tokenizer works for images
        shutil.copy(BUNDLED_DIR / name, folder / name)
    return folder


def vision_flops(config) -> float:
    """Multiply-adds x 2 of one image through the vision tower (patch embed + encoder layers)."""
    v = config.vision_config
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    d, m = v.hidden_size, v.intermediate_size
    embed = 2 * (tokens - 1) * 3 * v.patch_size ** 2 * d
    layer = 2 * tokens * (4 * d * d + 2 * d * m) + 4 * tokens * tokens * d
    return embed + v.num_hidden_layers * layer


def matmul_flops(n: int = 3072) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    a @ b
    return 2 * n ** 3 / (time.perf_counter() - start)


def forward_rate(model, paths: list[Path], batch: int) -> float:
    from sharpclip.data.imagefiles import load_rgb

    pixels = model.preprocess.batch([load_rgb(p) for p in paths])
    model.encode_pixels(pixels[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        model.encode_pixels(pixels[i:i + batch])
    return len(pixels) / (time.perf_counter() - start)


def decode_profile(paths: list[Path], preprocess, repeats: int = 3) -> list[tuple[str, float]]:
    """Milliseconds per image of each step a decode worker runs for a 224-pixel CLIP processor
    (best of ``repeats`` passes over ``paths``, one core), and of sending its float32 pixels back
    (a pickle round trip)."""
    import pickle

    from sharpclip.data import imagefiles

    def best(step, inputs) -> tuple[float, list]:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            outputs = [step(x) for x in inputs]
            times.append(time.perf_counter() - start)
        return 1e3 * min(times) / len(inputs), outputs

    hash_ms, _ = best(imagefiles.content_hash, paths)
    decode_ms, images = best(imagefiles.load_rgb, paths)
    resize_ms, _ = best(preprocess._resize, images)
    preprocess_ms, pixels = best(preprocess, images)  # resize, crop, normalise
    send_ms, _ = best(lambda a: pickle.loads(pickle.dumps(a, protocol=5)), pixels)
    normalise_ms = preprocess_ms - resize_ms
    return [("hash (SHA-256 of the file)", hash_ms), ("decode (JPEG -> RGB)", decode_ms),
            ("resize (bicubic, shortest edge)", resize_ms),
            ("crop + normalise (preprocess - resize)", normalise_ms),
            ("pickle round trip (float32 pixels)", send_ms)]


def ingest_run(model, folder: Path, workers: int, batch: int, draft: bool):
    """The report of indexing ``folder`` into a fresh collection."""
    with tempfile.TemporaryDirectory() as tmp:
        coll = Collection.create(Path(tmp) / "c.sc", model)
        config = IndexConfig(workers=workers, batch_size=batch, draft=draft, progress=False)
        report = coll.add([folder], config=config)
        coll.close()
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=256, help="JPEG files (640x480)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", nargs="+", default=["auto", 0, 1, 2],
                        type=lambda w: w if w == "auto" else int(w))
    parser.add_argument("--models", nargs="+", default=["bundled", "vit-b32"])
    parser.add_argument("--fast-decode", action="store_true",
                        help="also measure JPEG draft decoding (index --fast-decode)")
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        write_photos(folder, args.n)
        peak = matmul_flops()
        print(f"{datetime.date.today()} {platform.machine()} {os.cpu_count()} cores, torch "
              f"{torch.__version__}, {torch.get_num_threads()} threads; {args.n} JPEGs 640x480, "
              f"batch {args.batch_size}; 3072^2 fp32 matmul {peak / 1e9:.1f} GFLOP/s")
        photos = sorted(folder.glob("*.jpg"))
        steps = decode_profile(photos[:64], ImagePreprocessor.from_config(
            {"size": {"shortest_edge": 224}, "crop_size": 224}))
        print("| decode worker step (64 images, best of 3, one core) | ms/image |\n|---|---|")
        for step, ms in steps:
            print(f"| {step} | {ms:.2f} |")
        print(f"| total | {sum(ms for _, ms in steps):.2f} |\n", flush=True)
        print("| model | workers | fast decode | ingest img/s | forward img/s | ratio | "
              "model GFLOP/s | / matmul | wait s | embed s | commit s | rest s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name in args.models:
            spec = str(vit_b32(Path(tmp) / "vit-b32")) if name == "vit-b32" else name
            model = load_model(spec)
            flops = vision_flops(model.model.config)
            for workers in args.workers:
                for draft in (False, True) if args.fast_decode else (False,):
                    before = forward_rate(model, photos, args.batch_size)
                    report = ingest_run(model, folder, workers, args.batch_size, draft)
                    forward = (before + forward_rate(model, photos, args.batch_size)) / 2
                    ingest = report.new / report.seconds
                    t = report.timings
                    rest = report.seconds - t["wait"] - t["embed"] - t["commit"]
                    used = f"auto ({report.workers})" if workers == "auto" else workers
                    print(f"| {name} | {used} | {'yes' if draft else 'no'} | {ingest:.0f} | "
                          f"{forward:.0f} | {ingest / forward:.2f} | {forward * flops / 1e9:.1f} | "
                          f"{forward * flops / peak:.2f} | {t['wait']:.2f} | {t['embed']:.2f} | "
                          f"{t['commit']:.2f} | {rest:.2f} |", flush=True)


if __name__ == "__main__":
    main()
