"""Fine-tuning for image-to-image search that keeps text search aligned (METHODS.md §4):
GPR-FT (ArcFace on the image tower), Re-A (text-tower re-alignment), 2SFT and MCIP."""
