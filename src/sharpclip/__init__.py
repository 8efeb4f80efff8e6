"""sharpclip: image search with CLIP-family models, sharpened at query time and measured."""

__version__ = "0.1.0"
__all__ = ["Collection", "load_model"]


def __getattr__(name: str):
    # Lazy, so that `import sharpclip` (and decoding worker processes) stay light.
    if name == "Collection":
        from sharpclip.collection import Collection

        return Collection
    if name == "load_model":
        from sharpclip.models import load_model

        return load_model
    raise AttributeError(f"module 'sharpclip' has no attribute {name!r}")
