"""Conditional search cost (METHODS.md §1) on a large gallery, as ratios measured in one run.

(a) latency of a conditional query with the gallery projection cached (project the query, scan the
    N x k projection, held transposed as a collection holds it) / a plain exact search over the
    N x d gallery;
(b) time to prepare a new condition (encode its prompts, subspace, rotation, project the gallery)
    / the time re-encoding the gallery images would take (model images/s measured here x N).

The gallery is synthetic unit vectors of the model's width (search cost does not depend on values);
prompts and the image throughput come from the real model.

Run: .venv/bin/python benchmarks/conditional.py [--n 100000] [--condition colour] [--model bundled]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import numpy as np
from timing import median_ms

from sharpclip.concepts import load_vocabulary
from sharpclip.data.shapes import ShapesConfig, generate
from sharpclip.methods.conditional import gallery_mean, project, projection_matrix
from sharpclip.models import load_model
from sharpclip.store.search_index import exact_topk


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--condition", default="colour")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    model = load_model(args.model)
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((args.n, model.dim)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    query = gallery[0]
    prompts, values = load_vocabulary().labelled_prompts_for(args.condition)

    def prepare():
        W = projection_matrix(model.encode_texts(prompts), gallery_mean(gallery),
                              prompt_values=values)
        return W, np.ascontiguousarray(project(gallery, W).T)

    start = time.perf_counter()
    W, columns = prepare()
    prepare_s = time.perf_counter() - start
    plain_ms = median_ms(lambda: exact_topk(gallery, query[None], 20), args.repeats)
    cond_ms = median_ms(lambda: exact_topk(columns, project(query[None], W), 20, transposed=True),
                        args.repeats)
    images = [s.image for s in generate(ShapesConfig(size=256, image_size=model.preprocess.crop_hw[0]))]
    model.encode_images(images[:32])
    start = time.perf_counter()
    model.encode_images(images)
    rate = len(images) / (time.perf_counter() - start)
    reencode_s = args.n / rate
    print(f"{datetime.date.today()} {platform.machine()}, model {args.model} (dim {model.dim}), "
          f"gallery {args.n} x {model.dim} synthetic, condition {args.condition} "
          f"({len(prompts)} prompts, k={W.shape[1]})")
    print("| measure | value |\n|---|---|")
    print(f"| plain exact search, median | {plain_ms:.2f} ms |")
    print(f"| conditional search (cache warm), median | {cond_ms:.2f} ms |")
    print(f"| (a) ratio conditional / plain (goal <= 1.5) | {cond_ms / plain_ms:.2f} |")
    print(f"| prepare a new condition | {prepare_s:.3f} s |")
    print(f"| re-encode the gallery ({rate:.0f} images/s x {args.n}) | {reencode_s:.1f} s |")
    print(f"| (b) ratio prepare / re-encode (goal <= 0.01) | {prepare_s / reencode_s:.4f} |")


if __name__ == "__main__":
    main()
