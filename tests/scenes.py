"""Writing Shapes scenes as image files, for tests that index folders."""

from __future__ import annotations

from pathlib import Path

from sharpclip.data import shapes


def write_scenes(folder: Path, count: int, seed: int, prefix: str = "scene") -> list[Path]:
    """``count`` single-object scenes of ``seed`` saved as ``folder/PREFIX000.png``, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sample in enumerate(shapes.generate(shapes.ShapesConfig(size=count, seed=seed))):
        path = folder / f"{prefix}{i:03d}.png"
        sample.image.save(path)
        paths.append(path)
    return paths
