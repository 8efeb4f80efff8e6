"""The sharpclip command line (CONTRACT.md). The library raises; only this module exits."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sharpclip.data import shapes
from sharpclip.models.train_base import BaseTrainConfig


def _cmd_shapes(args: argparse.Namespace) -> int:
    config = shapes.ShapesConfig(kind=args.kind, size=args.size, seed=args.seed, split=args.split,
                                 image_size=args.image_size)
    start = time.perf_counter()
    count = shapes.write(config, Path(args.out))
    elapsed = time.perf_counter() - start
    print(f"wrote {count} {args.kind} images and labels.jsonl to {args.out} in {elapsed:.1f}s")
    return 0


def _cmd_train_base(args: argparse.Namespace) -> int:
    import logging

    from sharpclip.models.train_base import train_base

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = BaseTrainConfig(steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                             image_size=args.image_size, width=args.width, layers=args.layers,
                             shared_colour_fraction=args.shared_colour_fraction)
    record = train_base(config, Path(args.out))
    print(f"saved to {args.out}: {record['train_seconds']}s, final loss {record['final_loss']}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from sharpclip.eval.retrieval import run_retrieval, to_markdown, write_results
    from sharpclip.models import load_model

    result = run_retrieval(load_model(args.model), seed=args.seed, size=args.size)
    write_results(result, Path(args.out))
    print(to_markdown(result), end="")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from sharpclip.demo import run_demo

    run_demo(args.model, gallery_size=args.size, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sharpclip command implemented so far."""
    parser = argparse.ArgumentParser(prog="sharpclip", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="offline end-to-end tour on the bundled model")
    p.add_argument("--model", default="bundled", help="bundled, a local HF directory or a hub id")
    p.add_argument("--size", type=int, default=500, help="gallery size")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("shapes", help="write a labelled Shapes benchmark set (PNG + labels.jsonl)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--kind", choices=shapes.KINDS, default="single")
    p.add_argument("--size", type=int, default=1000, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=shapes.SPLITS, default="all",
                   help="train/test specifications never overlap")
    p.add_argument("--image-size", type=int, default=64, help="pixels per side")
    p.set_defaults(func=_cmd_shapes)

    p = sub.add_parser("eval", help="run an evaluation task; writes results.json and results.md")
    p.add_argument("task", choices=["retrieval"])
    p.add_argument("--model", default="bundled", help="bundled, a local HF directory or a hub id")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=1000, help="number of single-object test scenes")
    p.add_argument("--out", default="eval-out", help="output directory")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("train", help="train a model from scratch")
    train = p.add_subparsers(dest="recipe", required=True)
    p = train.add_parser("base", help="the bundled model's recipe (small CLIP on Shapes)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    defaults = BaseTrainConfig()
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--image-size", type=int, default=defaults.image_size, help="input pixels")
    p.add_argument("--width", type=int, default=defaults.width, help="transformer width")
    p.add_argument("--layers", type=int, default=defaults.layers, help="layers per tower")
    p.add_argument("--shared-colour-fraction", type=float, default=defaults.shared_colour_fraction,
                   help="share of batches whose scenes all have one colour and fill")
    p.set_defaults(func=_cmd_train_base)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse arguments, run the command, turn errors into one line on stderr."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"sharpclip {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
