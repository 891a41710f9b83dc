"""What a run trains on: its splits, the model input its card records, and the weights it starts from.

* Splits: the data set's own val split (an image folder's val/ or validation/), else a fixed-seed,
  per-class share of train (``--val-fraction``); the test split only where the data set has one
  (it is evaluated once, at the end, on best.pt).
* Input (the card's InputSpec): ``--input-size``, else the starting checkpoint's, else a built-in
  data set's own size, else the model family's (32 for CIFAR nets, 224 for ImageNet nets). Images of
  another size are resized on their shorter side and centre-cropped (``resize: center_crop``).
  Mean/std: the starting checkpoint's (the weights were trained with them), ImageNet's for a
  torchvision state_dict on RGB input, else measured on the training images.
* Starting weights (``--weights``): an rtool checkpoint or a torchvision-style state_dict, loaded by
  ``toolkit.checkpoint.load_pretrained_weights`` (a fresh classifier for another class count).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit.card import InputSpec, ModelCard
from toolkit.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, safe_torch_load
from toolkit.data import Dataset, Split, stratified_split
from toolkit.data.dataset import STATS_CHUNK, channel_stats, check_fits_in_memory
from toolkit.errors import BadInputError
from toolkit.manifest import sha256_file
from toolkit.models import get_entry
from toolkit.train.config import TrainConfig

VAL_SEED = 0  # the carved validation split is the same for every --seed: runs stay comparable
STATS_IMAGES = 512  # an image folder's mean/std come from this many training images (a fixed sample)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # torchvision's weights expect these
MAX_WORKERS = 8


@dataclass
class Splits:
    train: Any  # Split or FileSplit
    val: Any
    test: Any | None  # None: the data set has no test split (a folder with val/ but no test/)
    val_source: str  # where the val split comes from, for the header and the card


@dataclass
class StartWeights:
    """The file ``--weights`` names, and its card when it is an rtool checkpoint (None for a plain state_dict)."""

    path: Path
    card: ModelCard | None

    def describe(self) -> dict[str, Any]:
        """What the card records about where the weights came from."""
        info: dict[str, Any] = {"file": self.path.name, "sha256": sha256_file(self.path)}
        if self.card is not None:
            info.update(model=self.card.model, dataset=self.card.dataset, classes=self.card.num_classes)
        return info


def read_start_weights(config: TrainConfig) -> StartWeights | None:
    """The starting weights of a fresh run (None without --weights, or when resuming: last.pt holds them)."""
    if not config.weights or config.resume:
        return None
    path = Path(config.weights)
    payload = safe_torch_load(path)
    is_checkpoint = isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT
    card = load_checkpoint(path).card if is_checkpoint else None
    if card is not None and card.model != config.model:
        raise BadInputError(
            f"--weights {path} holds a {card.model}, not a {config.model}; train it with --model {card.model}"
        )
    return StartWeights(path, card)


def limit_split(split: Any, limit: int | None) -> Any:
    """At most ``limit`` images, taken from each class in turn in file order (for quick runs)."""
    if limit is None or limit >= len(split):
        return split
    turn = torch.empty(len(split), dtype=torch.long)  # an image's place among its class's images
    for c in split.labels.unique():
        members = torch.nonzero(split.labels == c).flatten()
        turn[members] = torch.arange(len(members))
    return split.subset(torch.argsort(turn, stable=True)[:limit].sort().values.numpy())


def make_splits(data: Dataset, config: TrainConfig) -> Splits:
    """Train (limited by --train-limit), val (given or carved from train) and test (when the data set has one)."""
    train = limit_split(data.train, config.train_limit)
    if data.val is not None:
        val, source = data.val, "the data set's own val split"
    else:
        kept, held = stratified_split(train.labels.numpy(), test_fraction=config.val_fraction, seed=VAL_SEED)
        if len(held) == 0:
            raise BadInputError(
                f"{data.name}: {len(train)} training images are too few to hold out a validation split "
                f"(--val-fraction {config.val_fraction:g}); add images, raise --val-fraction or add a val/ folder"
            )
        train, val = train.subset(kept), train.subset(held)
        source = f"{config.val_fraction:.0%} of train, per class, fixed seed"
    test = limit_split(data.test, config.test_limit) if data.test_name == "test" else None
    return Splits(train, limit_split(val, config.test_limit), test, source)


def parse_input_size(text: str) -> tuple[int | None, int, int]:
    """'224' -> (None, 224, 224); '32x48' -> (None, 32, 48); '1x28x28' -> (1, 28, 28): (channels, height, width)."""
    dims = [int(d) for d in text.lower().split("x")]
    if len(dims) == 3 and dims[0] not in (1, 3):
        raise BadInputError(f"--input-size {text}: channels must be 1 (grey) or 3 (RGB), got {dims[0]}")
    channels = dims[0] if len(dims) == 3 else None
    height, width = (dims[-2], dims[-1]) if len(dims) > 1 else (dims[0], dims[0])
    return channels, height, width


def input_size(config: TrainConfig, data: Dataset, start: StartWeights | None) -> tuple[int, int, int, str]:
    """(channels, height, width, where the size came from)."""
    channels, height, width = parse_input_size(config.input_size) if config.input_size else (None, 0, 0)
    base = start.card.input if start and start.card else None
    channels = channels or (base.channels if base else data.channels)
    if config.input_size:
        return channels, height, width, "--input-size"
    if base:
        return channels, base.height, base.width, f"the card of {start.path.name}"
    if data.image_size:
        return channels, *data.image_size, f"{data.name}'s own"
    entry = get_entry(config.model)
    return channels, entry.default_input[1], entry.default_input[2], f"the {entry.family} default"


def resolve_shape(config: TrainConfig, data: Dataset, start: StartWeights | None) -> tuple[InputSpec, str]:
    """The card's input without its statistics (mean 0, std 1), and where its size came from."""
    channels, height, width, size_from = input_size(config, data, start)
    zeros, ones = [0.0] * channels, [1.0] * channels
    return InputSpec(channels, height, width, zeros, ones, "center_crop", max(height, width)), f"size from {size_from}"


