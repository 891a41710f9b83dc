"""Batches from image files: read and augmented in DataLoader worker processes, never all held in memory.

The in-memory data sets batch with whole-tensor ops (``toolkit.train.batching``); an image folder is a
list of files (``toolkit.data.FileSplit``), read a batch at a time by ``--workers`` processes. Each
image's random augmentation is seeded from ``(seed, epoch, image)``, so a batch holds the same pixels
whatever the number of workers, and a run stopped mid-epoch resumes onto the same path.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from toolkit.card import InputSpec
from toolkit.data import FileSplit
from toolkit.train.batching import SEED_SPACE

Augment = Callable[[Image.Image], Image.Image]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The random source of one image's augmentation in one epoch."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + index) % SEED_SPACE


class ImageReader(TorchDataset):
    """One image per key ``(index, seed)``: read, converted to the card's colour mode and ``augment``-ed (seeded),
    or, without ``augment``, brought to the input exactly as the card's preprocessing does."""

    def __init__(self, split: FileSplit, spec: InputSpec, augment: Augment | None) -> None:
        self.split, self.spec, self.augment = split, spec, augment

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        if self.augment is None:
            pixels = self.split.pixels([index], self.spec)[0]
        else:
            with torch.random.fork_rng(devices=[]):  # torchvision draws from the global CPU generator
                torch.default_generator.manual_seed(seed)  # not torch.manual_seed: it queues a CUDA call per image
                pixels = self.split.read(index, self.spec.color, self.augment)
        return torch.from_numpy(pixels), self.split.labels[index]


def file_batches(
    split: FileSplit,
    spec: InputSpec,
    batches: list[list[tuple[int, int]]],
    augment: Augment | None,
    workers: int,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 (B, C, H, W) images and their labels, one batch per list of ``(index, seed)`` keys, in order."""
    return iter(
        DataLoader(
            ImageReader(split, spec, augment),
            batch_sampler=batches,
            num_workers=workers,
            pin_memory=pin_memory,
        )
    )


def epoch_keys(order: torch.Tensor, seed: int, epoch: int, batch_size: int, first: int) -> list[list[tuple[int, int]]]:
    """The keys of this epoch's batches from batch ``first`` on: each image with its augmentation seed."""
    keys = [(int(i), sample_seed(seed, epoch, int(i))) for i in order[first * batch_size :]]
    return [keys[k : k + batch_size] for k in range(0, len(keys), batch_size)]
