"""Data sets by name, held in memory as uint8 (N, C, H, W) tensors with class names.

``mnist5k`` is embedded (a real MNIST subset shipped by a pinned package) and
works offline. ``mnist``, ``kmnist``, ``fashionmnist``, ``cifar10``, ``svhn`` and
``stl10`` come through torchvision with ``data_dir``/``download``;
``imagefolder:PATH`` reads a user's own images.

Pixels stay uint8 until the last moment: conversion to the ModelCard's input
(see ``toolkit.preprocess``) happens per batch, the same way for every runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from toolkit.card import InputSpec
from toolkit.errors import BadInputError


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


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
        """The card's input for a model trained on this data: native size, train-split mean/std."""
        x = self.train.images.to(torch.float64) / 255.0
        mean = x.mean(dim=(0, 2, 3)).tolist()
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
        h, w = self.image_size
        return InputSpec(channels=self.channels, height=h, width=w,
                         mean=[round(m, 4) for m in mean], std=[round(s, 4) for s in std])


Loader = Callable[[Path | None, bool], Dataset]
_REGISTRY: dict[str, tuple[Loader, str]] = {}


def register_dataset(name: str, description: str) -> Callable[[Loader], Loader]:
    def wrap(fn: Loader) -> Loader:
        _REGISTRY[name] = (fn, description)
        return fn
    return wrap


def list_datasets() -> dict[str, str]:
    """Name -> one-line description (``imagefolder:PATH`` is listed as ``imagefolder``)."""
    return {name: desc for name, (_, desc) in _REGISTRY.items()}


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = False) -> Dataset:
    """Load a data set by name; a missing one raises BadInputError naming the folder and ``--download``."""
    from toolkit.data import sources  # noqa: F401  (registers the loaders)

    key, _, arg = name.partition(":")
    key = key.lower()
    if key == "imagefolder":
        if not arg:
            raise BadInputError("imagefolder needs a path: --dataset imagefolder:PATH")
        return sources.load_image_folder(Path(arg))
    if key not in _REGISTRY:
        raise BadInputError(f"unknown data set '{name}'; choose one of: {', '.join(sorted(_REGISTRY))}, imagefolder:PATH")
    loader, _ = _REGISTRY[key]
    return loader(Path(data_dir) if data_dir else None, download)


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


__all__ = ["Dataset", "Split", "load_dataset", "list_datasets", "register_dataset", "stratified_split"]
