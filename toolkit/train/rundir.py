"""The run folder: what may be written where, the resume settings, metrics files, curves and comparisons.

A run folder holds best.pt, last.pt, metrics.csv/.jsonl and curves.png, all written atomically.
``--resume`` continues it from last.pt, and only if last.pt belongs to the run in the folder: a
last.pt of another model or data set would otherwise overwrite that run's metrics and curves.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from toolkit.checkpoint import Checkpoint, load_checkpoint
from toolkit.errors import BadInputError
from toolkit.fileio import atomic_write_text
from toolkit.train.config import RUNTIME_FIELDS, TrainConfig

RUN_FILES = ("best.pt", "last.pt", "metrics.csv", "metrics.jsonl", "curves.png")


def check_run_dir(config: TrainConfig) -> Path:
    """The run folder, refusing to mix a new run into an old one (one line says what to do)."""
    run_dir = Path(config.out)
    if config.resume and config.overwrite:
        raise BadInputError("--resume and --overwrite exclude each other; choose one")
    if config.resume:
        if not (run_dir / "last.pt").is_file():
            raise BadInputError(f"nothing to resume in {run_dir} (no last.pt); start the run without --resume")
    elif run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())) and not config.overwrite:
        raise BadInputError(
            f"run folder {run_dir} already exists and is not empty; pass --resume to continue it, "
            f"--overwrite to replace it, or choose another --out"
        )
    return run_dir


def saved_config(path: Path, checkpoint: Checkpoint) -> TrainConfig:
    """The TrainConfig a last.pt was written with."""
    saved = checkpoint.train_state.get("config")
    if not isinstance(saved, dict):
        raise BadInputError(f"{path} holds no training state (was it written by rtool train?); start a new run")
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in known})


def resume_config(out: str | Path, **overrides: Any) -> TrainConfig:
    """The settings a run in ``out`` was started with, to continue it (``--resume``).

    Only RUNTIME_FIELDS may change; any other override that differs from the
    saved value is refused, because it would not continue the same run.
    """
    if overrides.get("overwrite"):
        raise BadInputError(
            "--resume and --overwrite exclude each other: --resume continues the run in "
            f"{out}, --overwrite replaces it; choose one"
        )
    path = Path(out) / "last.pt"
    if not path.is_file():
        raise BadInputError(f"nothing to resume in {out} (no last.pt); start the run without --resume")
    config = saved_config(path, load_checkpoint(path))
    changed = [
        f"--{k.replace('_', '-')} ({v} vs saved {getattr(config, k)})"
        for k, v in overrides.items()
        if k not in RUNTIME_FIELDS and v != getattr(config, k)
    ]
    if changed:
        raise BadInputError(
            f"--resume continues {out} with its saved settings, but these differ: "
            f"{', '.join(changed)}; drop them or start a new run with another --out"
        )
    runtime = {k: v for k, v in overrides.items() if k in RUNTIME_FIELDS}
    return replace(config, **{**runtime, "out": str(out), "resume": True, "overwrite": False})


def check_resumable(run_dir: Path, last: Checkpoint, config: TrainConfig) -> None:
    """Refuse to resume from a last.pt that is not this run's: other settings than ``config``, or another run
    than the best.pt and metrics already in the folder (resuming would overwrite them with another history)."""
    path = run_dir / "last.pt"
    differ = _differences(saved_config(path, last).settings(), config.settings())
    if differ:
        raise BadInputError(
            f"{path} was trained with other settings ({differ}); resume it with its own "
            f"settings (`rtool train --out {run_dir} --resume`)"
        )
    advice = (
        "resuming would overwrite that run's files; put its own last.pt back, or start a new run with another --out"
    )
    if (run_dir / "best.pt").is_file():
        best = load_checkpoint(run_dir / "best.pt").card
        differ = _differences(best.training, last.card.training) or _differences(
            {"model": best.model, "dataset": best.dataset}, {"model": last.card.model, "dataset": last.card.dataset}
        )
        if differ:
            raise BadInputError(f"{path} is not from the run whose best.pt is in {run_dir} ({differ}); {advice}")
    history = last.train_state.get("history", [])
    if any((run_dir / name).is_file() for name in ("metrics.jsonl", "metrics.csv")):
        rows = read_metrics(run_dir)
        if len(rows) > len(history) or rows != history[: len(rows)]:
            raise BadInputError(
                f"{path} is not from the run whose metrics are in {run_dir} (their epochs differ); {advice}"
            )


def _differences(found: dict[str, Any], expected: dict[str, Any]) -> str:
    """'model plain20 vs resnet20, ...' for the keys both dicts have and disagree on."""
    return ", ".join(f"{k} {found[k]} vs {expected[k]}" for k in found if k in expected and found[k] != expected[k])


def kept_checkpoints(run_dir: Path) -> str:
    """The checkpoints a failed run leaves behind, for its error line."""
    kept = [str(run_dir / n) for n in ("best.pt", "last.pt") if (run_dir / n).is_file()]
    return ", ".join(kept) if kept else "no checkpoint yet"


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


def draw_curves(run_dir: Path, history: list[dict[str, Any]], config: TrainConfig) -> None:
    if history:
        from toolkit.plots import training_curves

        training_curves(history, run_dir / "curves.png", title=f"{config.model} on {config.dataset}")


def compare_runs(run_dirs: list[str | Path], out: str | Path, title: str = "") -> list[dict[str, Any]]:
    """Draw several runs' curves on one figure; returns each run's best and final accuracy on the split its epochs
    were scored on (val; test in runs from before val splits)."""
    from toolkit.plots import compare_runs as draw
    from toolkit.plots import held_out

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
    return [
        {
            "run": name,
            "epochs": len(h),
            "split": held_out(h),
            "best_acc": max(r[f"{held_out(h)}_acc"] for r in h),
            "final_acc": h[-1][f"{held_out(h)}_acc"],
            "final_train_loss": h[-1]["train_loss"],
        }
        for name, h in runs.items()
    ]
