"""One training run from start (or last.pt) to its last epoch: set up, restore, epochs, checkpoints, result.

Each epoch is scored on the val split, which chooses best.pt (and, with ``--patience``, when to stop);
the test split is scored once, at the end, on best.pt. Returns with ``interrupted=True`` (and last.pt
saved) when stopped by Ctrl-C/SIGTERM or ``should_stop``; a resumed run continues onto exactly the
path the uninterrupted run would have taken.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from toolkit.card import ModelCard
from toolkit.checkpoint import load_checkpoint, load_pretrained_weights, make_card, save_checkpoint
from toolkit.data import Dataset, load_dataset
from toolkit.data import augment as augmentation
from toolkit.errors import BadInputError
from toolkit.fileio import check_writable_dir
from toolkit.models import create_model
from toolkit.train.batching import check_shift, on_device
from toolkit.train.config import TrainConfig
from toolkit.train.distributed import Distributed, init_distributed
from toolkit.train.header import header_lines
from toolkit.train.inputs import (
    StartWeights,
    in_memory_at,
    make_splits,
    read_start_weights,
    resolve_shape,
    with_statistics,
    worker_count,
)
from toolkit.train.loop import (
    EpochStats,
    Progress,
    StopRequest,
    Trainer,
    build_optimizer,
    build_scheduler,
    evaluate,
    train_one_epoch,
)
from toolkit.train.rundir import RUN_FILES, check_resumable, check_run_dir, draw_curves, write_metrics


@dataclass
class TrainResult:
    run_dir: Path
    best_path: Path | None
    last_path: Path | None
    history: list[dict[str, Any]]
    best_acc: float  # on the val split
    best_epoch: int
    train_seconds: float
    test: dict[str, Any] | None = None  # best.pt on the test split, scored once at the end (None: not scored)
    stopped_early: bool = False
    interrupted: bool = False
    resume_command: str = ""
    rank: int = 0  # under DDP every process returns one; only rank 0's is reported

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


@dataclass
class Start:
    """Where a run begins: epoch and batch (0, 0 for a fresh run) and the sums of that epoch so far."""

    epoch: int = 0
    batch: int = 0
    stats: EpochStats = field(default_factory=EpochStats)


def run_training(config: TrainConfig, should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train as ``config`` says, writing best.pt, last.pt, metrics and curves into ``config.out``.

    Returns with ``interrupted=True`` (and last.pt saved) when stopped by
    Ctrl-C/SIGTERM or ``should_stop``; raises TrainingDiverged on a non-finite loss.
    """
    run_dir = check_run_dir(config)
    dist_info = init_distributed(config)
    try:
        result = _train(config, run_dir, dist_info, should_stop)
        if dist_info.active:  # rank 0 still writes after the last collective: tear gloo down together, or a
            dist.barrier()  # rank that leaves first can abort in gloo's threads ("terminate called ...")
        return result
    finally:
        if dist_info.active:
            dist.destroy_process_group()


