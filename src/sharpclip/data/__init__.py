"""Data: the procedural Shapes benchmark generator."""
