"""What every data set is (a Dataset of Splits: uint8 in memory, or files), the loader registry, the fixed split.

Kept apart from the loaders so that they import it and ``toolkit.data``
imports them, one way only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from toolkit.card import InputSpec
from toolkit.errors import BadInputError
from toolkit.preprocess import conform_pixels

STATS_CHUNK = 256  # images per step of the mean/std histogram: memory stays small for any data set
MEMORY_SHARE = 4  # an in-memory data set may take at most this fraction (1/4) of the machine's memory


@dataclass
class Split:
    """A split held in memory (the built-in data sets): uint8 images at the data set's own size."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def of(cls, images: np.ndarray, labels: np.ndarray | list[int]) -> Split:
        """A split from NumPy arrays (any integer labels), as the tensors above."""
        return cls(
            torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
            torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        )

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def subset(self, index: np.ndarray | torch.Tensor) -> Split:
        index = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return Split(self.images[index], self.labels[index])

    def pixels(self, index: np.ndarray | torch.Tensor | None, spec: InputSpec) -> np.ndarray:
        """uint8 (N, C, H, W) of the images at ``index`` (all when None) in the card's shape (as in ``prepare_batch``).

        A split whose images already have that shape gives them as they are.
        """
        images = self.images.numpy() if index is None else self.images[torch.as_tensor(index)].numpy()
        return conform_pixels(images, spec)


@dataclass
class Dataset:
    """Train and test splits (held in memory, or image files read lazily: ``toolkit.data.imagefolder``).

    ``val`` is the data set's own validation split, when it has one (an image folder's val/); training carves
    one from train otherwise. ``test_name`` says what ``test`` is: "val" for a folder without test/, whose
    test split falls back to val/ so that eval and parity have images to run on.
    """

    name: str
    train: Any  # Split or FileSplit
    test: Any
    class_names: list[str]
    val: Any = None
    test_name: str = "test"

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, Split)

    @property
    def channels(self) -> int:
        return self.train.channels

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(height, width) of every image of an in-memory data set; None for files (each has its own)."""
        return (int(self.train.images.shape[2]), int(self.train.images.shape[3])) if self.in_memory else None

    def input_spec(self) -> InputSpec:
        """The card's input for a model trained on this in-memory data: native size, train-split mean/std."""
        h, w = self.image_size
        mean, std = channel_stats(
            (self.train.images[i : i + STATS_CHUNK].numpy() for i in range(0, len(self.train), STATS_CHUNK)),
            self.channels,
        )
        return InputSpec(channels=self.channels, height=h, width=w, mean=mean, std=std)


def channel_stats(chunks: Iterable[np.ndarray], channels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..1 scale, rounded to 4 places) of uint8 (N, C, H, W) chunks.

    From a histogram of the pixel values, a chunk at a time, instead of a float64 copy of the images
    (eight times their size).
    """
    counts = np.zeros((channels, 256), dtype=np.int64)
    for chunk in chunks:
        for c in range(channels):
            counts[c] += np.bincount(chunk[:, c].ravel(), minlength=256)
    levels = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum(axis=1)
    mean = (counts * levels).sum(axis=1) / total
    variance = (counts * (levels[None, :] - mean[:, None]) ** 2).sum(axis=1) / np.maximum(total - 1, 1)
    std = np.maximum(np.sqrt(variance), 1e-3)
    return [round(float(m), 4) for m in mean], [round(float(s), 4) for s in std]


def physical_memory() -> int | None:
    """Bytes of memory this machine has, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return None


def check_fits_in_memory(what: str, count: int, spec: InputSpec) -> None:
    """Refuse, before allocating, ``count`` images at ``spec`` that would take more than 1/MEMORY_SHARE of memory."""
    need = count * spec.channels * spec.height * spec.width
    memory = physical_memory()
    if memory is not None and need > memory // MEMORY_SHARE:
        raise BadInputError(
            f"{what} would take {need / 1e9:.1f} GB in memory: {count} images at {spec.width}x{spec.height}, "
            f"more than 1/{MEMORY_SHARE} of this machine's {memory / 1e9:.0f} GB; choose a smaller --input-size"
        )


Loader = Callable[[Path | None, bool], Dataset]
REGISTRY: dict[str, tuple[Loader, str]] = {}


def register_dataset(name: str, description: str) -> Callable[[Loader], Loader]:
    def wrap(fn: Loader) -> Loader:
        REGISTRY[name] = (fn, description)
        return fn

    return wrap


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed, per-class train/test indices (same seed, same split on every machine).

    A class with two or more images keeps at least one in each split. Each split
    comes in a fixed shuffled order, so "the first N test images" mix the classes.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))
