"""``rtool train`` and ``python -m toolkit.train`` after parsing: settings from the flags (or the run's saved
ones with --resume), trained here or in ``--nproc`` processes, and the closing line."""

from __future__ import annotations

import sys
from typing import Any

import click

from toolkit.train.config import TrainConfig, default_run_dir
from toolkit.train.distributed import check_nproc, launch_processes
from toolkit.train.run import TrainResult, run_training
from toolkit.train.rundir import RUN_FILES, check_run_dir, resume_config


def train_command(options: dict[str, Any], explicit: set[str], nproc: int = 1) -> TrainResult:
    """Train as the flags say, here or in ``nproc`` processes.

    ``explicit`` names the options the user typed: with --resume, those are
    checked against the saved settings instead of silently ignored.
    """
    if nproc > 1:
        check_nproc(nproc, str(options.get("device", "auto")))
    if options.get("resume"):
        out = options.get("out") or default_run_dir(options["model"], options["dataset"])
        given = {k: options[k] for k in explicit | {"quiet"} if k in options and k != "out"}
        config = resume_config(out, **given)
    else:
        config = TrainConfig(**options)
    if nproc > 1:
        check_run_dir(config)  # here, before starting workers that would each refuse it
        return launch_processes(run_training, config, nproc)
    return run_training(config)


def summarize(result: TrainResult) -> str:
    """The closing line of a run."""
    if not result.history:
        return f"no epoch finished; state saved in {result.last_path}" if result.last_path else "no epoch finished"
    files = ", ".join(name for name in RUN_FILES if (result.run_dir / name).is_file())
    test = (
        f"test accuracy {100 * result.test['test_acc']:.2f}% ({result.test['test_images']} images); "
        if result.test
        else ""
    )
    stopped = ", stopped early" if result.stopped_early else ""
    return (
        f"best val accuracy {100 * result.best_acc:.2f}% (epoch {result.best_epoch}{stopped}); "
        f"final {100 * result.final['val_acc']:.2f}%; {test}{result.train_seconds:.1f}s of training; "
        f"{result.run_dir}: {files}"
    )


def report(result: TrainResult) -> None:
    """Print the closing line (rank 0 only); an interrupted run says how to resume and exits 130."""
    if result.rank != 0:
        return
    if result.interrupted:
        click.echo(f"rtool: interrupted; saved {result.last_path}. Resume with: {result.resume_command}", err=True)
        sys.exit(130)  # click.Context.exit codes are dropped by main() (standalone_mode=False)
    click.echo(summarize(result))
