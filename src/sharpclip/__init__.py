"""sharpclip: image search with CLIP-family models, sharpened at query time and measured."""

__version__ = "0.1.0"
