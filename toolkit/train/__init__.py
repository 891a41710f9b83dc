"""Train a classifier on an in-memory data set: one linear loop, single process or DDP.

Split the way torchvision's classification reference is: ``config`` (TrainConfig: defaults, help and
bounds written once; the command-line flags are generated from it), ``distributed`` (rank, device,
process group, ``--nproc`` workers), ``batching`` (epoch order, shift, normalise), ``loop``
(``train_one_epoch``, ``evaluate``, ``EpochStats``), ``rundir`` (metrics, resume settings, curves),
``run`` (one run from start or last.pt to its end) and ``command`` (what ``rtool train`` calls).

Every random choice is derived from ``(seed, epoch, batch, rank)``, so a run stopped mid-epoch (Ctrl-C,
SIGTERM, ``should_stop``) resumes from ``last.pt`` onto exactly the path the uninterrupted run would
have taken.

    python -m toolkit.train --epochs 12 --out runs/r20
    torchrun --nproc-per-node 2 -m toolkit.train --out runs/r20-ddp

The names below are loaded on first use, so ``toolkit.train.config`` (which the CLI needs to build its
flags) can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "config": (
        "TrainConfig",
        "LaunchConfig",
        "default_run_dir",
        "OPTIMIZERS",
        "SCHEDULES",
        "AMP_MODES",
        "DEFAULT_LR",
        "DEFAULT_WEIGHT_DECAY",
        "RUNTIME_FIELDS",
    ),
    "distributed": ("Distributed", "resolve_device", "init_distributed", "launch_processes"),
    "batching": (
        "limit_split",
        "epoch_order",
        "batch_generator",
        "random_shift",
        "random_flip",
        "normalize",
        "model_input",
    ),
    "loop": (
        "EpochStats",
        "Trainer",
        "TrainingDiverged",
        "build_optimizer",
        "build_scheduler",
        "train_one_epoch",
        "evaluate",
    ),
    "rundir": ("RUN_FILES", "check_run_dir", "resume_config", "write_metrics", "read_metrics", "compare_runs"),
    "run": ("TrainResult", "run_training"),
    "command": ("train_command", "summarize"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return __all__
