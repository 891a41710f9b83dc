"""``rtool study degradation``: He et al.'s degradation experiment, plain vs residual nets at several depths.

Trains plainD and resnetD for every depth D and seed with one recipe (config.PAPER_RECIPE), then writes
into the study folder, from the runs' own records:

- ``degradation.png``: the paper's Figure 6 layout, plain nets left and ResNets right, training error thin
  dashed and test error bold against epochs (the mean over seeds);
- ``degradation.json`` and ``degradation.md``: per net the final train/test error, parameter count and
  seconds per epoch, the recipe, the command and the time it took.
"""

from __future__ import annotations

import json
import platform
import shlex
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from toolkit.errors import BadInputError
from toolkit.fileio import atomic_write_text, ensure_writable_dir
from toolkit.markdown import markdown_code, markdown_shell_block, markdown_table
from toolkit.models import create_model, list_models
from toolkit.models.summary import count_params
from toolkit.plots import degradation_figure
from toolkit.study.config import KINDS, PAPER_TEST_ERROR, DegradationConfig, kind_and_depth
from toolkit.study.runs import FINISHED, PlannedRun, finished_history, plan_runs, train_run
from toolkit.train.config import TrainConfig

FIGURE, TABLE_JSON, TABLE_MD = "degradation.png", "degradation.json", "degradation.md"
TITLES = {"plain": "plain", "resnet": "ResNet"}
TABLE_COLUMNS = ("net", "depth", "parameters", "train error (%)", "test error (%)", "best test error (%)", "s/epoch")


@dataclass
class StudyResult:
    out: Path
    planned: list[PlannedRun]
    interrupted: bool = False
    stopped_run: str = ""
    files: dict[str, Path] = field(default_factory=dict)
    nets: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0


def check_depths(config: DegradationConfig) -> None:
    """Every depth must have both a plain net and a ResNet in the model zoo."""
    known = set(list_models())
    both = sorted(int(n[5:]) for n in known if n.startswith("plain") and f"resnet{n[5:]}" in known)
    missing = [d for d in config.depth_list() if f"plain{d}" not in known or f"resnet{d}" not in known]
    if missing:
        raise BadInputError(
            f"--depths: no plain/residual pair of depth {missing[0]}; choose from {', '.join(map(str, both))}"
        )


def run_study(
    config: DegradationConfig, say: Callable[[str], None] = print, should_stop: Callable[[], bool] | None = None
) -> StudyResult:
    """Train what is left of the study, then write its figure and tables (only once every run has finished)."""
    started = time.perf_counter()
    check_depths(config)
    out = ensure_writable_dir(config.study_dir())
    planned = plan_runs(config.train_configs())
    result = StudyResult(out, planned)
    for i, run in enumerate(planned, 1):
        label = f"[{i}/{len(planned)}] {run.name}"
        if run.state == FINISHED:
            say(f"{label}: finished earlier ({run.done_epochs} epoch{'' if run.done_epochs == 1 else 's'}), skipped")
            continue
        say(f"{label}: {run.state}" + (f" after epoch {run.done_epochs}" if run.done_epochs else ""))
        if train_run(run, should_stop):
            result.interrupted, result.stopped_run = True, str(run.config.out)
            return result
    result.wall_seconds = time.perf_counter() - started
    result.nets, runs = summarize_runs([run.config for run in planned])
    result.files = write_outputs(config, result, runs)
    return result


def run_row(config: TrainConfig) -> dict[str, Any]:
    """One finished run as numbers: final and best errors (%), parameters, seconds per epoch, its history."""
    history, card = finished_history(config)
    with torch.device("meta"):  # shapes only: no weights are made
        model = create_model(config.model, in_channels=card.input.channels, num_classes=len(card.class_names))
    last = history[-1]
    kind, depth = kind_and_depth(config.model)
    return {
        "model": config.model,
        "kind": kind,
        "depth": depth,
        "seed": config.seed,
        "run_dir": str(config.out),
        "epochs": len(history),
        "params": count_params(model),
        "final_train_error": round(100 * (1 - last["train_acc"]), 4),
        "final_test_error": round(100 * (1 - last["test_acc"]), 4),
        "best_test_error": round(100 * (1 - max(r["test_acc"] for r in history)), 4),
        "train_seconds_per_epoch": round(statistics.fmean(r["train_seconds"] for r in history), 3),
        "seconds": round(sum(r["seconds"] for r in history), 3),
        "history": history,
    }


def mean_history(histories: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per epoch, the mean train and test accuracy over seeds (what the figure draws)."""
    return [
        {
            "epoch": rows[0]["epoch"],
            "train_acc": statistics.fmean(r["train_acc"] for r in rows),
            "test_acc": statistics.fmean(r["test_acc"] for r in rows),
        }
        for rows in zip(*histories)
    ]


def summarize_runs(configs: list[TrainConfig]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per net (mean over seeds) and per run."""
    runs = [run_row(config) for config in configs]
    nets = []
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == model]
        nets.append(
            {
                "model": model,
                "kind": mine[0]["kind"],
                "depth": mine[0]["depth"],
                "params": mine[0]["params"],
                "seeds": [r["seed"] for r in mine],
                **{
                    key: round(statistics.fmean(r[key] for r in mine), 4)
                    for key in ("final_train_error", "final_test_error", "best_test_error", "train_seconds_per_epoch")
                },
                "per_seed_final_train_error": [r["final_train_error"] for r in mine],
                "per_seed_final_test_error": [r["final_test_error"] for r in mine],
                "mean_history": mean_history([r["history"] for r in mine]),
            }
        )
    return nets, runs


