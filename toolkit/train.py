"""Train a classifier on an in-memory data set: one linear loop, single process or DDP.

The data set lives in memory as uint8 tensors, so a batch is made with tensor
ops on the whole batch (index, random shift, normalise) instead of per-image
PIL transforms in DataLoader workers; on two CPU cores that is most of the
speed. Normalisation is ``toolkit.preprocess.normalize`` with the card's
InputSpec, done in torch with the same float32 operations.

Every random choice is derived from ``(seed, epoch, batch, rank)``, so a run
stopped mid-epoch (Ctrl-C, SIGTERM, ``should_stop``) resumes from ``last.pt``
onto exactly the path the uninterrupted run would have taken.

    python -m toolkit.train --epochs 12 --out runs/r20
    torchrun --nproc-per-node 2 -m toolkit.train --out runs/r20-ddp
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from toolkit.card import InputSpec, ModelCard
from toolkit.checkpoint import load_checkpoint, make_card, save_checkpoint
from toolkit.console import make_console
from toolkit.data import Dataset, Split, load_dataset
from toolkit.errors import BadInputError, CheckFailedError, RtoolError, UnavailableError
from toolkit.fileio import atomic_write_text, check_writable_dir
from toolkit.models import create_model

RUN_FILES = ("best.pt", "last.pt", "metrics.csv", "metrics.jsonl", "curves.png")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "step")
AMP_MODES = ("none", "bf16", "fp16")
DEFAULT_LR = {"sgd": 0.05, "adamw": 3e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}
# Settings that may differ when a run is resumed: they change where it runs, not what it computes.
RUNTIME_FIELDS = ("out", "device", "quiet", "resume", "overwrite")


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in the card and in last.pt)."""

    model: str = "resnet20"
    dataset: str = "mnist5k"
    data_dir: str | None = None
    download: bool = False
    out: str = "runs/resnet20"
    epochs: int = 12
    batch_size: int = 32  # per process (benchmarks/train_recipes.py: more updates beat 128 on mnist5k)
    lr: float | None = None  # None: DEFAULT_LR of the optimizer (peak lr for onecycle)
    momentum: float = 0.9
    weight_decay: float | None = None  # None: DEFAULT_WEIGHT_DECAY of the optimizer
    label_smoothing: float = 0.0
    optimizer: str = "sgd"
    schedule: str = "onecycle"
    init: str = "kaiming"
    shift: int = 2  # random shift augmentation, in pixels (0: none)
    seed: int = 0
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = True
    train_limit: int | None = None
    test_limit: int | None = None
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        self.out = str(self.out)
        if self.optimizer not in OPTIMIZERS:
            raise BadInputError(f"unknown optimizer '{self.optimizer}'; choose one of: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise BadInputError(f"unknown schedule '{self.schedule}'; choose one of: {', '.join(SCHEDULES)}")
        if self.amp not in AMP_MODES:
            raise BadInputError(f"unknown --amp '{self.amp}'; choose one of: {', '.join(AMP_MODES)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise BadInputError("epochs and batch size must be at least 1")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise BadInputError(f"learning rate must be a positive number, got {self.lr}")
        if self.shift < 0 or not 0 <= self.label_smoothing < 1:
            raise BadInputError("shift must be >= 0 and label smoothing in [0, 1)")
        self.lr = DEFAULT_LR[self.optimizer] if self.lr is None else float(self.lr)
        if self.weight_decay is None:
            self.weight_decay = DEFAULT_WEIGHT_DECAY[self.optimizer]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def settings(self) -> dict[str, Any]:
        """What the card records under ``training``: the run-defining fields."""
        return {k: v for k, v in asdict(self).items() if k not in RUNTIME_FIELDS}


@dataclass
class TrainResult:
    run_dir: Path
    best_path: Path | None
    last_path: Path | None
    history: list[dict[str, Any]]
    best_acc: float
    best_epoch: int
    train_seconds: float
    interrupted: bool = False
    resume_command: str = ""
    rank: int = 0  # under DDP every process returns one; only rank 0's is reported

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


class TrainingDiverged(CheckFailedError):
    """The loss became NaN or infinite; nothing after the last good epoch was saved."""


@dataclass
class Distributed:
    """This process's place in a run: rank, world size and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


# ---------------------------------------------------------------- devices and processes


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda if usable else cpu; 'cuda' needs a usable GPU (one line says why not)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UnavailableError(f"--device {name} asked for, but no usable CUDA GPU is here; use --device cpu")
        index = int(name.split(":")[1]) if ":" in name else local_rank
        return torch.device("cuda", index)
    raise BadInputError(f"unknown device '{name}'; choose auto, cpu or cuda")


def init_distributed(config: TrainConfig) -> Distributed:
    """Join the process group torchrun (or ``launch_processes``) described in the environment."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(config.device, local_rank)
    if device.type == "cuda":  # fixed input shapes: let cuDNN pick the fastest kernels; TF32 matmuls
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    if world_size <= 1:
        return Distributed(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def launch_processes(config: TrainConfig, nproc: int) -> TrainResult:
    """Train with ``nproc`` local processes (DDP), like torchrun; returns rank 0's result.

    A worker's RtoolError comes back as the same one-line error here. Ctrl-C
    reaches every worker (same process group): they stop together and save.
    """
    import torch.multiprocessing as mp

    check_run_dir(config)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    outcomes: list[tuple] = []
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the workers handle it and report back
    try:
        procs = mp.start_processes(_worker, args=(nproc, port, config, results), nprocs=nproc,
                                   join=False, start_method="spawn")
        done = False
        while not done:
            try:
                done = procs.join(timeout=0.5)
            finally:
                while not results.empty():  # drain, so no worker blocks writing to a full pipe
                    outcomes.append(results.get())
    except mp.ProcessExitedException as e:
        if not outcomes:
            raise CheckFailedError(f"a training process died ({e}); see the messages above") from None
    finally:
        signal.signal(signal.SIGINT, previous)
    errors = [o for o in outcomes if o[0] == "error"]
    if errors:
        _, kind, message, code = errors[0]
        error = {"TrainingDiverged": TrainingDiverged, "CheckFailedError": CheckFailedError,
                 "UnavailableError": UnavailableError}.get(kind, BadInputError)(message)
        error.exit_code = code
        raise error
    return next(o[1] for o in outcomes if o[0] == "ok")


def _worker(rank: int, world_size: int, port: int, config: TrainConfig, results: Any) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        result = run_training(config)
    except RtoolError as e:
        results.put(("error", type(e).__name__, str(e), e.exit_code))
        raise SystemExit(e.exit_code) from None
    if rank == 0:
        results.put(("ok", result))


# ---------------------------------------------------------------- data


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


def epoch_order(n: int, epoch: int, seed: int, dist_info: Distributed) -> torch.Tensor:
    """This rank's sample order for ``epoch``, the way DistributedSampler shards it.

    All ranks draw the same permutation, pad it to a multiple of the world size
    and take every ``world_size``-th index from their rank on.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g)
    if dist_info.active:
        total = math.ceil(n / dist_info.world_size) * dist_info.world_size
        order = torch.cat([order, order[: total - n]])[dist_info.rank::dist_info.world_size]
    return order


def batch_generator(seed: int, epoch: int, batch: int, rank: int) -> torch.Generator:
    """The random source of one batch's augmentation: a pure function of where the batch is in the run."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + batch) * 1_009 + rank)


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


def normalize(pixels: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 NCHW -> float32 ``(p / 255 - mean) / std``: the same float32 ops as toolkit.preprocess.normalize."""
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    return (pixels.to(torch.float32) / 255.0 - mean) / std


def model_input(pixels: torch.Tensor, spec: InputSpec, channels_last: bool) -> torch.Tensor:
    x = normalize(pixels, spec)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# ---------------------------------------------------------------- optimisation


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per batch. onecycle: warm up 25% then anneal; cosine: decay to 0; step: /10 at 50% and 75%."""
    if config.schedule == "onecycle":
        if total_steps < 2:  # no room for a cycle: one step at the peak rate
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        # OneCycleLR needs more than one step in its warm-up phase (tiny runs have few steps).
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps,
                                                   pct_start=max(0.25, 1.5 / total_steps),
                                                   cycle_momentum=config.optimizer == "sgd")
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[total_steps // 2, total_steps * 3 // 4],
                                                gamma=0.1)


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, spec: InputSpec, dist_info: Distributed, config: TrainConfig,
             batch_size: int = 500) -> tuple[float, float]:
    """(mean loss, accuracy) on ``split``; under DDP each rank takes a shard and the sums are reduced."""
    model.eval()
    indices = torch.arange(dist_info.rank, len(split), dist_info.world_size)
    sums = torch.zeros(3, dtype=torch.float64, device=dist_info.device)  # loss sum, correct, count
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
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


# ---------------------------------------------------------------- run directory and checkpoints


def check_run_dir(config: TrainConfig) -> Path:
    """The run folder, refusing to mix a new run into an old one (one line says what to do)."""
    run_dir = Path(config.out)
    if config.resume and config.overwrite:
        raise BadInputError("--resume and --overwrite exclude each other; choose one")
    if config.resume:
        if not (run_dir / "last.pt").is_file():
            raise BadInputError(f"nothing to resume in {run_dir} (no last.pt); start the run without --resume")
    elif run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())) and not config.overwrite:
        raise BadInputError(f"run folder {run_dir} already exists and is not empty; pass --resume to continue it, "
                            f"--overwrite to replace it, or choose another --out")
    return run_dir


