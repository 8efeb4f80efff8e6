"""The sharpclip command line (CONTRACT.md). The library raises; only this module exits."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from pathlib import Path

from sharpclip.data import shapes
from sharpclip.data.regions import DEFAULT_GRID
from sharpclip.models.train_base import BaseTrainConfig

DESCRIPTION = """\
Image search over your own folders with CLIP-family models: index a folder, then search it by
text, by an example image, or by an example image under a condition (same colour, same shape).
Runs offline on a small bundled model; pass --model for a real Hugging Face CLIP or SigLIP
checkpoint."""

EPILOG = """\
first steps:
  sharpclip demo                                  an offline tour on the bundled model
  sharpclip index ~/Photos -c photos.sc --model openai/clip-vit-base-patch32
  sharpclip search "a red bicycle" -c photos.sc
  sharpclip search --image q.jpg -c photos.sc --condition colour
  sharpclip index ~/Photos -c photos.sc --regions  region crops, for --rerank parts
  sharpclip search "a red cube left of a blue ball" -c photos.sc --rerank parts --steer --why
  sharpclip check -c photos.sc                    after a crash: verify, then --repair

`sharpclip COMMAND --help` describes each command."""


class UsageError(ValueError):
    """The command line asks for something inconsistent (exit status 2)."""


def display(path: str) -> str:
    """``path`` for one line of plain-text output: characters that are not printable (a newline
    in a file name) are shown escaped, as Python writes them, so one hit stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in path)


def _workers(text: str) -> int | str:
    """``auto`` or a whole number >= 0 (decode processes)."""
    if text == "auto":
        return text
    try:
        return _count(0)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r}: give auto or a whole number >= 0") from None


