"""Distributed launch: this process's rank and device, the process group, and ``--nproc`` local workers.

``torchrun`` (or ``launch_processes``) describes the run in the environment; ``init_distributed``
joins it. ``launch_processes`` is torchrun in miniature: ``nproc`` spawned workers on one machine,
rank 0's result returned, a worker's RtoolError raised here as the same one-line error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist

from toolkit.errors import BadInputError, CheckFailedError, RtoolError, UnavailableError
from toolkit.train.config import TrainConfig


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


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda if usable else cpu; 'cuda' needs a usable GPU (one line says why not)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UnavailableError(f"--device {name} asked for, but no usable CUDA GPU is here; use --device cpu")
        return torch.device("cuda", local_rank)
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
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None
    )
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def any_rank(flags: torch.Tensor, dist_info: Distributed) -> list[bool]:
    """Element-wise OR of boolean flags over all ranks, so every rank stops at the same batch."""
    if dist_info.active:
        flags = flags.to(dist_info.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return [bool(v) for v in flags.tolist()]


def sum_over_ranks(values: list[float], dist_info: Distributed) -> list[float]:
    """``values`` added up over all ranks (float64), unchanged in a single process."""
    sums = torch.tensor(values, dtype=torch.float64, device=dist_info.device)
    if dist_info.active:
        dist.all_reduce(sums)
    return sums.tolist()


def usable_cpus() -> int:
    """CPU cores this process may run on: its affinity mask where the OS has one (taskset, cgroup cpusets)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_nproc(nproc: int, device: str) -> None:
    """Refuse more local processes than this machine can run side by side (one line says how many it can)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BadInputError("--nproc starts its own processes; under torchrun leave it out")
    cores = usable_cpus()
    if nproc > cores:
        raise BadInputError(
            f"--nproc {nproc} is more than the {cores} CPU core(s) this machine gives rtool; "
            f"use --nproc {cores} or fewer"
        )
    if device != "cpu" and torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise BadInputError(
            f"--nproc {nproc} is more than the {torch.cuda.device_count()} GPU(s) here (one process "
            f"per GPU); use fewer, or --device cpu"
        )


def launch_processes(train: Callable[[TrainConfig], Any], config: TrainConfig, nproc: int) -> Any:
    """Run ``train(config)`` in ``nproc`` local processes (DDP), like torchrun; returns rank 0's result.

    A worker's RtoolError comes back as the same one-line error here. Ctrl-C reaches every worker
    (same process group): they stop together and save.
    """
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.get_context("spawn").SimpleQueue()
    outcomes: list[tuple] = []
    died = None
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the workers handle it and report back
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_log.level
    spawn_log.setLevel(logging.ERROR)  # "Terminating process ... via signal SIGTERM": our one line says it
    try:
        procs = mp.start_processes(
            _worker, args=(nproc, port, train, config, results), nprocs=nproc, join=False, start_method="spawn"
        )
        done = False
        while not done:
            try:
                done = procs.join(timeout=0.5)
            finally:
                while not results.empty():  # drain, so no worker blocks writing to a full pipe
                    outcomes.append(results.get())
    except mp.ProcessExitedException as e:
        died = e
    finally:
        signal.signal(signal.SIGINT, previous)
        spawn_log.setLevel(level)
    return _rank0_result(outcomes, died)


def _rank0_result(outcomes: list[tuple], died: Exception | None) -> Any:
    """Rank 0's result, or the error that explains why there is none."""
    errors = [o[1] for o in outcomes if o[0] == "error"]
    if errors:
        raise errors[0]
    result = next((o[1] for o in outcomes if o[0] == "ok"), None)
    if result is not None:
        return result
    crashes = [o[1] for o in outcomes if o[0] == "crash"]
    if crashes and not getattr(died, "signal_name", None):  # a bug in the workers, not a killed process
        raise RuntimeError(f"a training process failed: {crashes[0]}")
    if died is not None:
        raise CheckFailedError(f"a training process died ({died}); see the messages above")
    raise CheckFailedError("the training processes ended without a result; see the messages above")


def _worker(
    rank: int, world_size: int, port: int, train: Callable[[TrainConfig], Any], config: TrainConfig, results: Any
) -> None:
    """One spawned rank. No exception reaches torch's wrapper: it would pickle the traceback into a
    ``pytorch-errorfile-*.pickle`` in the temporary folder, which torch never removes (its parent reads only
    the first failed process's file, and none once it is killed)."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    code = 0
    try:
        outcome: tuple = ("ok", train(config))
    except RtoolError as e:
        outcome, code = ("error", e), e.exit_code
    except Exception as e:  # a bug, or a peer that died mid-collective: the parent says which
        if os.environ.get("RTOOL_DEBUG"):
            traceback.print_exc()
        first_line = next(iter(str(e).strip().splitlines()), "")
        outcome, code = ("crash", f"{e.__class__.__name__}: {first_line}"), 3
    if rank == 0 or code:
        with contextlib.suppress(Exception):  # the parent may be gone (killed): nobody is left to tell
            results.put(outcome)
    if code:
        raise SystemExit(code)
