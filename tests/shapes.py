"""Image folders of drawn shapes, as a user's own photos come: JPEG and PNG files of mixed, non-square sizes.

Each image is one filled shape (its class) of a random colour on a random background, placed and
sized at random; the tests and benchmarks/folder_training.py generate their folders with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "bar")


def draw(kind: str, size: tuple[int, int], rng: np.random.Generator, grey: bool = False) -> Image.Image:
    """One ``kind`` shape on a ``size`` (width, height) canvas."""
    w, h = size
    colours = rng.integers(0, 256, (2, 3))
    while np.abs(colours[0].astype(int) - colours[1]).sum() < 150:  # the shape must stand out
        colours = rng.integers(0, 256, (2, 3))
    background, fill = (tuple(int(v) for v in c) for c in colours)
    image = Image.new("RGB", size, background)
    pen = ImageDraw.Draw(image)
    r = min(w, h) * rng.uniform(0.2, 0.4)
    cx, cy = w / 2 + rng.uniform(-0.15, 0.15) * w, h / 2 + rng.uniform(-0.15, 0.15) * h
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == "circle":
        pen.ellipse(box, fill=fill)
    elif kind == "square":
        pen.rectangle(box, fill=fill)
    elif kind == "triangle":
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif kind == "cross":
        pen.rectangle([cx - r, cy - r / 3, cx + r, cy + r / 3], fill=fill)
        pen.rectangle([cx - r / 3, cy - r, cx + r / 3, cy + r], fill=fill)
    elif kind == "diamond":
        pen.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:  # bar
        pen.rectangle([cx - r, cy - r / 4, cx + r, cy + r / 4], fill=fill)
    return image.convert("L") if grey else image


def make_folder(
    root: Path,
    counts: dict[str, int],
    classes: tuple[str, ...] = SHAPES[:3],
    sizes: tuple[int, int] = (40, 120),
    seed: int = 0,
    grey: bool = False,
) -> Path:
    """``root/SPLIT/CLASS/*.jpg|png`` with ``counts[SPLIT]`` images per class ('' for a flat ``root/CLASS``)."""
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for kind in classes:
            folder = root / split / kind if split else root / kind
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                w, h = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, 2))
                image = draw(kind, (w, h), rng, grey)
                if k % 2:
                    image.save(folder / f"{k}.jpg", quality=int(rng.integers(70, 96)))
                else:
                    image.save(folder / f"{k}.png")
    return root
