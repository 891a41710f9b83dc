"""Batches from an in-memory split: epoch order, random shift and flip, normalisation, on whole tensors.

The data set lives in memory as uint8 tensors, so a batch is made with tensor ops on the whole batch
(index, random shift, normalise) instead of per-image PIL transforms in DataLoader workers; on two CPU
cores that is most of the speed. Normalisation is ``toolkit.preprocess.normalize`` with the card's
InputSpec, done in torch with the same float32 operations.

Every random choice is derived from ``(seed, epoch, batch, rank)``, so a run stopped mid-epoch resumes
onto exactly the path the uninterrupted run would have taken.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from toolkit.card import InputSpec
from toolkit.data import Split
from toolkit.errors import BadInputError
from toolkit.train.config import TrainConfig
from toolkit.train.distributed import Distributed

SEED_SPACE = 2**64  # torch.Generator.manual_seed takes seeds below this


def limit_split(split: Split, limit: int | None) -> Split:
    """At most ``limit`` images, taken from each class in turn in file order (for quick runs)."""
    if limit is None or limit >= len(split):
        return split
    turn = torch.empty(len(split), dtype=torch.long)  # an image's place among its class's images
    for c in split.labels.unique():
        members = torch.nonzero(split.labels == c).flatten()
        turn[members] = torch.arange(len(members))
    keep = torch.argsort(turn, stable=True)[:limit].sort().values
    return Split(split.images[keep], split.labels[keep])


def on_device(split: Split, device: torch.device) -> Split:
    return Split(split.images.to(device), split.labels.to(device))


def epoch_order(n: int, epoch: int, seed: int, dist_info: Distributed) -> torch.Tensor:
    """This rank's sample order for ``epoch``, the way DistributedSampler shards it.

    All ranks draw the same permutation, pad it to a multiple of the world size
    and take every ``world_size``-th index from their rank on.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g)
    if dist_info.active:
        total = math.ceil(n / dist_info.world_size) * dist_info.world_size
        order = torch.cat([order, order[: total - n]])[dist_info.rank :: dist_info.world_size]
    return order


def batch_generator(seed: int, epoch: int, batch: int, rank: int) -> torch.Generator:
    """The random source of one batch's augmentation: a pure function of where the batch is in the run.

    Taken modulo 2**64, which changes nothing below it (every seed that fitted before keeps its batches)
    and lets every seed up to MAX_SEED in.
    """
    return torch.Generator().manual_seed((((seed * 1_000_003 + epoch) * 1_000_003 + batch) * 1_009 + rank) % SEED_SPACE)


def check_shift(shift: int, spec: InputSpec) -> None:
    """Refuse a shift that would move whole images out of view (and ask for padding larger than memory)."""
    most = min(spec.height, spec.width) // 2
    if shift > most:
        raise BadInputError(
            f"--shift {shift} is more than half the smaller side of the {spec.height}x{spec.width} "
            f"images; use --shift {most} or less"
        )


def random_shift(pixels: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``shift`` pixels (zero padding + random crop), for a whole batch at once.

    One ``gather`` over the flattened padded images: several times faster than
    per-image slicing or four-way advanced indexing.
    """
    if shift == 0:
        return pixels
    b, c, h, w = pixels.shape
    padded = F.pad(pixels, (shift, shift, shift, shift)).flatten(2)
    dy = torch.randint(0, 2 * shift + 1, (b, 1, 1), generator=generator).to(pixels.device)
    dx = torch.randint(0, 2 * shift + 1, (b, 1, 1), generator=generator).to(pixels.device)
    rows = dy + torch.arange(h, device=pixels.device).view(1, h, 1)
    cols = dx + torch.arange(w, device=pixels.device).view(1, 1, w)
    flat = (rows * (w + 2 * shift) + cols).view(b, 1, h * w).expand(b, c, h * w)
    return padded.gather(2, flat).view(b, c, h, w)


def random_flip(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2, for a whole batch at once."""
    flips = (torch.rand(pixels.shape[0], generator=generator) < 0.5).to(pixels.device).view(-1, 1, 1, 1)
    return torch.where(flips, pixels.flip(-1), pixels)


def normalize(pixels: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 NCHW -> float32 ``(p / 255 - mean) / std``: the same float32 ops as toolkit.preprocess.normalize."""
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    return (pixels.to(torch.float32) / 255.0 - mean) / std


def model_input(pixels: torch.Tensor, spec: InputSpec, channels_last: bool) -> torch.Tensor:
    x = normalize(pixels, spec)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def training_batch(
    split: Split, idx: torch.Tensor, spec: InputSpec, config: TrainConfig, epoch: int, batch: int, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model input and labels of one training batch: shifted (and flipped) as (seed, epoch, batch, rank) decides.

    The flips are drawn after the shifts, so a run without --flip draws exactly what it drew before.
    """
    draws = batch_generator(config.seed, epoch, batch, rank)
    pixels = random_shift(split.images[idx], config.shift, draws)
    if config.flip:
        pixels = random_flip(pixels, draws)
    return model_input(pixels, spec, config.channels_last), split.labels[idx]