def figure_panels(nets: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{"plain": {"plain-20": rows, ...}, "ResNet": {...}}: the figure's two panels, shallow nets first."""
    return {
        TITLES[kind]: {
            f"{TITLES[kind]}-{net['depth']}": net["mean_history"]
            for net in sorted(nets, key=lambda n: n["depth"])
            if net["kind"] == kind
        }
        for kind in KINDS
    }


def study_command(config: DegradationConfig) -> list[str]:
    """The command line that makes (or continues) this study."""
    argv = ["rtool", "study", "degradation", "--depths", ",".join(map(str, config.depth_list()))]
    argv += ["--dataset", config.dataset, "--epochs", str(config.epoch_count())]
    argv += ["--seeds", ",".join(map(str, config.seed_list())), "--out", str(config.study_dir())]
    optional = (
        ("--data-dir", config.data_dir),
        ("--train-limit", config.train_limit),
        ("--test-limit", config.test_limit),
    )
    return argv + [text for flag, value in optional if value is not None for text in (flag, str(value))]


def write_outputs(config: DegradationConfig, result: StudyResult, runs: list[dict[str, Any]]) -> dict[str, Path]:
    """degradation.png, .json and .md in the study folder, each written atomically from the same numbers."""
    out, nets = result.out, result.nets
    seeds = config.seed_list()
    epochs = config.epoch_count()
    title = f"{config.dataset}, {epochs} epoch{'' if epochs == 1 else 's'}, " + (
        f"seed {seeds[0]}" if len(seeds) == 1 else f"mean of seeds {', '.join(map(str, seeds))}"
    )
    files = {"figure": degradation_figure(figure_panels(nets), out / FIGURE, title=title)}
    document = {
        "study": "degradation",
        "command": shlex.join(study_command(config)),
        "dataset": config.dataset,
        "depths": config.depth_list(),
        "seeds": seeds,
        "recipe": config.recipe(),
        "training_seconds": round(sum(r["seconds"] for r in runs), 1),
        "last_invocation": {
            "wall_seconds": round(result.wall_seconds, 1),
            "trained": [run.name for run in result.planned if run.state != FINISHED],
            "skipped": [run.name for run in result.planned if run.state == FINISHED],
        },
        "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads()},
        "paper_cifar10_test_error": PAPER_TEST_ERROR,
        "nets": nets,
        "runs": runs,
    }
    files["json"] = out / TABLE_JSON
    atomic_write_text(files["json"], json.dumps(document, indent=2, allow_nan=False) + "\n")
    files["markdown"] = out / TABLE_MD
    atomic_write_text(files["markdown"], study_markdown(config, document))
    return files


def table_rows(nets: list[dict[str, Any]]) -> list[list[str]]:
    """The table's cells: plain nets first, then ResNets, shallow first; per-seed values when there are several."""

    def error(net: dict[str, Any], key: str) -> str:
        per_seed = net[f"per_seed_{key}"]
        text = f"{net[key]:.2f}"
        return text + f" ({', '.join(f'{v:.2f}' for v in per_seed)})" if len(per_seed) > 1 else text

    ordered = sorted(nets, key=lambda n: (KINDS.index(n["kind"]), n["depth"]))
    return [
        [
            f"{TITLES[n['kind']]}-{n['depth']}",
            str(n["depth"]),
            f"{n['params']:,}",
            error(n, "final_train_error"),
            error(n, "final_test_error"),
            f"{n['best_test_error']:.2f}",
            f"{n['train_seconds_per_epoch']:.1f}",
        ]
        for n in ordered
    ]


def timing_sentence(document: dict[str, Any]) -> str:
    """How long the study took: every epoch summed over all invocations, and the last invocation's wall time."""
    last, machine = document["last_invocation"], document["machine"]
    threads = machine["cpu_threads"]
    done = [f"trained {', '.join(last['trained'])}"] if last["trained"] else []
    done += [f"skipped {', '.join(last['skipped'])} (finished earlier)"] if last["skipped"] else []
    return (
        f"Training took {document['training_seconds']:.0f} s in all (every epoch's training and evaluation, summed "
        f"over every invocation). The last invocation took {last['wall_seconds']:.0f} s of wall time "
        f"({'; '.join(done)}) on {markdown_code(machine['platform'])} with {threads} thread{'s' * (threads != 1)}."
    )


def study_markdown(config: DegradationConfig, document: dict[str, Any]) -> str:
    """The table page: command, recipe, table, figure, time taken (and the paper's numbers on CIFAR-10)."""
    recipe = ", ".join(f"{k} {v}" for k, v in document["recipe"].items())
    seeds = ", ".join(map(str, document["seeds"]))
    parts = [
        f"# Degradation study on {markdown_code(config.dataset)}",
        markdown_shell_block([shlex.split(document["command"])]),
        f"Every net trained with the same recipe ({recipe}) and seeds ({seeds}). Errors are the final epoch's, "
        "the mean over seeds (each seed's value in brackets when there are several); training error is measured "
        "during each epoch's training pass, as in the paper; s/epoch is the training pass alone.",
        markdown_table(TABLE_COLUMNS, table_rows(document["nets"])),
        f"![degradation]({FIGURE})",
        timing_sentence(document),
    ]
    if config.dataset.lower() == "cifar10":
        paper = ", ".join(f"ResNet-{m[6:]} {e}%" for m, e in PAPER_TEST_ERROR.items())
        parts.append(f"The paper's CIFAR-10 test errors (Table 6) for comparison: {paper}.")
    return "\n\n".join(parts) + "\n"
