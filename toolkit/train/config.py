"""TrainConfig: every setting of a training run, with its default, help text and bounds written once.

``rtool train`` and ``python -m toolkit.train`` generate their flags from these fields
(toolkit.flags.click_options), and building a TrainConfig in code checks the same bounds. This module
imports neither torch nor the CLI, so the CLI can build its flags without paying for torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from toolkit.flags import check_settings, setting

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "step")
AMP_MODES = ("none", "bf16", "fp16")
INITS = ("kaiming", "xavier")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_LR = {"sgd": 0.05, "adamw": 3e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}
# Sanity bounds: far beyond any real run, low enough that no count overflows or asks for the impossible.
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 65_536
MAX_SEED = 2**32 - 1
# Settings that may differ when a run is resumed: they change where it runs, not what it computes.
RUNTIME_FIELDS = ("out", "device", "quiet", "resume", "overwrite")


def _per_optimizer(values: dict[str, float]) -> str:
    return ", ".join(f"{value:g} for {name}" for name, value in values.items())


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in the card and in last.pt)."""

    model: str = setting("resnet20", "Any name from `rtool models`.")
    dataset: str = setting(
        "mnist5k", "mnist5k (embedded), mnist, kmnist, fashionmnist, cifar10, svhn, stl10 or imagefolder:PATH."
    )
    data_dir: str | None = setting(None, "Folder of a downloaded data set (torchvision ones).")
    download: bool = setting(False, "Download the data set into --data-dir if it is missing.")
    out: str | None = setting(None, "Run folder (default: runs/MODEL-DATASET).")
    epochs: int = setting(12, "Passes over the training images.", low=1, high=MAX_EPOCHS)
    # Per process; benchmarks/train_recipes.py: more updates beat batch 128 on mnist5k.
    batch_size: int = setting(32, "Per process.", low=1, high=MAX_BATCH_SIZE)
    lr: float | None = setting(
        None, f"Peak learning rate (default: {_per_optimizer(DEFAULT_LR)}).", low=0, low_open=True
    )
    momentum: float = setting(0.9, "SGD momentum.", low=0, high=1)
    nesterov: bool = setting(
        True, "Nesterov momentum for SGD (--no-nesterov: the classic momentum of the ResNet paper)."
    )
    weight_decay: float | None = setting(None, f"Default: {_per_optimizer(DEFAULT_WEIGHT_DECAY)}.", low=0)
    label_smoothing: float = setting(
        0.0, "Share of each label spread over the other classes.", low=0, high=1, high_open=True
    )
    optimizer: str = setting("sgd", "Optimizer.", choices=OPTIMIZERS)
    schedule: str = setting(
        "onecycle", "Stepped per batch; step divides the lr by 10 at 50% and 75% of training.", choices=SCHEDULES
    )
    init: str = setting("kaiming", "Weight initialisation.", choices=INITS)
    shift: int = setting(
        2, "Random-shift augmentation in pixels (0: off; at most half the image's smaller side).", low=0
    )
    flip: bool = setting(False, "Random horizontal flip augmentation (natural images such as CIFAR-10; not digits).")
    seed: int = setting(0, "Seed of the weights, the sample order and the augmentation.", low=0, high=MAX_SEED)
    device: str = setting("auto", "Where to train (auto: cuda if usable, else cpu).", choices=DEVICES)
    amp: str = setting("none", "Mixed precision (fp16 needs cuda).", choices=AMP_MODES)
    channels_last: bool = setting(True, "NHWC memory layout (faster convolutions on CPU and tensor cores).")
    train_limit: int | None = setting(None, "Use at most this many training images.", low=1)
    test_limit: int | None = setting(None, "Use at most this many test images.", low=1)
    resume: bool = setting(False, "Continue the run in --out from its last.pt.")
    overwrite: bool = setting(False, "Replace the run in --out.")
    quiet: bool = setting(False, "No progress bar or per-epoch lines.")

    def __post_init__(self) -> None:
        check_settings(self)
        self.out = default_run_dir(self.model, self.dataset) if self.out is None else str(self.out)
        self.lr = DEFAULT_LR[self.optimizer] if self.lr is None else float(self.lr)
        if self.weight_decay is None:
            self.weight_decay = DEFAULT_WEIGHT_DECAY[self.optimizer]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def settings(self) -> dict[str, Any]:
        """What the card records under ``training``: the run-defining fields."""
        return {k: v for k, v in asdict(self).items() if k not in RUNTIME_FIELDS}


@dataclass
class LaunchConfig:
    """How many local processes train; not part of the run's settings (last.pt records its world size)."""

    nproc: int = setting(
        1, "Train with DistributedDataParallel on this many local processes (at most one per CPU core here).", low=1
    )


def default_run_dir(model: str, dataset: str) -> str:
    """runs/MODEL-DATASET (an image folder contributes its last path part)."""
    data_name = Path(dataset.partition(":")[2]).name if dataset.startswith("imagefolder:") else dataset
    return f"runs/{model}-{data_name or 'images'}"
