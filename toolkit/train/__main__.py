"""``python -m toolkit.train`` and ``torchrun -m toolkit.train``: the flags of ``rtool train``, generated from
the same TrainConfig, without importing the CLI (which imports this package)."""

from __future__ import annotations

import click

from toolkit.flags import click_options, given_on_command_line, run_command
from toolkit.train.command import report, train_command
from toolkit.train.config import LaunchConfig, TrainConfig


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click_options(TrainConfig)
@click_options(LaunchConfig)
@click.pass_context
def train(ctx: click.Context, nproc: int, **options: object) -> None:
    """Train a model; writes best.pt, last.pt, metrics.csv/.jsonl and curves.png into the run folder.

    Under torchrun every process runs this; rank 0 reports.
    """
    report(train_command(options, given_on_command_line(ctx, options), nproc))


if __name__ == "__main__":
    run_command(train, prog_name="python -m toolkit.train")
