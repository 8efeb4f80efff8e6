"""Incremental, crash-safe indexing of image files into a collection: find files, decode each once
in worker processes (``decode.py``), turn it into the arrays of every configured vector set
(``stages.py``), embed, and commit batch by batch (``run.py``)."""

from sharpclip.ingest.run import BUNDLED_NOTE, IndexConfig, IndexReport, index_paths

__all__ = ["BUNDLED_NOTE", "IndexConfig", "IndexReport", "index_paths"]
