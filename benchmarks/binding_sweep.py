"""The ``binding`` benchmark (METHODS.md §2): the sweep behind its defaults, and runs of them.

``--sweep`` varies one setting at a time around a base (region grid, lam, shortlist K,
structure g, steering beta and m, the binding swap, the oracle crops), then runs the ``--joint``
parts+steer settings, on one seed -- seed 0 only: the defaults are chosen there and reported on
seeds 1 and 2. Without ``--sweep`` it runs ``run_binding`` with the defaults and prints its table
(``--out DIR`` also writes results.json/.md).

Run: .venv/bin/python benchmarks/binding_sweep.py --sweep [--seed 0] [--size 1200]
     .venv/bin/python benchmarks/binding_sweep.py --sweep --grid whole+halves+2x2 --grids "" \\
         --lams 0.5,0.7,1.0 --joint "0.7:100:0.0:0.1:20,0.7:100:0.0:0.2:50" --oracles 0.5:0
     .venv/bin/python benchmarks/binding_sweep.py --seed 1 --layout fixed [--out DIR]
     .venv/bin/python benchmarks/binding_sweep.py --steer-movement [--size 400]
(lists are comma-separated; an empty list skips that part; --joint items are lam:K:g:beta:m;
oracle items are window:frame, e.g. 0.5:0,0:1)
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time

from sharpclip.eval import binding
from sharpclip.methods.parts import PartsConfig
from sharpclip.methods.steering import SteerConfig
from sharpclip.models import load_model


def _list(kind):
    return lambda text: [kind(x) for x in text.split(",") if x.strip()]


def _joint(text):
    out = []
    for item in _list(str)(text):
        lam, k, g, beta, m = item.split(":")
        out.append((PartsConfig(shortlist=int(k), lam=float(lam), structure=float(g)),
                    SteerConfig(m=int(m), beta=float(beta))))
    return out


def _oracles(text):
    return [binding.OracleConfig(float(w), bool(int(f)))
            for w, f in (item.split(":") for item in _list(str)(text))]


def steer_movement(model, seed: int, size: int, layout: str) -> None:
    """Why steering does not bind: how far the default steering moves binding and confusion
    queries, and whether it favours the scene over its twin (plain whole-image gallery)."""
    import numpy as np

    from sharpclip.methods.steering import find_attributes, steer_query
    from sharpclip.query.gallery import ArrayGallery
    from sharpclip.query.pipeline import TextEncoder

    values, encode = binding.vocabulary_values(), TextEncoder(model)
    for part in (binding.binding_part(seed, size, layout),
                 binding.confusion_part(seed, max(1, 3 * size // 4))):
        whole = model.encode_images(part.images)
        gallery = ArrayGallery(whole)

        def knn(vector, m, gallery=gallery):
            ids = gallery.nearest(vector, m)[1]
            return ids, gallery.vectors(ids)

        moved, used, gain_scene, gain_twin, plain_gap = [], [], [], [], []
        for q, text in enumerate(part.queries):
            e = encode([text])[0]
            steered = steer_query(text, e, values, encode, knn, binding.DEFAULT_STEER)
            moved.append(float(steered.vector @ e))
            used.append(sum(d["used"] for d in steered.details))
            scene = whole[part.truth[q]]
            gain_scene.append(float((steered.vector - e) @ scene))
            # the hard negative: the twin (binding) or the look-alike rendered beside the scene
            other = whole[part.twin[q] if part.twin[q] >= 0 else part.truth[q] + 1]
            gain_twin.append(float((steered.vector - e) @ other))
            plain_gap.append(float(e @ scene - e @ other))
        found = np.mean([len(find_attributes(t, values)) for t in part.queries])
        print(f"{part.name}: {len(part.queries)} queries; attribute values found per query "
              f"{found:.2f}, directions used {np.mean(used):.2f}; cos(steered, query) mean "
              f"{np.mean(moved):.3f} (min {np.min(moved):.3f}); cosine change to the scene "
              f"{np.mean(gain_scene):+.4f}")
        negative = "twin" if part.name == "binding" else "look-alike"
        if gain_twin:
            print(f"  cosine change to the {negative} {np.mean(gain_twin):+.4f}; scene gains "
                  f"more than its {negative} for {np.mean(np.array(gain_scene) > np.array(gain_twin)):.3f} of "
                  f"queries; plain cos(scene) - cos({negative}): mean {np.mean(plain_gap):+.4f}, "
                  f"mean |.| {np.mean(np.abs(plain_gap)):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--steer-movement", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=binding.DEFAULT_SIZE)
    parser.add_argument("--layout", default="varied")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--out", default=None)
    d = binding.DEFAULT_PARTS, binding.DEFAULT_STEER
    parser.add_argument("--grid", default=binding.DEFAULT_REGION_GRID, help="base grid")
    parser.add_argument("--lam", type=float, default=d[0].lam)
    parser.add_argument("--shortlist", type=int, default=d[0].shortlist)
    parser.add_argument("--structure", type=float, default=d[0].structure)
    parser.add_argument("--beta", type=float, default=d[1].beta)
    parser.add_argument("--m", type=int, default=d[1].m)
    for name, kind in (("--grids", _list(str)), ("--lams", _list(float)),
                       ("--shortlists", _list(int)), ("--structures", _list(float)),
                       ("--betas", _list(float)), ("--ms", _list(int)), ("--oracles", _oracles),
                       ("--joint", _joint)):
        parser.add_argument(name, type=kind, default=None, help="default: binding.sweep's")
    args = parser.parse_args()
    model = load_model(args.model)
    print(f"# {datetime.date.today()} {platform.machine()} {platform.python_version()}, "
          f"model {model.fingerprint}, seed {args.seed}, size {args.size}, layout {args.layout}")
    start = time.perf_counter()
    if args.steer_movement:
        steer_movement(model, args.seed, args.size, args.layout)
    elif args.sweep:
        if args.seed != 0:
            raise SystemExit("the sweep chooses the defaults: run it on seed 0 only")
        parts = PartsConfig(shortlist=args.shortlist, lam=args.lam, structure=args.structure)
        steer = SteerConfig(m=args.m, beta=args.beta)
        print(f"# base: grid {args.grid}, {parts}, {steer}")
        print(binding.sweep_table([]), end="")
        lists = {k: v for k, v in vars(args).items() if v is not None and k in (
            "grids", "lams", "shortlists", "structures", "betas", "ms", "oracles", "joint")}
        rows = binding.sweep(model, seed=args.seed, size=args.size, layout=args.layout,
                             base_grid=args.grid, base_parts=parts, base_steer=steer,
                             log=lambda line: print(line, flush=True), **lists)
        if args.out:
            with open(args.out, "w") as handle:
                json.dump(rows, handle, indent=1)
    else:
        result = binding.run_binding(model, seed=args.seed, size=args.size, layout=args.layout)
        print(binding.to_markdown(result))
        print(json.dumps({"diagnostics": result["diagnostics"], "timing_s": result["timing_s"]}))
        if args.out:
            binding.write_results(result, args.out)
    print(f"# total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
