"""What every data set is (a Dataset of uint8 Splits), the registry of loaders by name, and the fixed split.

Kept apart from the loaders so that they import it and ``toolkit.data``
imports them, one way only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from toolkit.card import InputSpec

STATS_CHUNK = 256  # images per step of the mean/std histogram: memory stays small for any data set


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    files: list[str] | None = None  # the file each image was read from (image folders), for naming it

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def of(cls, images: np.ndarray, labels: np.ndarray | list[int], files: list[str] | None = None) -> Split:
        """A split from NumPy arrays (any integer labels), as the tensors above."""
        return cls(
            torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
            torch.from_numpy(np.asarray(labels, dtype=np.int64)),
            files,
        )


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    class_names: list[str]

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.images.shape[2]), int(self.train.images.shape[3])

    def input_spec(self) -> InputSpec:
        """The card's input for a model trained on this data: native size, train-split mean/std.

        Mean and std come from a per-channel histogram of the uint8 pixels, a few
        images at a time, instead of a float64 copy of the split (eight times its size).
        """
        images = self.train.images.numpy()
        counts = np.zeros((self.channels, 256), dtype=np.int64)
        for start in range(0, len(images), STATS_CHUNK):
            chunk = images[start : start + STATS_CHUNK]
            for c in range(self.channels):
                counts[c] += np.bincount(chunk[:, c].ravel(), minlength=256)
        levels = np.arange(256, dtype=np.float64) / 255.0
        total = counts.sum(axis=1)
        mean = (counts * levels).sum(axis=1) / total
        variance = (counts * (levels[None, :] - mean[:, None]) ** 2).sum(axis=1) / np.maximum(total - 1, 1)
        std = np.maximum(np.sqrt(variance), 1e-3)
        h, w = self.image_size
        return InputSpec(
            channels=self.channels,
            height=h,
            width=w,
            mean=[round(float(m), 4) for m in mean],
            std=[round(float(s), 4) for s in std],
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
