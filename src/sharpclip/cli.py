"""The sharpclip command line (CONTRACT.md). The library raises; only this module exits."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sharpclip.data import shapes


def _cmd_shapes(args: argparse.Namespace) -> int:
    config = shapes.ShapesConfig(kind=args.kind, size=args.size, seed=args.seed, split=args.split,
                                 image_size=args.image_size)
    start = time.perf_counter()
    count = shapes.write(config, Path(args.out))
    elapsed = time.perf_counter() - start
    print(f"wrote {count} {args.kind} images and labels.jsonl to {args.out} in {elapsed:.1f}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sharpclip command implemented so far."""
    parser = argparse.ArgumentParser(prog="sharpclip", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("shapes", help="write a labelled Shapes benchmark set (PNG + labels.jsonl)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--kind", choices=shapes.KINDS, default="single")
    p.add_argument("--size", type=int, default=1000, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=shapes.SPLITS, default="all",
                   help="train/test specifications never overlap")
    p.add_argument("--image-size", type=int, default=64, help="pixels per side")
    p.set_defaults(func=_cmd_shapes)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse arguments, run the command, turn errors into one line on stderr."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as error:
        print(f"sharpclip {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
