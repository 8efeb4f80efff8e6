"""The user-facing facade: a collection (``store.collection``) that can also index files and be
searched (CONTRACT.md, Python). The store knows nothing of ingest or methods; this module wires
them."""

from __future__ import annotations

import os
from collections.abc import Iterable

from sharpclip.store import collection as store


class Collection(store.Collection):
    """A directory-backed image collection you can ``add`` files to and ``search``."""

    @staticmethod
    def load_model(spec: str):
        """The model of a spec (``bundled``, a local Hugging Face directory or a hub id)."""
        from sharpclip.models import load_model

        return load_model(spec)

    def add(self, paths: Iterable[str | os.PathLike], **options):
        """Index files and folders incrementally (see :func:`sharpclip.ingest.index_paths`)."""
        from sharpclip.ingest import index_paths

        return index_paths(self, paths, **options)

    def search(self, text: str | None = None, image=None, like=None, k: int = 20, **options):
        """Search by text, image file/PIL image, or an indexed item, with methods as options
        (see :func:`sharpclip.search.search`)."""
        from sharpclip.search import search

        return search(self, text=text, image=image, like=like, k=k, **options)
