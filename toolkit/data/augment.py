"""Augmentation presets for training from image folders (``--augment none|light|standard``).

Each preset is a torchvision.transforms.v2 pipeline on a PIL image already in the card's colour
mode, ending at the input size. ``none`` is the evaluation preprocessing itself (resize the shorter
side, crop the centre: ``toolkit.preprocess.resize_to_input``), so a model trained without
augmentation sees exactly what every runtime feeds it. The preset's name and its steps (``describe``)
go into the model card.
"""

from __future__ import annotations

import functools
from typing import Callable

from PIL import Image

from toolkit.card import InputSpec
from toolkit.preprocess import resize_to_input

# name -> (random-resized-crop scale range, colour jitter strength); "none" has neither.
PRESETS: dict[str, tuple[tuple[float, float] | None, float]] = {
    "none": (None, 0.0),
    "light": ((0.5, 1.0), 0.0),
    "standard": ((0.25, 1.0), 0.3),
}
RATIO = (3 / 4, 4 / 3)  # aspect ratios random-resized-crop draws from (torchvision's default)
HUE = 0.05  # colour images only; the hue range stays small: classes may differ by colour


def describe(name: str, spec: InputSpec, flip: bool) -> list[str]:
    """The preset's steps in words, for the card and the run's header."""
    scale, jitter = PRESETS[name]
    if scale is None:
        return [f"resize shorter side to {spec.resize_size}, centre crop {spec.height}x{spec.width} (no augmentation)"]
    steps = [
        f"random-resized-crop to {spec.height}x{spec.width} (area {scale[0]:g}-{scale[1]:g}, "
        f"aspect {RATIO[0]:.2f}-{RATIO[1]:.2f})"
    ]
    if flip:
        steps.append("horizontal flip (p 0.5)")
    if jitter:
        colour = f", saturation {jitter:g}, hue {HUE:g}" if spec.channels == 3 else ""
        steps.append(f"colour jitter (brightness {jitter:g}, contrast {jitter:g}{colour})")
    return steps


def build(name: str, spec: InputSpec, flip: bool) -> Callable[[Image.Image], Image.Image]:
    """The preset as a function PIL image -> PIL image at the input size (random draws from torch's generator)."""
    scale, jitter = PRESETS[name]
    if scale is None:
        return functools.partial(resize_to_input, spec=spec)  # a partial, not a lambda: workers may pickle it
    from torchvision.transforms import v2

    steps: list[Callable] = [v2.RandomResizedCrop((spec.height, spec.width), scale=scale, ratio=RATIO, antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if jitter:
        colour = {"saturation": jitter, "hue": HUE} if spec.channels == 3 else {}
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, **colour))
    return v2.Compose(steps)
