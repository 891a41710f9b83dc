"""The training loop: one epoch of steps (``train_one_epoch``), evaluation, and what they need around them.

A ``Trainer`` holds what a run trains with (model, optimizer, schedule, data); an ``EpochStats`` holds
the running sums of the epoch under way, which last.pt saves so a run stopped mid-epoch reports the
whole epoch when resumed. Every rank stops at the same batch: the stop request and a non-finite loss
are OR-ed over the ranks at each step.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from toolkit.card import InputSpec
from toolkit.console import make_console
from toolkit.data import Split
from toolkit.errors import CheckFailedError
from toolkit.train.batching import epoch_order, model_input, training_batch
from toolkit.train.config import TrainConfig
from toolkit.train.distributed import Distributed, any_rank, sum_over_ranks
from toolkit.train.rundir import kept_checkpoints


class TrainingDiverged(CheckFailedError):
    """The loss became NaN or infinite; nothing after the last good epoch was saved."""


@dataclass
class EpochStats:
    """Running sums of one training epoch (this rank's share until ``summed``) and the seconds it has taken.

    last.pt saves them as ``[loss_sum, correct, seen, seconds]``.
    """

    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    seconds: float = 0.0

    def add(self, loss_sum: float, correct: float, seen: int) -> None:
        self.loss_sum += loss_sum
        self.correct += correct
        self.seen += seen

    def summed(self, dist_info: Distributed) -> EpochStats:
        """The sums over all ranks (a collective: every rank calls it)."""
        return EpochStats(*sum_over_ranks([self.loss_sum, self.correct, self.seen], dist_info), self.seconds)

    def to_state(self) -> list[float]:
        return [float(v) for v in astuple(self)]

    @classmethod
    def from_state(cls, values: list[float], dist_info: Distributed) -> EpochStats:
        """Saved sums were reduced over the ranks: rank 0 carries them on, the others start from zero."""
        stats = cls(*(float(v) for v in values))
        return stats if dist_info.is_main else cls(seconds=stats.seconds)

    def text(self) -> str:
        return f"loss {self.loss_sum / self.seen:.4f}  acc {100 * self.correct / self.seen:.2f}%"


@dataclass
class Trainer:
    """What a run trains with: set up (and restored from last.pt) by toolkit.train.run."""

    config: TrainConfig
    run_dir: Path
    dist_info: Distributed
    spec: InputSpec
    class_names: list[str]
    train_split: Split
    test_split: Split
    model: nn.Module  # the plain model (saved, evaluated)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    steps_per_epoch: int
    net: nn.Module | None = None  # what the steps run: the model, or its DistributedDataParallel wrapper
    history: list[dict[str, Any]] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = 0

    def __post_init__(self) -> None:
        self.net = self.net or self.model

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """One optimisation step on a batch; (loss, number of correct predictions) before it."""
        with autocast(self.dist_info.device, self.config.amp):
            logits = self.net(x)
            loss = self.loss_fn(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.detach()), float((logits.argmax(1) == y).sum())


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0,  # torch refuses Nesterov without momentum
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per batch. onecycle: warm up 25% then anneal; cosine: decay to 0; step: /10 at 50% and 75%."""
    if config.schedule == "onecycle":
        if total_steps < 2:  # no room for a cycle: one step at the peak rate
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        # OneCycleLR needs more than one step in its warm-up phase (tiny runs have few steps).
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=total_steps,
            pct_start=max(0.25, 1.5 / total_steps),
            cycle_momentum=config.optimizer == "sgd",
        )
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[total_steps // 2, total_steps * 3 // 4], gamma=0.1
    )


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def train_one_epoch(
    trainer: Trainer,
    epoch: int,
    first: int,
    stats: EpochStats,
    stop: Callable[[], bool],
    advance: Callable[[int, str], None],
) -> int | None:
    """Train on this rank's batches of ``epoch`` from batch ``first``, adding to ``stats``.

    Returns None when the epoch is done, or the next batch when a stop was requested (every rank stops
    at the same one); raises TrainingDiverged on a non-finite loss.
    """
    config, dist_info = trainer.config, trainer.dist_info
    order = epoch_order(len(trainer.train_split), epoch, config.seed, dist_info)
    for batch in range(first, trainer.steps_per_epoch):
        idx = order[batch * config.batch_size : (batch + 1) * config.batch_size].to(dist_info.device)
        x, y = training_batch(trainer.train_split, idx, trainer.spec, config, epoch, batch, dist_info.rank)
        loss_value, correct = trainer.step(x, y)
        nonfinite, stop_now = any_rank(torch.tensor([not math.isfinite(loss_value), stop()]), dist_info)
        if nonfinite:
            raise TrainingDiverged(
                f"training diverged: the loss became {loss_value} at epoch {epoch + 1}, batch {batch + 1} "
                f"(lr {config.lr:g}); lower --lr or raise --batch-size. Kept: {kept_checkpoints(trainer.run_dir)}"
            )
        stats.add(loss_value * len(idx), correct, len(idx))
        advance(1, stats.text())
        if stop_now:
            return batch + 1
    return None


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, spec: InputSpec, dist_info: Distributed, config: TrainConfig, batch_size: int = 500
) -> tuple[float, float]:
    """(mean loss, accuracy) on ``split``; under DDP each rank takes a shard and the sums are reduced."""
    model.eval()
    indices = torch.arange(dist_info.rank, len(split), dist_info.world_size)
    sums = torch.zeros(3, dtype=torch.float64, device=dist_info.device)  # loss sum, correct, count
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        x = model_input(split.images[idx].to(dist_info.device, non_blocking=True), spec, config.channels_last)
        y = split.labels[idx].to(dist_info.device, non_blocking=True)
        with autocast(dist_info.device, config.amp):
            logits = model(x)
        sums[0] += F.cross_entropy(logits.float(), y, reduction="sum")
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += len(idx)
    if dist_info.active:
        dist.all_reduce(sums)
    model.train()
    loss_sum, correct, count = sums.tolist()
    return loss_sum / max(count, 1), correct / max(count, 1)


class StopRequest:
    """Set by SIGINT/SIGTERM (or a caller's ``should_stop``); the loop stops at the next batch boundary.

    A second signal interrupts at once.
    """

    def __init__(self, should_stop: Callable[[], bool] | None) -> None:
        self.should_stop = should_stop
        self.requested = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __call__(self) -> bool:
        if self.should_stop is not None and self.should_stop():
            self.requested = True
        return self.requested

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Progress:
    """A rich progress bar per epoch and one line after it; silent when quiet or not rank 0."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.console = make_console(highlight=False)

    @contextlib.contextmanager
    def epoch(self, title: str, total: int, done: int) -> Iterator[Callable[[int, str], None]]:
        if not self.enabled or not self.console.is_terminal:  # a log file gets the epoch lines only
            yield lambda advance, text: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        with RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            task = bar.add_task(title, total=total, completed=done, stats="")
            yield lambda advance, text: bar.update(task, advance=advance, stats=text)

    def line(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)
