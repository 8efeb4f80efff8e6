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
                             shape_groups=args.shape_groups,
                             partial_caption_fraction=args.partial_caption_fraction)
    record = train_base(config, Path(args.out))
    print(f"saved to {args.out}: {record['train_seconds']}s, final loss {record['final_loss']}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from sharpclip.models import load_model

    if args.task == "conditional":
        from sharpclip.eval import conditional as task

        size = args.size or 5000
        result = task.run_conditional(load_model(args.model), seed=args.seed, size=size)
    else:
        from sharpclip.eval import retrieval as task

        result = task.run_retrieval(load_model(args.model), seed=args.seed, size=args.size or 1000)
    task.write_results(result, Path(args.out))
    print(task.to_markdown(result), end="")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from sharpclip.demo import run_demo

    run_demo(args.model, gallery_size=args.size, seed=args.seed)
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from sharpclip.ingest import IndexConfig
    from sharpclip.store.collection import Collection

    limit = {} if args.max_pixels is None else {"max_pixels": args.max_pixels}
    config = IndexConfig(workers=args.workers, batch_size=args.batch_size, draft=args.fast_decode,
                         progress=not args.quiet and sys.stderr.isatty(), **limit)
    with Collection.open_or_create(args.collection, args.model) as coll:
        report = coll.add(args.paths, config=config)
    print(report.summary())
    for path, reason in report.failures[:20]:
        print(f"  failed: {reason}", file=sys.stderr)
    if len(report.failures) > 20:
        print(f"  ... and {len(report.failures) - 20} more: see `sharpclip status -c "
              f"{args.collection}`", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from sharpclip.store.collection import Collection

    with Collection.open(args.collection) as coll:
        counts = coll.counts()
        bad = [{"path": i.path, "reason": i.reason, "error": i.error} for i in coll.items("error")]
        status = {"collection": str(coll.path), "model": coll.info.model,
                  "fingerprint": coll.info.fingerprint, "dim": coll.info.dim,
                  "items": counts["ok"], "failed": counts["error"], "bad_files": bad}
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"{status['collection']}: {status['items']} items, {status['failed']} failed")
    print(f"model {status['model']} (fingerprint {status['fingerprint']}, dim {status['dim']})")
    for entry in bad:
        print(f"  {entry['reason']:<13s} {entry['path']}: {entry['error']}")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    from sharpclip.store.collection import Collection

    with Collection.open(args.collection) as coll, coll.writing():
        removed = coll.remove(args.paths)
    print(f"removed {removed} items from {args.collection}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    import json

    from sharpclip.store.collection import Collection

    sources = [x for x in (args.text, args.image, args.like) if x is not None]
    if len(sources) != 1:
        raise ValueError("give exactly one query: TEXT, --image FILE or --like PATH")
    with Collection.open(args.collection, args.model) as coll:
        result = coll.search(text=args.text, image=args.image, like=args.like, k=args.k,
                             exact=args.exact or None, condition=args.condition,
                             concepts=args.concepts)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    for rank, hit in enumerate(result.hits, 1):
        print(f"{rank:3d}  {hit.score:.4f}  {hit.path}")
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

    p = sub.add_parser("index", help="index image files and folders into a collection (incremental)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (recursive)")
    p.add_argument("-c", "--collection", required=True, help="collection directory (created if new)")
    p.add_argument("--model", default=None,
                   help="bundled (default for a new collection), a local HF directory or a hub id")
    p.add_argument("--workers", type=int, default=1, help="decoding processes (0: decode inline)")
    p.add_argument("--batch-size", type=int, default=32, help="images per model forward and commit")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="refuse images with more pixels (decompression bombs)")
    p.add_argument("--fast-decode", action="store_true",
                   help="decode JPEGs at reduced scale (faster; not pixel-identical)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("status", help="counts, model and bad files of a collection")
    p.add_argument("-c", "--collection", required=True, help="collection directory")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("search", help="search a collection by text, image or indexed item")
    p.add_argument("text", nargs="?", default=None, help="text query")
    p.add_argument("-c", "--collection", required=True, help="collection directory")
    p.add_argument("--image", default=None, help="query image file")
    p.add_argument("--like", default=None, help="path of an indexed item to use as the query")
    p.add_argument("-k", type=int, default=20, help="number of hits")
    p.add_argument("--exact", action="store_true", help="exact search even when an ANN index exists")
    p.add_argument("--condition", default=None,
                   help="compare images only in a condition: colour, shape, colour+shape, ...")
    p.add_argument("--concepts", default=None, help="a YAML/JSON concept vocabulary file")
    p.add_argument("--model", default=None, help="must be the collection's model (checked)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("remove", help="remove files or folders from a collection")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("-c", "--collection", required=True, help="collection directory")
    p.set_defaults(func=_cmd_remove)

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
    p.add_argument("task", choices=["retrieval", "conditional"])
    p.add_argument("--model", default="bundled", help="bundled, a local HF directory or a hub id")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=None,
                   help="scenes: retrieval 1000 single-object test scenes, conditional 5000 images")
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
    p.add_argument("--shape-groups", type=int, default=defaults.shape_groups,
                   help="scenes per batch rendered once per shape (hard negatives for shape)")
    p.add_argument("--partial-caption-fraction", type=float,
                   default=defaults.partial_caption_fraction,
                   help="share of one-object captions naming only some attributes")
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