def _count(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is too small: give a number >= {low}")
        return value

    parse.__name__ = "integer"
    return parse


def _recall(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a recall: give a number in (0, 1], "
                                         "e.g. 0.95")
    return value


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
    record = train_base(config, Path(args.out), resume=args.resume)
    print(f"saved to {args.out}: {record['train_seconds']}s, final loss {record['final_loss']}")
    return 0


def _one_model(args: argparse.Namespace) -> str:
    """The single --model an eval task takes (``folder`` alone compares several)."""
    models = args.model or ["bundled"]
    if len(models) > 1:
        raise UsageError(f"eval {args.task} takes one --model; only `eval folder` compares several")
    return models[0]


def _cmd_eval(args: argparse.Namespace) -> int:
    from sharpclip.models import load_model

    if args.task != "conditional" and (args.data or args.concepts or args.condition):
        raise UsageError("--data, --concepts and --condition belong to `eval conditional`")
    if args.task == "conditional" and args.data_dir is not None:
        raise UsageError("eval conditional takes your folder as --data DIR (with --concepts FILE)")
    if args.task != "folder" and args.data_dir is not None:
        raise UsageError(f"eval {args.task} takes no DIR; only `eval folder DIR` reads a folder")
    if args.task == "folder":
        from sharpclip.eval import folder as task

        if args.data_dir is None:
            raise UsageError("eval folder needs the folder: sharpclip eval folder DIR --model M")
        result = task.run_folder(args.data_dir, args.model or ["bundled"], args.captions)
        print(f"{result['size']} images in {result['classes']} classes, {result['captions']} "
              f"captions, {result['skipped']} files skipped", file=sys.stderr)
    elif args.task == "finetune":
        from sharpclip.eval import finetune as task

        result = task.run_finetune_eval(load_model, _one_model(args), seed=args.seed,
                                        views=args.size or task.VIEWS, progress=True)
    elif args.task == "conditional" and args.data is not None:
        from sharpclip.eval import conditional as task
        from sharpclip.eval.conditional_folder import run_folder_conditional, user_condition

        if args.size is not None:
            raise UsageError("--size does not apply to --data: every image of the folder is used")
        user_condition(args.concepts, args.condition)  # a usage error before the model loads
        result = run_folder_conditional(load_model(_one_model(args)), args.data, args.concepts,
                                        args.condition, seed=args.seed)
    elif args.task == "conditional":
        from sharpclip.eval import conditional as task

        if args.concepts or args.condition:
            raise UsageError("--concepts and --condition check your own folder: add --data DIR "
                             "(one subfolder of images per value)")
        size = args.size or 5000
        result = task.run_conditional(load_model(_one_model(args)), seed=args.seed, size=size)
    elif args.task == "identity":
        from sharpclip.eval import identity as task

        result = task.run_identity(load_model(_one_model(args)), seed=args.seed,
                                   size=args.size or task.DEFAULT_SIZE)
    elif args.task == "binding":
        from sharpclip.eval import binding as task

        if args.layout not in shapes.LAYOUTS:
            raise UsageError(f"--layout must be one of {', '.join(shapes.LAYOUTS)}")
        result = task.run_binding(load_model(_one_model(args)), seed=args.seed,
                                  size=args.size or task.DEFAULT_SIZE, layout=args.layout)
    else:
        from sharpclip.eval import retrieval as task

        result = task.run_retrieval(load_model(_one_model(args)), seed=args.seed,
                                    size=args.size or 1000)
    write_results = getattr(task, "write_results", None)
    if write_results is None:
        from sharpclip.eval.retrieval import write_results

        write_results(result, Path(args.out), task.to_markdown(result))
    else:
        write_results(result, Path(args.out))
    print(task.to_markdown(result), end="")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from sharpclip.eval.folder import METRICS
    from sharpclip.finetune.data import load_training_set
    from sharpclip.finetune.recipes import FinetuneConfig
    from sharpclip.finetune.run import finetune, hold_side
    from sharpclip.models import load_model

    config = FinetuneConfig(seed=args.seed, batch_size=args.batch_size,
                            image_steps=args.image_steps, text_steps=args.text_steps,
                            image_lr=args.image_lr, text_lr=args.text_lr,
                            caption_percentile=args.caption_percentile,
                            caption_threshold=args.caption_threshold,
                            checkpoint_every=args.checkpoint_every, precision=args.precision)
    base = load_model(args.model)
    training = load_training_set(args.data, args.captions, hold_side(base))
    print(f"training data: {training.summary()}", file=sys.stderr)
    for path, reason in training.skipped[:5]:
        print(f"  skipped {display(path)}: {reason}", file=sys.stderr)
    if len(training.skipped) > 5:
        print(f"  ... and {len(training.skipped) - 5} more skipped", file=sys.stderr)
    record = finetune(args.recipe, base, training, args.out, config, resume=args.resume,
                      progress=not args.quiet)
    print(f"saved {args.recipe} model to {args.out} in {record['train_seconds']}s "
          "(metrics on the training data):")
    for metric in METRICS:
        if metric in record["metrics_before"]:
            print(f"  {metric}: {record['metrics_before'][metric]:.3f} -> "
                  f"{record['metrics_after'][metric]:.3f}")
    return 0


def _cmd_reindex(args: argparse.Namespace) -> int:
    from sharpclip.collection import Collection
    from sharpclip.ingest.reindex import reindex

    with Collection.open(args.collection) as source:
        report = reindex(source, args.out, args.model, workers=args.workers,
                         progress=not args.quiet)
    print(f"re-embedded {report.new} items into {args.out} with model {args.model}, "
          f"{report.failed} failed, in {report.seconds:.1f}s")
    for path, reason in report.failures[:10]:
        print(f"  failed {display(path)}: {reason}", file=sys.stderr)
    return 1 if report.failed and not report.embedded else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from sharpclip.demo import run_demo

    run_demo(args.model, gallery_size=args.size, seed=args.seed)
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from sharpclip.collection import Collection
    from sharpclip.ingest import IndexConfig

    missing = [p for p in args.paths if not os.path.lexists(os.path.expanduser(p))]
    if missing:  # before a collection is created for nothing
        raise FileNotFoundError(f"{missing[0]}: no such file or directory to index; check the path")
    from sharpclip.data.regions import RegionGrid

    limit = {} if args.max_pixels is None else {"max_pixels": args.max_pixels}
    from sharpclip.methods.calibration import CVEConfig

    regions = None if args.regions is None else RegionGrid(args.regions)
    calibrate = CVEConfig() if args.calibrate else None
    config = IndexConfig(workers=args.workers, batch_size=args.batch_size, draft=args.fast_decode,
                         progress=not args.quiet and sys.stderr.isatty(), regions=regions,
                         calibrate=calibrate, recall=args.recall, **limit)
    with Collection.open_or_create(args.collection, args.model) as coll:
        report = coll.add(args.paths, config=config)
    print(report.summary())
    for _, reason in report.failures[:20]:
        print(f"  failed: {display(reason)}", file=sys.stderr)
    if len(report.failures) > 20:
        print(f"  ... and {len(report.failures) - 20} more: see `sharpclip status -c "
              f"{args.collection}`", file=sys.stderr)
    for note in report.notes:
        print(note, file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from sharpclip.collection import Collection

    with Collection.open(args.collection) as coll:
        counts = coll.counts()
        bad = [{"path": i.path, "reason": i.reason, "error": _detail(i.path, i.error)}
               for i in coll.items("error")]
        live = len(coll.live_rows()[0])
        sets = []
        for name, dim, rows, file in coll.vector_sets():
            used = live if name == "image" else len(coll.snapshot(name).live_rows)
            sets.append({"name": name, "dim": dim, "rows": rows, "file": file.name,
                         "orphaned_rows": rows - used, **coll.vector_set(name).params})
        status = {"collection": str(coll.path), "model": coll.info.model,
                  "fingerprint": coll.info.fingerprint, "dim": coll.info.dim,
                  "items": counts["ok"], "failed": counts["error"], "vector_sets": sets,
                  "ann_index": coll.has_index() if coll.uses_ann(live, None) else None,
                  "ann_search": coll.index_settings() if coll.uses_ann(live, None) else None,
                  "bad_files": bad}
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"{display(status['collection'])}: {status['items']} items, {status['failed']} failed")
    print(f"model {status['model']} (fingerprint {status['fingerprint']}, dim {status['dim']})")
    for entry in sets:
        orphans = (f" ({entry['orphaned_rows']} orphaned: `sharpclip compact` reclaims them)"
                   if entry["orphaned_rows"] else "")
        grid = f" (grid {entry['grid']})" if "grid" in entry else ""
        print(f"vector set {entry['name']}{grid}: {entry['rows']} rows{orphans}")
    if status["ann_search"]:
        ann = status["ann_search"]
        tuned = ann["tuning"]
        bound = (f", at least {tuned['lower_bound']:.3f} with confidence"
                 if tuned and "lower_bound" in tuned else "")  # tuned by an earlier version: no bound
        unmet = " (target not shown with confidence at any breadth: the largest is used)"
        how = (f"tuned to recall@{tuned['k']} {tuned['target']} on {tuned['queries']} held-out "
               f"vectors: {tuned['recall']:.3f}{bound}{'' if tuned['met'] else unmet}"
               if tuned else "default, not tuned")
        print(f"ANN index: HNSW M={ann['hnsw_m']} {ann['codec']}, {ann['bytes_per_vector']} B/vector "
              f"(memory-mapped by searches); efSearch {ann['ef_search']} ({how})")
    if status["ann_index"] is False:
        print(f"no ANN index: searches scan exactly; `sharpclip check -c {args.collection} "
              "--repair` builds it")
    for entry in bad:
        print(f"  {entry['reason']:<13s} {display(entry['path'])}: {display(entry['error'] or '')}")
    return 0


def _detail(path: str, error: str | None) -> str | None:
    """An item's stored error without the path it starts with (status prints the path once)."""
    return error.removeprefix(f"{path}: ") if error else error


def _cmd_check(args: argparse.Namespace) -> int:
    import json

    from sharpclip.store.integrity import check_collection

    if not Path(args.collection, "collection.sqlite").exists():
        raise FileNotFoundError(f"{args.collection} is not a sharpclip collection (no "
                                "collection.sqlite); check the path")
    found = check_collection(args.collection)
    repaired = None
    if args.repair and not found.clean:
        from sharpclip.ingest import IndexConfig
        from sharpclip.repair import repair_collection

        config = IndexConfig(workers=args.workers, progress=sys.stderr.isatty())
        repaired = repair_collection(args.collection, found, config)
    final = repaired.after if repaired else found
    if args.json:
        document = {**found.to_json(), "repair": None}
        if repaired:
            document["repair"] = {"summary": repaired.summary(), "after": final.to_json()}
        print(json.dumps(document, indent=2))
    else:
        _print_problems(found)
        if repaired:
            print(repaired.summary())
            _print_problems(final, after_repair=True)
    return 0 if final.clean else 1


def _print_problems(report, after_repair: bool = False) -> None:
    stats = report.stats
    if not after_repair:
        print(f"checked {display(report.collection)}: {stats.get('items', 0)} items, "
              f"{stats.get('rows', 0)} vector rows, {stats.get('batches', 0)} checksum batches "
              f"({stats.get('bytes_hashed', 0) / 2**20:.1f} MiB) in {report.seconds:.2f}s")
    for p in report.problems:
        print(f"{p.severity}: {p.kind}: {display(p.file)}: {p.message}; fix: {p.fix}")
        for path in p.paths[:5]:
            print(f"    affects {display(path)}")
        if len(p.paths) > 5:
            print(f"    ... and {len(p.paths) - 5} more items")
    if report.clean:
        print("after repair: clean" if after_repair else "clean: no errors or warnings")


def _cmd_compact(args: argparse.Namespace) -> int:
    from sharpclip.collection import Collection
    from sharpclip.store.compact import compact

    with Collection.open(args.collection) as coll, coll.writing():
        report = compact(coll, progress=sys.stderr.isatty())
    print(report.summary())
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    from sharpclip.collection import Collection

    with Collection.open(args.collection) as coll, coll.writing():
        removed = coll.remove(args.paths)
        coll.sync_index()
    print(f"removed {removed} items from {args.collection}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    import json

    from sharpclip.collection import Collection

    sources = [x for x in (args.text, args.image, args.like) if x is not None]
    if len(sources) != 1:
        raise UsageError("give exactly one query: TEXT, --image FILE or --like PATH")
    if args.condition is not None and args.text is not None:
        raise UsageError("--condition compares images: use it with --image FILE or --like PATH")
    if (args.rerank or args.steer is not None or args.calibrate) and args.text is None:
        raise UsageError("--rerank, --steer and --calibrate work on text queries: give the query "
                         "as TEXT")
    if args.shortlist is not None and not (args.rerank or args.calibrate):
        raise UsageError("--shortlist sets how many candidates --rerank/--calibrate re-rank: add "
                         "--rerank parts or --calibrate")
    if args.captions is not None and not args.calibrate:
        raise UsageError("--captions is for --calibrate")
    steer = None if args.steer is None else (True if args.steer == "" else args.steer)
    plain_text = (args.text is not None and args.model is None and args.condition is None
                  and not (args.rerank or args.steer is not None or args.calibrate))
    copy = _onnx_text_model(args.collection) if plain_text else None
    with Collection.open(args.collection, copy or args.model) as coll:
        result = coll.search(text=args.text, image=args.image, like=args.like, k=args.k,
                             exact=args.exact or None, condition=args.condition,
                             concepts=args.concepts, rerank=args.rerank, steer=steer,
                             shortlist=args.shortlist, calibrate=args.calibrate or None,
                             captions=args.captions)
        if plain_text and copy is None:  # the torch path ran: store the fast copy for next time
            from sharpclip.models.onnx_text import write_copy

            write_copy(coll.model, coll.path / "cache")
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    for note in _query_notes(result.query):
        print(note, file=sys.stderr)
    for rank, hit in enumerate(result.hits, 1):
        print(f"{rank:3d}  {hit.score:.4f}  {display(hit.path)}")
        if args.why:
            for line in _why_lines(hit.why):
                print(f"{'':13s}{line}")
    return 0


def _onnx_text_model(path: str):
    """The collection's ONNX text-tower copy (no torch import), or None: then torch serves."""
    from sharpclip.models.onnx_text import load_copy
    from sharpclip.store.collection import Collection, CollectionError

    try:
        with Collection.open(path) as coll:
            return load_copy(coll.path / "cache", coll.info.fingerprint)
    except CollectionError:  # the torch path's open says what is wrong
        return None


def _query_notes(query: dict) -> list[str]:
    """What the methods did to the query, for the plain-text output (stderr)."""
    notes = []
    for detail in query.get("steer", {}).get("attributes", []):
        used = "steered" if detail.get("used") else "no direction (its neighbours were the same)"
        notes.append(f"steer: {detail['condition']} {detail['value']!r} vs "
                     f"{detail['confuser']!r}: {used}")
    masked = query.get("calibrate", {}).get("masked_tokens")
    if masked is not None:
        notes.append(f"calibrate: masked the general tokens {masked}")
    parts = query.get("parts")
    if parts and "skipped" in parts:
        notes.append(f"rerank parts: skipped, {parts['skipped']}")
    if query.get("regions_computed"):
        notes.append(f"rerank parts: computed the regions of {query['regions_computed']} "
                     "candidates on demand (index with --regions to store them)")
    return notes


def _why_lines(why: dict) -> list[str]:
    """A hit's per-stage explanation as short lines (``--why``)."""
    lines = []
    for stage, value in why.items():
        if stage == "steer":
            moved = "; ".join(f"{c} {v} vs {w}" for c, v, w in value["attributes"]) or "nothing"
            lines.append(f"steer {value['score']:.4f} (beta {value['beta']:g}: {moved})")
        elif stage == "calibrate":
            lines.append(f"calibrate {value['score']:.4f} (query {value['query']:.4f}, masked "
                         f"query {value['discriminative']:.4f})")
        elif isinstance(value, dict):  # parts: the score, then each phrase's matched region
            lines.append(f"{stage} {value['score']:.4f} (alignment {value['alignment']:.4f})")
            for match in value.get("matches", []):
                box = "unmatched" if match["box"] is None else "box " + ",".join(map(str, match["box"]))
                lines.append(f"  {display(match['phrase'])!r} -> {box} cos {match['cos']:.4f}")
        else:
            lines.append(f"{stage} {value:.4f}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sharpclip command implemented so far."""
    parser = argparse.ArgumentParser(prog="sharpclip", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--workers", type=_workers, default="auto",
                   help="decoding processes (0: decode inline; auto, the default: as many as keep "
                   "the model fed, measured on the first batch)")
    p.add_argument("--batch-size", type=_count(1), default=32,
                   help="images per model forward and commit")
    p.add_argument("--max-pixels", type=_count(1), default=None,
                   help="refuse images with more pixels (decompression bombs)")
    p.add_argument("--fast-decode", action="store_true",
                   help="decode JPEGs at reduced scale (faster; not pixel-identical)")
    p.add_argument("--regions", nargs="?", const=DEFAULT_GRID, default=None, metavar="GRID",
                   help="also store region crops for --rerank parts (default grid "
                   f"{DEFAULT_GRID}; levels whole, halves, 2x2, 3x3 joined by +); added to the "
                   "stored items that lack them without re-embedding their images")
    p.add_argument("--calibrate", action="store_true",
                   help="also store CVE's calibrated embedding (for search --calibrate); added to "
                   "the stored items that lack it without re-embedding their images")
    p.add_argument("--recall", type=_recall, default=None, metavar="R",
                   help="recall@10 the ANN index's search breadth is tuned to on held-out vectors "
                   "of the collection (default: the last target, else 0.95; a new one rebuilds "
                   "the index)")
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
    p.add_argument("-k", type=_count(1), default=20, help="number of hits")
    p.add_argument("--exact", action="store_true", help="exact search even when an ANN index exists")
    p.add_argument("--condition", default=None,
                   help="compare images only in a condition: colour, shape, ...; colour+shape "
                   "ranks by the mean of the two conditions' similarities")
    p.add_argument("--concepts", default=None, help="a YAML/JSON concept vocabulary file")
    p.add_argument("--rerank", choices=["parts"], default=None,
                   help="re-rank a shortlist by matching the query's parts to image regions")
    p.add_argument("--shortlist", type=_count(1), default=None,
                   help="candidates --rerank parts / --calibrate re-rank (default 300 / 100)")
    p.add_argument("--steer", nargs="?", const="", default=None, metavar="ATTR=VALUE",
                   help="steer the query toward the attribute values it names (or the one given, "
                   "e.g. colour=red) and away from their confusers")
    p.add_argument("--calibrate", action="store_true",
                   help="search the calibrated vectors (index --calibrate) and re-rank by masking "
                   "the query's general tokens (CalibCLIP)")
    p.add_argument("--captions", default=None,
                   help="--calibrate: a text file of captions (one per line) to count how general "
                   "each word is (default: the concept vocabulary's prompts)")
    p.add_argument("--why", action="store_true", help="show each hit's per-stage scores")
    p.add_argument("--model", default=None, help="must be the collection's model (checked)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("check", help="verify a collection (catalog, vectors, checksums, caches, "
                       "index); --repair fixes what it can")
    p.add_argument("-c", "--collection", required=True, help="collection directory")
    p.add_argument("--repair", action="store_true",
                   help="re-embed lost or damaged vectors, delete damaged caches, rebuild the index")
    p.add_argument("--workers", type=_workers, default="auto",
                   help="decoding processes for --repair (default auto)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("compact", help="rewrite the vector files with only live rows (crash-safe)")
    p.add_argument("-c", "--collection", required=True, help="collection directory")
    p.set_defaults(func=_cmd_compact)

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
    p.add_argument("task", choices=["retrieval", "conditional", "binding", "identity", "finetune",
                                    "folder"])
    p.add_argument("data_dir", nargs="?", default=None, metavar="DIR",
                   help="folder: your labelled folder (one subfolder of images per class)")
    p.add_argument("--model", action="append", default=None,
                   help="bundled (default), a local HF directory or a hub id; folder: repeat it "
                   "to compare models side by side")
    p.add_argument("--captions", default=None,
                   help="folder: a text file of IMAGE<TAB>CAPTION lines, for text->image R@5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=None,
                   help="scenes: retrieval 1000 single-object test scenes, conditional 5000 "
                   "images, binding 1200 two-object scenes (+ 800 confusion queries), identity "
                   "2000 renderings of identities, finetune 8 renderings per class")
    p.add_argument("--layout", default="varied",
                   help="binding: object placement, varied (anywhere, any scale) or fixed")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="conditional: check a condition on your own folder, one subfolder of "
                   "images per value (plain vs clay mAP)")
    p.add_argument("--concepts", default=None, metavar="FILE",
                   help="conditional --data: your vocabulary file (YAML/JSON) defining the "
                   "condition")
    p.add_argument("--condition", default=None,
                   help="conditional --data: the condition the folder is labelled by (default: "
                   "the only one --concepts defines)")
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
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the checkpoint in --out")
    p.set_defaults(func=_cmd_train_base)

    from sharpclip.finetune.recipes import RECIPES, FinetuneConfig

    tuned = FinetuneConfig()
    p = sub.add_parser("finetune", help="fine-tune a model for image-to-image search, keeping text "
                       "search aligned (gpr, rea, 2sft, mcip, mcip+rea)")
    p.add_argument("recipe", choices=list(RECIPES),
                   help="gpr: ArcFace on the image tower; rea: re-align the text tower; 2sft: gpr "
                   "then rea; mcip: ArcFace + pseudo-captions; mcip+rea: mcip then rea")
    p.add_argument("--model", default="bundled", help="the base: bundled, a local HF directory or "
                   "a hub id")
    p.add_argument("--data", required=True, help="a folder with one subfolder of images per "
                   "class, or a Shapes set (sharpclip shapes --out DIR)")
    p.add_argument("--captions", default=None, help="a text file, one caption per line (the pool "
                   "mcip mines); IMAGE<TAB>CAPTION lines also pair a caption with an image")
    p.add_argument("--out", required=True, help="the checkpoint directory to write")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the checkpoint in --out")
    p.add_argument("--seed", type=int, default=tuned.seed)
    p.add_argument("--batch-size", type=_count(2), default=tuned.batch_size)
    p.add_argument("--image-steps", type=_count(0), default=tuned.image_steps,
                   help="steps of the image-tower stage (gpr, mcip)")
    p.add_argument("--text-steps", type=_count(0), default=tuned.text_steps,
                   help="steps of the text re-alignment stage (rea)")
    p.add_argument("--image-lr", type=float, default=tuned.image_lr,
                   help="image tower learning rate (class proxies: 100x)")
    p.add_argument("--text-lr", type=float, default=tuned.text_lr)
    p.add_argument("--caption-percentile", type=float, default=tuned.caption_percentile,
                   help="mcip: keep pseudo-captions above this percentile of the base model's "
                   "image-caption similarities")
    p.add_argument("--caption-threshold", type=float, default=None,
                   help="mcip: an absolute cosine threshold instead (the paper: 0.27 for ViT-L)")
    p.add_argument("--checkpoint-every", type=_count(1), default=tuned.checkpoint_every,
                   help="steps between training checkpoints (for --resume)")
    p.add_argument("--precision", choices=["no", "bf16", "fp16"], default=tuned.precision,
                   help="mixed precision (bf16 on recent GPUs)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("reindex", help="re-embed a collection's items with another model into a "
                       "new collection (no folder scan, no hashing)")
    p.add_argument("-c", "--collection", required=True, help="the collection to read")
    p.add_argument("--model", required=True, help="the new model: a local HF directory, a hub id "
                   "or bundled")
    p.add_argument("--out", required=True, help="the new collection's directory")
    p.add_argument("--workers", type=_workers, default="auto",
                   help="decoding processes (default auto: as many as keep the model fed)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_reindex)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse arguments, run the command, turn every error into one line on stderr
    (exit 2 for usage errors, 1 for the rest; ``SHARPCLIP_DEBUG=1`` shows the traceback)."""
    args = build_parser().parse_args(argv)
    prefix = f"sharpclip {args.command}: error:"
    try:
        return args.func(args)
    except UsageError as error:
        print(f"{prefix} {error} (see `sharpclip {args.command} --help`)", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `sharpclip status | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        kept = ("the last training checkpoint is kept: run the same command with --resume"
                if args.command in ("finetune", "train") else
                "committed batches are kept, run the command again to go on")
        print(f"sharpclip {args.command}: interrupted; {kept}", file=sys.stderr)
        return 130
    except Exception as error:  # the one place that turns any error into a line
        if os.environ.get("SHARPCLIP_DEBUG"):
            raise
        print(f"{prefix} {one_line(error, getattr(args, 'collection', None))}", file=sys.stderr)
        return 1


def one_line(error: Exception, collection: str | None = None) -> str:
    """The message of ``error`` as one line that names the file and what to do."""
    from sharpclip.data.imagefiles import ImageFileError

    if isinstance(error, sqlite3.Error) and collection:
        text = (f"{Path(collection, 'collection.sqlite')}: {error} (the catalog could not be "
                f"read or written); run `sharpclip check -c {collection}`")
    elif isinstance(error, ImageFileError):
        text = f"{error.path}: {error.detail}"
    elif isinstance(error, (ValueError, OSError, RuntimeError)):
        text = str(error)
    else:
        text = (f"{type(error).__name__}: {error} (unexpected: please report it; "
                "SHARPCLIP_DEBUG=1 shows the traceback)")
    return display(" ".join(text.splitlines()))


if __name__ == "__main__":
    sys.exit(main())