def with_statistics(shape: InputSpec, data: Dataset, train: Any, start: StartWeights | None) -> tuple[InputSpec, str]:
    """``shape`` with the mean/std the model is trained with, and where they came from. ``train`` is already at
    the input size when held in memory (``in_memory_at``), so measuring it allocates nothing more."""
    base = start.card.input if start and start.card else None
    if base and base.channels == shape.channels:
        mean, std, stats_from = base.mean, base.std, f"the card of {start.path.name}"
    elif start and not start.card and shape.channels == 3:
        mean, std, stats_from = IMAGENET_MEAN, IMAGENET_STD, "ImageNet's (torchvision weights)"
    else:
        count = len(train) if data.in_memory else min(len(train), STATS_IMAGES)
        sample = np.sort(np.random.default_rng(0).permutation(len(train))[:count])
        chunks = (train.pixels(sample[i : i + STATS_CHUNK], shape) for i in range(0, count, STATS_CHUNK))
        mean, std = channel_stats(chunks, shape.channels)
        stats_from = f"{count} training images"
    return dataclasses.replace(shape, mean=mean, std=std), f"mean/std from {stats_from}"


def in_memory_at(split: Any, spec: InputSpec, what: str) -> Any:
    """An in-memory split at the input size (converted once; as it is when it already fits); files stay files."""
    if not isinstance(split, Split) or tuple(split.images.shape[1:]) == spec.shape:
        return split
    check_fits_in_memory(what, len(split), spec)
    return Split(torch.from_numpy(split.pixels(None, spec)), split.labels)


def worker_count(config: TrainConfig) -> int:
    """Reader processes for image folders: --workers, else one per CPU core (at most MAX_WORKERS)."""
    if config.workers is not None:
        return config.workers
    return min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
