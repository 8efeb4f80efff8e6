"""Child process of the fault-injection tests: import everything and load the model first, say
"ready" on stdout, then run one sharpclip command line (so a kill lands inside the command, not
inside Python's start-up)."""

from __future__ import annotations

import os
import sys

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
    sys.exit(main(sys.argv[1:]))
