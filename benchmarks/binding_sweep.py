"""The ``binding`` benchmark (METHODS.md §2): the sweep behind its defaults, and runs of them.

``--sweep`` varies one setting at a time around the defaults (region grid, lam, shortlist K,
structure g, steering beta and m, the binding swap, the oracle window) on one seed -- seed 0
only: the defaults are chosen there and reported on seeds 1 and 2. Without ``--sweep`` it runs
``run_binding`` with the defaults and prints its table (``--out DIR`` also writes results.json/.md).

Run: .venv/bin/python benchmarks/binding_sweep.py --sweep [--seed 0] [--size 1200]
     .venv/bin/python benchmarks/binding_sweep.py --seed 1 --layout fixed [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time

from sharpclip.eval import binding
from sharpclip.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=binding.DEFAULT_SIZE)
    parser.add_argument("--layout", default="varied")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model = load_model(args.model)
    print(f"# {datetime.date.today()} {platform.machine()} {platform.python_version()}, "
          f"model {model.fingerprint}, seed {args.seed}, size {args.size}, layout {args.layout}")
    start = time.perf_counter()
    if args.sweep:
        if args.seed != 0:
            raise SystemExit("the sweep chooses the defaults: run it on seed 0 only")
        print(binding.sweep_table([]), end="")
        rows = binding.sweep(model, seed=args.seed, size=args.size, layout=args.layout,
                             log=lambda line: print(line, flush=True))
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
