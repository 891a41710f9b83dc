"""The degradation study's settings and the one training recipe every net of a study shares.

Imports neither torch nor the CLI, so the CLI builds ``rtool study degradation``'s flags from
``DegradationConfig`` without paying for torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import BadInputError
from toolkit.flags import check_settings, setting
from toolkit.train.config import DEVICES, MAX_EPOCHS, MAX_SEED, TrainConfig

# He et al. 2016, section 4.2 (CIFAR-10): SGD, batch 128, lr 0.1 divided by 10 at 32k and 48k of 64k
# iterations (50% and 75%), weight decay 1e-4, momentum 0.9 (Caffe's classic momentum, not Nesterov),
# He initialisation, BatchNorm, no dropout.
PAPER_RECIPE: dict[str, Any] = {
    "optimizer": "sgd",
    "batch_size": 128,
    "lr": 0.1,
    "schedule": "step",
    "weight_decay": 1e-4,
    "momentum": 0.9,
    "nesterov": False,
    "init": "kaiming",
    "label_smoothing": 0.0,
    "amp": "none",
}
# 64k iterations of batch 128 over CIFAR-10's 50k training images: about 164 epochs.
PAPER_EPOCHS = 164
DEFAULT_EPOCHS = 12  # any other data set: rtool train's default length
# The paper's augmentation (4-pixel zero padding + random 32x32 crop + horizontal flip) is for CIFAR-10's
# natural images; digits are not mirrored (a flipped 2 or 7 is no digit), so other data sets keep rtool
# train's default shift of 2 pixels and no flip.
AUGMENTATION: dict[str, dict[str, Any]] = {"cifar10": {"shift": 4, "flip": True}}
DEFAULT_AUGMENTATION: dict[str, Any] = {"shift": 2, "flip": False}
# Test error (%) of the paper's Table 6 (CIFAR-10, best of 5 runs for ResNet-110): what a cifar10 study compares to.
PAPER_TEST_ERROR = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97, "resnet110": 6.43}
KINDS = ("plain", "resnet")  # left panel, right panel
LIST_PATTERN = r"\s*\d+\s*(,\s*\d+\s*)*,?\s*"


@dataclass
class DegradationConfig:
    """``rtool study degradation``: plain and residual nets of each depth, one recipe, one set of seeds."""

    depths: str = setting(
        "20,56", "Comma list of depths; each trains plainD and resnetD (see `rtool models`).", pattern=LIST_PATTERN
    )
    dataset: str = setting("mnist5k", "mnist5k (embedded), cifar10 (the paper's setting), or any `rtool train` set.")
    data_dir: str | None = setting(None, "Folder of a downloaded data set (torchvision ones).")
    download: bool = setting(False, "Download the data set into --data-dir if it is missing.")
    epochs: int | None = setting(
        None,
        f"Epochs of every run (default: {PAPER_EPOCHS} on cifar10, the paper's 64k iterations; "
        f"{DEFAULT_EPOCHS} otherwise).",
        low=1,
        high=MAX_EPOCHS,
    )
    seeds: str = setting("0", "Comma list of seeds; every net trains once per seed.", pattern=LIST_PATTERN)
    out: str | None = setting(None, "Study folder (default: runs/degradation-DATASET).")
    train_limit: int | None = setting(None, "Use at most this many training images (quick trials).", low=1)
    test_limit: int | None = setting(None, "Use at most this many test images (quick trials).", low=1)
    device: str = setting("auto", "Where to train (auto: cuda if usable, else cpu).", choices=DEVICES)
    quiet: bool = setting(False, "No progress bars or per-epoch lines.")

    def __post_init__(self) -> None:
        check_settings(self)  # the same rules as the flags, for a config built in code

    def validate(self) -> None:
        if any(s > MAX_SEED for s in self.seed_list()):
            raise BadInputError(f"--seeds {self.seeds!r}: every seed must be at most {MAX_SEED}")
        if not self.depth_list():
            raise BadInputError("--depths: give at least one depth, e.g. --depths 20,56")

    def depth_list(self) -> list[int]:
        return _numbers(self.depths)

    def seed_list(self) -> list[int]:
        return _numbers(self.seeds)

    def study_dir(self) -> Path:
        return Path(self.out or f"runs/degradation-{re.sub(r'[^A-Za-z0-9_.-]+', '_', self.dataset)}")

    def epoch_count(self) -> int:
        if self.epochs is not None:
            return self.epochs
        return PAPER_EPOCHS if self.dataset.lower() == "cifar10" else DEFAULT_EPOCHS

    def recipe(self) -> dict[str, Any]:
        """The settings every run of the study shares: the paper's optimisation, the data set's augmentation."""
        augmentation = AUGMENTATION.get(self.dataset.lower(), DEFAULT_AUGMENTATION)
        return {**PAPER_RECIPE, **augmentation, "epochs": self.epoch_count()}

    def train_configs(self) -> list[TrainConfig]:
        """One run per (depth, seed, kind), shallow depths first, each in its own run folder under runs/."""
        shared = {
            **self.recipe(),
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "download": self.download,
            "train_limit": self.train_limit,
            "test_limit": self.test_limit,
            "device": self.device,
            "quiet": self.quiet,
        }
        runs = self.study_dir() / "runs"
        return [
            TrainConfig(model=f"{kind}{depth}", seed=seed, out=str(runs / f"{kind}{depth}-seed{seed}"), **shared)
            for depth in self.depth_list()
            for seed in self.seed_list()
            for kind in KINDS
        ]


def kind_and_depth(model: str) -> tuple[str, int]:
    """'plain56' -> ('plain', 56): the family and depth of a net the study trains."""
    match = re.fullmatch(rf"({'|'.join(KINDS)})(\d+)", model)
    if match is None:
        raise BadInputError(f"{model} is not one of the study's nets ({', '.join(f'{k}D' for k in KINDS)})")
    return match[1], int(match[2])


def _numbers(text: str) -> list[int]:
    """'20, 56,' -> [20, 56] (duplicates dropped, order kept)."""
    return list(dict.fromkeys(int(part) for part in text.split(",") if part.strip()))