def _train(
    config: TrainConfig, run_dir: Path, dist_info: Distributed, should_stop: Callable[[], bool] | None
) -> TrainResult:
    prepare_run_dir(config, run_dir, dist_info)
    progress = Progress(enabled=dist_info.is_main and not config.quiet)
    trainer = build_trainer(config, run_dir, dist_info)
    for line in header_lines(trainer):
        progress.line(line)
    start = Start()
    if config.resume:
        start = restore(trainer)
        if start.epoch >= config.epochs or trainer.stopped_early:
            progress.line(f"{run_dir} already finished (epoch {start.epoch}); nothing to resume")
            if dist_info.is_main:  # a run stopped right after its last checkpoint still needs these
                write_metrics(run_dir, trainer.history)
                draw_curves(run_dir, trainer.history, config)
            return result_of(trainer)
        progress.line(f"resuming {run_dir} at epoch {start.epoch + 1}, batch {start.batch + 1}")
    if dist_info.active:
        device = dist_info.device
        trainer.net = nn.parallel.DistributedDataParallel(
            trainer.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    interrupted = train_epochs(trainer, start, progress, should_stop)
    if dist_info.is_main:
        draw_curves(run_dir, trainer.history, config)
    test = None if interrupted else final_test(trainer, progress)
    return result_of(trainer, interrupted, test)


def prepare_run_dir(config: TrainConfig, run_dir: Path, dist_info: Distributed) -> None:
    """Refuse what cannot work before any file is written; --overwrite clears the old run's files."""
    if config.amp == "fp16" and dist_info.device.type != "cuda":
        raise BadInputError("--amp fp16 needs --device cuda; on the CPU use --amp bf16 or none")
    if dist_info.is_main:
        check_writable_dir(run_dir)  # created by the first file written: a run that fails first leaves nothing
        if config.overwrite:
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
    if dist_info.active:
        dist.barrier()


def build_trainer(config: TrainConfig, run_dir: Path, dist_info: Distributed) -> Trainer:
    """The splits (in memory on the device, or files), the model seeded from ``config.seed`` and started from
    ``--weights``, its optimizer and schedule."""
    device = dist_info.device
    data = load_dataset(config.dataset, config.data_dir, config.download)
    check_augment(config, data)
    start = read_start_weights(config)
    splits = make_splits(data, config)
    if config.resume:  # the input the run started with (its mean/std may have come from --weights)
        last = load_checkpoint(run_dir / "last.pt").card
        spec, spec_note = last.input, last.training.get("input", "from last.pt")
    else:
        spec, spec_note = resolve_shape(config, data, start)
    if data.in_memory:
        check_shift(config.shift, spec)
    train_split, val_split, test_split = (
        None if split is None else in_memory_at(split, spec, f"{data.name} {name}")
        for name, split in (("train", splits.train), ("val", splits.val), ("test", splits.test))
    )
    if not config.resume:
        spec, stats_note = with_statistics(spec, data, train_split, start)
        spec_note = f"{spec_note}; {stats_note}"
    train_split, val_split, test_split = (on_device(s, device) for s in (train_split, val_split, test_split))
    model, card_training = starting_model(config, spec, len(data.class_names), start)
    if config.resume and "start_weights" in last.training:
        card_training["start_weights"] = last.training["start_weights"]
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = math.ceil(math.ceil(len(train_split) / dist_info.world_size) / config.batch_size)
    optimizer = build_optimizer(model, config)
    preset = (config.augment or "light") if not data.in_memory else None
    card_training.update(val_split=splits.val_source, input=spec_note)
    if preset:
        card_training.update(augment=preset, augmentation=augmentation.describe(preset, spec, config.flip is not False))
    return Trainer(
        config=config,
        run_dir=run_dir,
        dist_info=dist_info,
        spec=spec,
        class_names=data.class_names,
        train_split=train_split,
        val_split=val_split,
        test_split=test_split,
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config, steps_per_epoch * config.epochs),
        scaler=torch.amp.GradScaler(device.type, enabled=config.amp == "fp16"),
        loss_fn=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
        steps_per_epoch=steps_per_epoch,
        augment=augmentation.build(preset, spec, config.flip is not False) if preset else None,
        workers=worker_count(config) if not data.in_memory else 0,
        frozen=config.freeze_backbone,
        card_training=card_training,
    )


def check_augment(config: TrainConfig, data: Dataset) -> None:
    """--augment is for image folders; the in-memory data sets augment with --shift."""
    if config.augment and data.in_memory:
        raise BadInputError(
            f"--augment applies to image folders (imagefolder:PATH); {data.name} is augmented with --shift"
        )


def starting_model(
    config: TrainConfig, spec: Any, num_classes: int, start: StartWeights | None
) -> tuple[nn.Module, dict[str, Any]]:
    """The model seeded from ``config.seed``, its weights from ``--weights`` (a fresh fc for another class
    count), its backbone frozen with ``--freeze-backbone``; and what the card records about that."""
    torch.manual_seed(config.seed)
    model = create_model(config.model, in_channels=spec.channels, num_classes=num_classes, init=config.init)
    recorded = {}
    if start is not None:  # None on --resume too: last.pt holds the weights
        replaced = load_pretrained_weights(model, start.path)
        recorded["start_weights"] = {**start.describe(), "replaced": replaced}
    if config.freeze_backbone:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith("fc."))
    return model, recorded