def resume_config(out: str | Path, **overrides: Any) -> TrainConfig:
    """The settings a run in ``out`` was started with, to continue it (``--resume``).

    Only RUNTIME_FIELDS may change; any other override that differs from the
    saved value is refused, because it would not continue the same run.
    """
    path = Path(out) / "last.pt"
    if not path.is_file():
        raise BadInputError(f"nothing to resume in {out} (no last.pt); start the run without --resume")
    saved = load_checkpoint(path).train_state.get("config")
    if not isinstance(saved, dict):
        raise BadInputError(f"{path} holds no training state (was it written by rtool train?); start a new run")
    known = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in saved.items() if k in known})
    changed = [f"--{k.replace('_', '-')} ({v} vs saved {getattr(config, k)})" for k, v in overrides.items()
               if k not in RUNTIME_FIELDS and v != getattr(config, k)]
    if changed:
        raise BadInputError(f"--resume continues {out} with its saved settings, but these differ: "
                            f"{', '.join(changed)}; drop them or start a new run with another --out")
    runtime = {k: v for k, v in overrides.items() if k in RUNTIME_FIELDS}
    return replace(config, **{**runtime, "out": str(out), "resume": True, "overwrite": False})


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """metrics.csv and metrics.jsonl, rewritten whole (atomically) from the history after each epoch."""
    if not history:
        return
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(run_dir / "metrics.csv", text.getvalue())
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch metrics of a run folder (metrics.jsonl, else metrics.csv)."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.jsonl").is_file():
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        try:
            return [json.loads(line) for line in lines if line.strip()]
        except json.JSONDecodeError as e:
            raise BadInputError(f"{run_dir / 'metrics.jsonl'} is not valid JSON lines ({e})") from None
    if (run_dir / "metrics.csv").is_file():
        with open(run_dir / "metrics.csv", newline="") as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    raise BadInputError(f"{run_dir} holds no metrics.jsonl or metrics.csv; give a folder written by rtool train")


