"""Child process of the fault-injection tests: import everything and load the model first, say
"ready" on stdout, then run one sharpclip command line (so a kill lands inside the command, not
inside Python's start-up), then say "done SECONDS" and exit at once."""

from __future__ import annotations

import os
import sys
import time

from sharpclip.cli import main
from sharpclip.models import load_model
from sharpclip.store import collection, compact
from sharpclip.store.search_index import SearchConfig

if __name__ == "__main__":
    threshold = os.environ.get("SHARPCLIP_TEST_ANN_THRESHOLD")
    if threshold:  # a small collection that uses the ANN index, as a large one would
        for module in (collection, compact):
            module.SearchConfig = lambda: SearchConfig(ann_threshold=int(threshold))
    load_model("bundled")  # warms the imports; the command loads it again in ~0.1 s
    print("ready", flush=True)
    start = time.perf_counter()
    code = main(sys.argv[1:])
    print(f"done {time.perf_counter() - start:.4f}", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the kill must land in the command, not in the interpreter's slow teardown