def restore(trainer: Trainer) -> Start:
    """Load last.pt into ``trainer`` (weights, optimizer, schedule, random state, history); where to go on."""
    run_dir, dist_info = trainer.run_dir, trainer.dist_info
    last = load_checkpoint(run_dir / "last.pt")
    state = last.train_state
    if state.get("world_size", 1) != dist_info.world_size:
        raise BadInputError(
            f"{run_dir} was trained with {state.get('world_size', 1)} process(es); resume it with the same number"
        )
    check_resumable(run_dir, last, trainer.config)
    trainer.model.load_state_dict(last.state_dict)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    if trainer.scaler.is_enabled() and state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.history = list(state["history"])
    trainer.best_acc, trainer.best_epoch = float(state["best_acc"]), int(state["best_epoch"])
    trainer.stopped_early = bool(state.get("stopped_early", False))
    torch.set_rng_state(state["rng"]["torch"])
    if dist_info.device.type == "cuda" and state["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return Start(int(state["epoch"]), int(state["batch"]), EpochStats.from_state(state["partial"], dist_info))


def train_epochs(trainer: Trainer, start: Start, progress: Progress, should_stop: Callable[[], bool] | None) -> bool:
    """Train from ``start`` to the last epoch; True when stopped early (last.pt then says where)."""
    config = trainer.config
    stats = start.stats
    with StopRequest(should_stop) as stop:
        for epoch in range(start.epoch, config.epochs):
            first = start.batch if epoch == start.epoch else 0
            if first == 0:
                stats = EpochStats()
            started = time.perf_counter() - stats.seconds
            trainer.train_mode()
            with progress.epoch(f"epoch {epoch + 1}/{config.epochs}", trainer.steps_per_epoch, first) as advance:
                stopped_at = train_one_epoch(trainer, epoch, first, stats, stop, advance)
                if stopped_at is not None:
                    stats.seconds = time.perf_counter() - started
                    save_last(trainer, epoch, stopped_at, stats)
                    return True
            finish_epoch(trainer, epoch, stats, started, progress)
            if trainer.stopped_early:
                break
    return False


def finish_epoch(trainer: Trainer, epoch: int, stats: EpochStats, started: float, progress: Progress) -> None:
    """End of an epoch: score the val split, record the row, save best.pt (when better) and last.pt, rewrite the
    metrics; with --patience, note when it ran out."""
    config, dist_info = trainer.config, trainer.dist_info
    train_seconds = time.perf_counter() - started
    epoch_sums = stats.summed(dist_info)
    val_loss, val_acc = evaluate(trainer.model, trainer.val_split, trainer.spec, dist_info, config, trainer.workers)
    seconds = time.perf_counter() - started
    row = {
        "epoch": epoch + 1,
        "train_loss": round(epoch_sums.loss_sum / epoch_sums.seen, 6),
        "train_acc": round(epoch_sums.correct / epoch_sums.seen, 6),
        "val_loss": round(val_loss, 6),
        "val_acc": round(val_acc, 6),
        "lr": trainer.optimizer.param_groups[0]["lr"],
        "images_per_s": round(epoch_sums.seen / train_seconds, 1),
        "train_seconds": round(train_seconds, 3),
        "seconds": round(seconds, 3),
    }
    trainer.history.append(row)
    if val_acc > trainer.best_acc:
        trainer.best_acc, trainer.best_epoch = val_acc, epoch + 1
        if dist_info.is_main:
            save_checkpoint(
                trainer.run_dir / "best.pt", trainer.model, card_of(trainer, {**row, "best_acc": trainer.best_acc})
            )
    trainer.stopped_early = bool(config.patience) and epoch + 1 - trainer.best_epoch >= config.patience
    save_last(trainer, epoch + 1, 0, stats)
    if dist_info.is_main:
        write_metrics(trainer.run_dir, trainer.history)
    progress.line(
        f"epoch {epoch + 1:>3}/{config.epochs}  train loss {row['train_loss']:.4f} "
        f"acc {100 * row['train_acc']:.2f}%  val loss {val_loss:.4f} acc {100 * val_acc:.2f}%  "
        f"{row['images_per_s']:.0f} img/s  {seconds:.1f}s"
    )
    if trainer.stopped_early:
        progress.line(
            f"early stop: no better val accuracy for {config.patience} epochs "
            f"(best {100 * trainer.best_acc:.2f}% at epoch {trainer.best_epoch})"
        )


def final_test(trainer: Trainer, progress: Progress) -> dict[str, Any] | None:
    """Score best.pt once on the test split, record it in best.pt's card and say it (None: no test split)."""
    dist_info, best = trainer.dist_info, trainer.run_dir / "best.pt"
    if trainer.test_split is None:
        progress.line("no test split (the data set has val/ but no test/): nothing held out to report")
        return None
    if dist_info.active:
        dist.barrier()  # rank 0 wrote best.pt
    if not best.is_file():
        return None
    saved = load_checkpoint(best)
    model = create_model(trainer.config.model, **saved.card.model_args)
    model.load_state_dict(saved.state_dict)
    model = model.to(dist_info.device)
    if trainer.config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss, acc = evaluate(model, trainer.test_split, trainer.spec, dist_info, trainer.config, trainer.workers)
    test = {"test_loss": round(loss, 6), "test_acc": round(acc, 6), "test_images": len(trainer.test_split)}
    if dist_info.is_main:
        save_checkpoint(best, model, dataclasses.replace(saved.card, metrics={**saved.card.metrics, **test}))
    progress.line(
        f"test: accuracy {100 * acc:.2f}%, loss {loss:.4f} on {len(trainer.test_split)} images "
        f"(best.pt, epoch {trainer.best_epoch}, scored once)"
    )
    return test


def card_of(trainer: Trainer, metrics: dict[str, Any]) -> ModelCard:
    """The card of this run with its latest metrics."""
    config = trainer.config
    return make_card(
        config.model,
        class_names=trainer.class_names,
        input_spec=trainer.spec,
        dataset=config.dataset,
        training={**config.settings(), **trainer.card_training, "world_size": trainer.dist_info.world_size},
        metrics=metrics,
    )


def save_last(trainer: Trainer, epoch: int, batch: int, stats: EpochStats) -> None:
    """last.pt: everything needed to continue at ``(epoch, batch)``. Every rank calls it (the sums are reduced)."""
    dist_info = trainer.dist_info
    rng = {"torch": torch.get_rng_state()}
    if dist_info.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state_all()
    unfinished = stats.summed(dist_info).to_state() if batch else EpochStats().to_state()
    state = {
        "epoch": epoch,
        "batch": batch,
        "partial": unfinished,
        "history": trainer.history,
        "best_acc": trainer.best_acc,
        "best_epoch": trainer.best_epoch,
        "stopped_early": trainer.stopped_early,
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler.is_enabled() else {},
        "rng": rng,
        "config": trainer.config.to_dict(),
        "world_size": dist_info.world_size,
    }
    if dist_info.is_main:
        save_checkpoint(
            trainer.run_dir / "last.pt",
            trainer.model,
            card_of(trainer, trainer.history[-1] if trainer.history else {}),
            state,
        )


def result_of(trainer: Trainer, interrupted: bool = False, test: dict[str, Any] | None = None) -> TrainResult:
    run_dir, history = trainer.run_dir, trainer.history
    best, last = run_dir / "best.pt", run_dir / "last.pt"
    return TrainResult(
        run_dir=run_dir,
        best_path=best if best.is_file() else None,
        last_path=last if last.is_file() else None,
        history=history,
        best_acc=trainer.best_acc,
        best_epoch=trainer.best_epoch,
        train_seconds=sum(r["seconds"] for r in history),
        test=test,
        stopped_early=trainer.stopped_early,
        interrupted=interrupted,
        rank=trainer.dist_info.rank,
        resume_command=f"rtool train --out {run_dir} --resume" if interrupted else "",
    )
