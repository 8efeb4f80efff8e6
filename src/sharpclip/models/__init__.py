"""Loading CLIP-family models (local Hugging Face directory or hub id) behind one interface."""

from sharpclip.models.loader import EmbeddingModel, ModelLoadError, load_model
from sharpclip.models.preprocess import ImagePreprocessor

__all__ = ["EmbeddingModel", "ImagePreprocessor", "ModelLoadError", "load_model"]