# ---------------------------------------------------------------- stopping


class StopRequest:
    """Set by SIGINT/SIGTERM (or a caller's ``should_stop``); the loop stops at the next batch boundary.

    A second signal interrupts at once.
    """

    def __init__(self, should_stop: Callable[[], bool] | None) -> None:
        self.should_stop = should_stop
        self.requested = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading_is_main():
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


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def any_rank(flags: torch.Tensor, dist_info: Distributed) -> list[bool]:
    """Element-wise OR of boolean flags over all ranks, so every rank stops at the same batch."""
    if dist_info.active:
        flags = flags.to(dist_info.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return [bool(v) for v in flags.tolist()]


# ---------------------------------------------------------------- the loop


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

        with RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=self.console,
                          transient=True) as bar:
            task = bar.add_task(title, total=total, completed=done, stats="")
            yield lambda advance, text: bar.update(task, advance=advance, stats=text)

    def line(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)


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
            dist.barrier()    # rank that leaves first can abort in gloo's threads ("terminate called ...")
        return result
    finally:
        if dist_info.active:
            dist.destroy_process_group()


def _train(config: TrainConfig, run_dir: Path, dist_info: Distributed,
           should_stop: Callable[[], bool] | None) -> TrainResult:
    device = dist_info.device
    if config.amp == "fp16" and device.type != "cuda":
        raise BadInputError("--amp fp16 needs --device cuda; on the CPU use --amp bf16 or none")
    if dist_info.is_main:
        check_writable_dir(run_dir)  # created by the first file written: a run that fails first leaves nothing
        if config.overwrite:
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
    if dist_info.active:
        dist.barrier()
    progress = Progress(enabled=dist_info.is_main and not config.quiet)

    # Data: whole splits in memory (on the device), the card's input spec from the full train split.
    data: Dataset = load_dataset(config.dataset, config.data_dir, config.download)
    spec = data.input_spec()
    train_split = limit_split(data.train, config.train_limit)
    test_split = limit_split(data.test, config.test_limit)
    train_split = Split(train_split.images.to(device), train_split.labels.to(device))
    test_split = Split(test_split.images.to(device), test_split.labels.to(device))

    # Model, optimizer, schedule.
    torch.manual_seed(config.seed)
    model = create_model(config.model, in_channels=spec.channels, num_classes=len(data.class_names),
                         init=config.init).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = math.ceil(math.ceil(len(train_split) / dist_info.world_size) / config.batch_size)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch * config.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")

    # Where to start: a fresh run, or the state saved in last.pt.
    start_epoch, start_batch = 0, 0
    partial = [0.0, 0.0, 0.0, 0.0]  # train loss sum, correct, seen, seconds of the unfinished epoch
    history: list[dict[str, Any]] = []
    best_acc, best_epoch = -1.0, 0
    if config.resume:
        ckpt = load_checkpoint(run_dir / "last.pt")
        state = ckpt.train_state
        if state.get("world_size", 1) != dist_info.world_size:
            raise BadInputError(f"{run_dir} was trained with {state.get('world_size', 1)} process(es); "
                                f"resume it with the same number")
        model.load_state_dict(ckpt.state_dict)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler.is_enabled() and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, start_batch = int(state["epoch"]), int(state["batch"])
        # The unfinished epoch's sums were reduced over ranks when saved: rank 0 carries them on.
        partial = [float(v) for v in state["partial"]]
        if not dist_info.is_main:
            partial[:3] = [0.0, 0.0, 0.0]
        history = list(state["history"])
        best_acc, best_epoch = float(state["best_acc"]), int(state["best_epoch"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if start_epoch >= config.epochs:
            progress.line(f"{run_dir} already finished its {config.epochs} epochs; nothing to resume")
            if dist_info.is_main:  # a run stopped right after its last checkpoint still needs these
                write_metrics(run_dir, history)
                _draw_curves(run_dir, history, config)
            return _result(run_dir, history, best_acc, best_epoch)
        progress.line(f"resuming {run_dir} at epoch {start_epoch + 1}, batch {start_batch + 1}")

    net: nn.Module = model
    if dist_info.active:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def card_of(metrics: dict[str, Any]) -> ModelCard:
        """The card of this run with its latest metrics."""
        return make_card(config.model, class_names=data.class_names, input_spec=spec, dataset=config.dataset,
                         training={**config.settings(), "world_size": dist_info.world_size}, metrics=metrics)

    def epoch_sums() -> list[float]:
        """This epoch's train loss sum, correct and seen so far, over all ranks."""
        sums = torch.tensor(partial[:3], dtype=torch.float64, device=device)
        if dist_info.active:
            dist.all_reduce(sums)
        return sums.tolist()

    def train_state(epoch: int, batch: int) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        unfinished = [*epoch_sums(), partial[3]] if batch else [0.0, 0.0, 0.0, 0.0]
        return {"epoch": epoch, "batch": batch, "partial": unfinished, "history": history,
                "best_acc": best_acc, "best_epoch": best_epoch, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "rng": rng, "config": config.to_dict(), "world_size": dist_info.world_size}

    def save_last(epoch: int, batch: int) -> None:
        state = train_state(epoch, batch)  # every rank: it reduces the epoch's sums
        if dist_info.is_main:
            save_checkpoint(run_dir / "last.pt", model, card_of(history[-1] if history else {}), state)

    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    net.train()
    interrupted = False
    with StopRequest(should_stop) as stop:
        for epoch in range(start_epoch, config.epochs):
            order = epoch_order(len(train_split), epoch, config.seed, dist_info)
            first = start_batch if epoch == start_epoch else 0
            if first == 0:
                partial = [0.0, 0.0, 0.0, 0.0]
            started = time.perf_counter() - partial[3]
            with progress.epoch(f"epoch {epoch + 1}/{config.epochs}", steps_per_epoch, first) as advance:
                for batch in range(first, steps_per_epoch):
                    idx = order[batch * config.batch_size:(batch + 1) * config.batch_size].to(device)
                    shifts = batch_generator(config.seed, epoch, batch, dist_info.rank)
                    x = model_input(random_shift(train_split.images[idx], config.shift, shifts), spec,
                                    config.channels_last)
                    y = train_split.labels[idx]
                    with autocast(device, config.amp):
                        logits = net(x)
                        loss = loss_fn(logits, y)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()

                    loss_value = float(loss.detach())
                    nonfinite, stop_now = any_rank(torch.tensor([not math.isfinite(loss_value), stop()]), dist_info)
                    if nonfinite:
                        kept = [str(run_dir / n) for n in ("best.pt", "last.pt") if (run_dir / n).is_file()]
                        raise TrainingDiverged(
                            f"training diverged: the loss became {loss_value} at epoch {epoch + 1}, batch {batch + 1} "
                            f"(lr {config.lr:g}); lower --lr or raise --batch-size. "
                            f"Kept: {', '.join(kept) if kept else 'no checkpoint yet'}")
                    partial[0] += loss_value * len(idx)
                    partial[1] += float((logits.argmax(1) == y).sum())
                    partial[2] += len(idx)
                    advance(1, f"loss {partial[0] / partial[2]:.4f}  acc {100 * partial[1] / partial[2]:.2f}%")
                    if stop_now:
                        partial[3] = time.perf_counter() - started
                        save_last(epoch, batch + 1)
                        interrupted = True
                        break
            if interrupted:
                break

            # End of epoch: evaluate, record, checkpoint.
            train_seconds = time.perf_counter() - started
            train_loss, train_correct, train_seen = epoch_sums()
            test_loss, test_acc = evaluate(model, test_split, spec, dist_info, config)
            seconds = time.perf_counter() - started
            row = {"epoch": epoch + 1, "train_loss": round(train_loss / train_seen, 6),
                   "train_acc": round(train_correct / train_seen, 6), "test_loss": round(test_loss, 6),
                   "test_acc": round(test_acc, 6), "lr": optimizer.param_groups[0]["lr"],
                   "images_per_s": round(train_seen / train_seconds, 1), "train_seconds": round(train_seconds, 3),
                   "seconds": round(seconds, 3)}
            history.append(row)
            if test_acc > best_acc:
                best_acc, best_epoch = test_acc, epoch + 1
                if dist_info.is_main:
                    save_checkpoint(run_dir / "best.pt", model, card_of({**row, "best_acc": best_acc}))
            save_last(epoch + 1, 0)
            if dist_info.is_main:
                write_metrics(run_dir, history)
            progress.line(f"epoch {epoch + 1:>3}/{config.epochs}  train loss {row['train_loss']:.4f} "
                          f"acc {100 * row['train_acc']:.2f}%  test loss {test_loss:.4f} acc {100 * test_acc:.2f}%  "
                          f"{row['images_per_s']:.0f} img/s  {seconds:.1f}s")

    if dist_info.is_main:
        _draw_curves(run_dir, history, config)
    result = _result(run_dir, history, best_acc, best_epoch, interrupted)
    result.rank = dist_info.rank
    if interrupted:
        result.resume_command = f"rtool train --out {run_dir} --resume"
    return result


def _draw_curves(run_dir: Path, history: list[dict[str, Any]], config: TrainConfig) -> None:
    if history:
        from toolkit.plots import training_curves

        training_curves(history, run_dir / "curves.png", title=f"{config.model} on {config.dataset}")


def _result(run_dir: Path, history: list[dict[str, Any]], best_acc: float, best_epoch: int,
            interrupted: bool = False) -> TrainResult:
    best = run_dir / "best.pt"
    last = run_dir / "last.pt"
    return TrainResult(run_dir=run_dir, best_path=best if best.is_file() else None,
                       last_path=last if last.is_file() else None, history=history, best_acc=best_acc,
                       best_epoch=best_epoch, train_seconds=sum(r["seconds"] for r in history),
                       interrupted=interrupted)


def default_run_dir(model: str, dataset: str) -> str:
    """runs/MODEL-DATASET (an image folder contributes its last path part)."""
    data_name = Path(dataset.partition(":")[2]).name if dataset.startswith("imagefolder:") else dataset
    return f"runs/{model}-{data_name or 'images'}"


def train_command(options: dict[str, Any], explicit: set[str], nproc: int = 1) -> TrainResult:
    """``rtool train``: the config from flags (or the run's saved one with --resume), trained here or in ``nproc`` processes.

    ``explicit`` names the options the user typed: with --resume, those are
    checked against the saved settings instead of silently ignored.
    """
    options = dict(options)
    if options.get("out") is None:
        options["out"] = default_run_dir(options["model"], options["dataset"])
    if options.get("resume"):
        given = {k: options[k] for k in explicit | {"quiet"} if k in options and k != "out"}
        config = resume_config(options["out"], **given)
    else:
        config = TrainConfig(**options)
    if nproc > 1:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise BadInputError("--nproc starts its own processes; under torchrun leave it out")
        return launch_processes(config, nproc)
    return run_training(config)


def summarize(result: TrainResult) -> str:
    """The closing line of a run."""
    if not result.history:
        return f"no epoch finished; state saved in {result.last_path}" if result.last_path else "no epoch finished"
    files = ", ".join(name for name in RUN_FILES if (result.run_dir / name).is_file())
    return (f"best test accuracy {100 * result.best_acc:.2f}% (epoch {result.best_epoch}); "
            f"final {100 * result.final['test_acc']:.2f}%; {result.train_seconds:.1f}s of training; "
            f"{result.run_dir}: {files}")


def compare_runs(run_dirs: list[str | Path], out: str | Path, title: str = "") -> list[dict[str, Any]]:
    """Draw several runs' curves on one figure; returns each run's best and final test accuracy."""
    from toolkit.plots import compare_runs as draw

    if not run_dirs:
        raise BadInputError("give at least one run folder to compare")
    paths = [Path(r) for r in run_dirs]
    names = [p.name for p in paths]
    if len(set(names)) < len(names):  # same folder name in different places: use the paths
        names = [str(p) for p in paths]
    runs = {}
    for name, path in zip(names, paths):
        history = read_metrics(path)
        if not history:
            raise BadInputError(f"{path} has no finished epoch to plot")
        runs[name] = history
    draw(runs, out, title=title)
    return [{"run": name, "epochs": len(h), "best_test_acc": max(r["test_acc"] for r in h),
             "final_test_acc": h[-1]["test_acc"], "final_train_loss": h[-1]["train_loss"]}
            for name, h in runs.items()]


if __name__ == "__main__":  # python -m toolkit.train ... / torchrun -m toolkit.train ...
    from toolkit.cli import main

    sys.argv = ["rtool", "train", *sys.argv[1:]]
    main()
