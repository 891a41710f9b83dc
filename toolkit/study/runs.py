"""The runs of a study: what each run folder holds (finished, to resume, to start), and training what is left.

Each run is an ordinary ``rtool train`` run folder, so a study stopped anywhere (Ctrl-C, a killed
process, a full disk) continues where it stopped: finished runs are skipped, an interrupted run resumes
from its last.pt onto the path it would have taken, and a run killed before its first checkpoint starts
again. Every folder is checked before anything trains, so a study with other settings never mixes its
runs into an earlier one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from toolkit.card import ModelCard
from toolkit.checkpoint import load_checkpoint
from toolkit.errors import BadInputError
from toolkit.train.config import TrainConfig
from toolkit.train.run import run_training
from toolkit.train.rundir import RUN_FILES, resume_config, saved_config

FINISHED, RESUME, START, RESTART = "finished", "resume", "start", "restart"
# A run folder's own files, and the temporary files an atomic write leaves behind when the process is killed.
_NAMES = "|".join(map(re.escape, RUN_FILES))
OWN_FILE = re.compile(rf"(?:{_NAMES})|\.(?:{_NAMES})\..*\.tmp")


@dataclass
class PlannedRun:
    config: TrainConfig
    state: str  # FINISHED, RESUME, START or RESTART
    done_epochs: int = 0

    @property
    def name(self) -> str:
        return Path(str(self.config.out)).name


def plan_run(config: TrainConfig) -> PlannedRun:
    """What ``config.out`` holds: a finished run, one to resume, nothing (start) or a run killed before
    its first checkpoint (restart). Refuses a run with other settings and files that are not a run's."""
    run_dir = Path(str(config.out))
    last = run_dir / "last.pt"
    if last.is_file():
        checkpoint = load_checkpoint(last)
        saved = saved_config(last, checkpoint).settings()
        differ = [f"{k} {saved[k]} vs {v}" for k, v in config.settings().items() if k in saved and saved[k] != v]
        if differ:
            raise BadInputError(
                f"{run_dir} holds a run with other settings ({', '.join(differ)}); finish that study with its own "
                f"flags, or give this one another --out"
            )
        state = checkpoint.train_state
        finished = int(state["epoch"]) >= config.epochs and int(state["batch"]) == 0
        return PlannedRun(config, FINISHED if finished else RESUME, int(state["epoch"]))
    if not run_dir.exists():
        return PlannedRun(config, START)
    if not run_dir.is_dir():
        raise BadInputError(
            f"{run_dir} is a file where the study keeps a run folder; move it away or choose another --out"
        )
    strangers = sorted(p.name for p in run_dir.iterdir() if not OWN_FILE.fullmatch(p.name))
    if strangers:
        raise BadInputError(
            f"{run_dir} holds files no rtool run wrote ({', '.join(strangers[:3])}); move them away or choose "
            f"another --out"
        )
    return PlannedRun(config, RESTART if any(run_dir.iterdir()) else START)


def plan_runs(configs: list[TrainConfig]) -> list[PlannedRun]:
    """Every run's state, checked before any of them trains."""
    return [plan_run(config) for config in configs]


def train_run(planned: PlannedRun, should_stop: Callable[[], bool] | None = None) -> bool:
    """Train what is left of one run; True when it was stopped (its last.pt then says where)."""
    config = planned.config
    if planned.state == FINISHED:
        return False
    if planned.state == RESUME:
        config = resume_config(str(config.out), device=config.device, quiet=config.quiet)
    elif planned.state == RESTART:
        for leftover in Path(str(config.out)).glob(".*.tmp"):
            if OWN_FILE.fullmatch(leftover.name):
                leftover.unlink()
        config = replace(config, overwrite=True)
    return run_training(config, should_stop).interrupted


def finished_history(config: TrainConfig) -> tuple[list[dict[str, Any]], ModelCard]:
    """The per-epoch rows of a finished run and its card, from last.pt (written before the metrics files)."""
    checkpoint = load_checkpoint(Path(str(config.out)) / "last.pt")
    return list(checkpoint.train_state["history"]), checkpoint.card
