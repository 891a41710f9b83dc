"""Data sets by name: built-in ones held in memory as uint8 (N, C, H, W) tensors, image folders as files.

``mnist5k`` is embedded (a real MNIST subset shipped by a pinned package) and
works offline. ``mnist``, ``kmnist``, ``fashionmnist``, ``cifar10``, ``svhn`` and
``stl10`` come through torchvision with ``data_dir``/``download``;
``imagefolder:PATH`` reads a user's own images lazily (``FileSplit``).

Pixels stay uint8 until the last moment: conversion to the ModelCard's input
(see ``toolkit.preprocess``) happens per batch, the same way for every runtime.

Imports go one way: ``dataset`` (the types and the registry) <- ``sources`` and
``imagefolder`` (the loaders) <- this package, which looks them up by name.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.data import sources  # noqa: F401  (registers the named loaders)
from toolkit.data.dataset import REGISTRY, Dataset, Split, register_dataset, stratified_split
from toolkit.data.imagefolder import FileSplit, load_image_folder
from toolkit.errors import BadInputError


def list_datasets() -> dict[str, str]:
    """Name -> one-line description (``imagefolder:PATH`` is not listed: it is a path, not a name)."""
    return {name: desc for name, (_, desc) in REGISTRY.items()}


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = False) -> Dataset:
    """Load a data set by name; a missing one raises BadInputError naming the folder and ``--download``."""
    key, _, arg = name.partition(":")
    key = key.lower()
    if key == "imagefolder":
        if not arg:
            raise BadInputError("imagefolder needs a path: --dataset imagefolder:PATH")
        return load_image_folder(Path(arg))
    if key not in REGISTRY:
        raise BadInputError(
            f"unknown data set '{name}'; choose one of: {', '.join(sorted(REGISTRY))}, imagefolder:PATH"
        )
    loader, _ = REGISTRY[key]
    return loader(Path(data_dir) if data_dir else None, download)


__all__ = ["Dataset", "FileSplit", "Split", "load_dataset", "list_datasets", "register_dataset", "stratified_split"]
