"""Work killed with SIGKILL at any moment leaves every file under its final name complete.

A real `rtool train` and a real `rtool export` are killed again and again: at seeded random delays,
the moment a temporary file is being written (the checkpoint, the metrics, the manifest), right after
a checkpoint lands, and while an export's staging folder fills. After every kill: each file under a
final name loads (checkpoints with load_checkpoint, ONNX with onnx.load and rtool's checks, JSON and CSV
parse); anything else is a hidden temporary entry that no command reads. `--resume` (or a new export
into the same folder) then finishes the work: every epoch in the metrics, a manifest matching its files.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx
import pytest
from PIL import Image

from toolkit.checkpoint import load_checkpoint
from toolkit.manifest import verify_manifest
from toolkit.safety import check_onnx_file

from conftest import REPO

EPOCHS = 3
TRAIN = (
    "train",
    "--model",
    "resnet20",
    "--dataset",
    "mnist5k",
    "--epochs",
    str(EPOCHS),
    "--train-limit",
    "64",
    "--test-limit",
    "32",
    "--batch-size",
    "16",
    "--quiet",
)
RUN_FILES = {"best.pt", "last.pt", "metrics.csv", "metrics.jsonl", "curves.png"}
EXPORT_FILES = {"model.pt", "model.onnx", "manifest.json"}
TEMP = re.compile(r"^\.(?P<final>.+)\.[A-Za-z0-9_]+\.tmp$")  # toolkit.fileio.atomic_path's temporary files
STAGING = re.compile(r"^\.rtool-export-[A-Za-z0-9_]+$")  # exporters.pipeline's staging folder
SEED = 9  # the random delays; any seed must pass
TIMEOUT = 60

Trigger = Callable[[Path, float], bool]


@dataclass
class Outcome:
    trigger: str
    killed: bool
    seconds: float
    mid_write: list[str] = field(default_factory=list)  # temporary files the kill left behind


def after(seconds: float) -> Trigger:
    return lambda folder, elapsed: elapsed >= seconds


def replaced(name: str) -> Trigger:
    """True once ``name`` is a different file than when the process started: just after an atomic rename."""
    first: dict[str, tuple[int, int] | None] = {}

    def fire(folder: Path, elapsed: float) -> bool:
        now = _identity(folder / name)
        if "start" not in first:
            first["start"] = now
        return now is not None and now != first["start"]

    return fire


def writing(final: str) -> Trigger:
    """True while a temporary file for ``final`` exists (anywhere below the folder), or, should the poll miss
    that moment (a small file is written in well under a millisecond), once ``final`` has been replaced."""
    landed = replaced(final)

    def fire(folder: Path, elapsed: float) -> bool:
        for path in _walk(folder):
            match = TEMP.match(path.name)
            if match and match["final"] == final:
                return True
        return landed(folder, elapsed)

    return fire


def staged(name: str) -> Trigger:
    """True once the export's staging folder holds ``name`` (or, for "", once the folder exists)."""

    def fire(folder: Path, elapsed: float) -> bool:
        return any(
            STAGING.match(p.parent.name if name else p.name) and (not name or p.name == name) for p in _walk(folder)
        )

    return fire


def _walk(folder: Path) -> list[Path]:
    try:
        found = []
        for entry in os.scandir(folder):
            found.append(Path(entry.path))
            if entry.is_dir(follow_symlinks=False):
                found.extend(Path(e.path) for e in os.scandir(entry.path))
        return found
    except FileNotFoundError:  # a folder (or the staging folder) came or went while we looked
        return []


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def run_and_kill(args: tuple, folder: Path, trigger: Trigger | None, name: str) -> Outcome:
    """Start ``rtool ARGS``; SIGKILL it the moment ``trigger`` fires (polled every millisecond)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    before = {p.name for p in _walk(folder) if TEMP.match(p.name)}
    with open(folder.parent / f"{folder.name}.stderr", "w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "toolkit.cli", *map(str, args)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        start = time.monotonic()
        while True:
            elapsed = time.monotonic() - start
            if proc.poll() is not None:
                err.seek(0)
                assert proc.returncode == 0, (name, proc.returncode, err.read())
                return Outcome(name, False, elapsed)
            if trigger is not None and trigger(folder, elapsed):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                left = sorted({p.name for p in _walk(folder) if TEMP.match(p.name)} - before)
                return Outcome(name, True, elapsed, left)
            if elapsed > TIMEOUT:
                proc.kill()
                proc.wait()
                raise AssertionError(f"{' '.join(map(str, args))} ran over {TIMEOUT}s")
            time.sleep(0.001)


def assert_only_complete_files(folder: Path, finals: set[str]) -> None:
    """Every entry is a complete file under a final name, or a hidden temporary one."""
    if not folder.exists():
        return
    for entry in folder.iterdir():
        if entry.name in finals:
            check_complete(entry)
        else:
            assert TEMP.match(entry.name) or STAGING.match(entry.name), f"unexpected entry {entry}"
            assert entry.name.startswith("."), entry  # hidden: never listed or read as output


def check_complete(path: Path) -> None:
    if path.suffix == ".pt":
        assert load_checkpoint(path).state_dict, path
    elif path.suffix == ".onnx":
        onnx.checker.check_model(onnx.load(str(path)))
        check_onnx_file(path)
    elif path.suffix == ".png":
        with Image.open(path) as image:
            image.load()
    elif path.suffix == ".csv":
        rows = list(csv.DictReader(path.read_text().splitlines()))
        assert all(row["epoch"] and row["val_acc"] for row in rows), path
    elif path.suffix in (".json", ".jsonl"):
        for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            json.loads(line)
    else:
        raise AssertionError(f"no check for {path}")


def epochs_done(run: Path) -> tuple[int, list[int]]:
    """(epochs recorded in last.pt, epochs listed in metrics.jsonl)."""
    state = load_checkpoint(run / "last.pt").train_state if (run / "last.pt").exists() else {"epoch": 0}
    jsonl = run / "metrics.jsonl"
    listed = [json.loads(line)["epoch"] for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    return int(state["epoch"]), listed


def report(label: str, outcomes: list[Outcome]) -> str:
    kills = [o for o in outcomes if o.killed]
    mid = [o for o in kills if o.mid_write]
    lines = [
        f"{label}: {len(kills)} kill points ({len(mid)} left a temporary file mid-write), "
        f"{len(outcomes) - len(kills)} run(s) to completion"
    ]
    lines += [
        f"  {o.trigger:<28} {'killed' if o.killed else 'finished'} at {o.seconds:5.2f}s"
        f"{'  left ' + ', '.join(o.mid_write) if o.mid_write else ''}"
        for o in outcomes
    ]
    return "\n".join(lines)


def train_chain(run: Path) -> list[Outcome]:
    """One training run killed again and again, each time resumed from its last.pt (or started afresh)."""
    rng = random.Random(SEED)
    plan = [
        ("random delay", after(rng.uniform(0.5, 3.0))),
        ("writing best.pt", writing("best.pt")),
        ("just after last.pt lands", replaced("last.pt")),
        ("writing last.pt", writing("last.pt")),
        ("writing metrics.jsonl", writing("metrics.jsonl")),
        ("writing curves.png", writing("curves.png")),
    ]
    outcomes: list[Outcome] = []
    for name, trigger in [*plan, ("to the end", None)]:
        resume = (run / "last.pt").exists()
        args = ("train", "--out", run, "--resume", "--quiet") if resume else (*TRAIN, "--out", run, "--overwrite")
        outcomes.append(run_and_kill(args, run, trigger, f"{name}{' (resumed)' if resume else ''}"))
        assert_only_complete_files(run, RUN_FILES)
        saved, listed = epochs_done(run)  # metrics are written after last.pt: they may lag, never lead
        assert listed == list(range(1, len(listed) + 1)) and len(listed) <= saved, (saved, listed)
        if not outcomes[-1].killed:
            break
    return outcomes


def export_chain(out: Path, checkpoint: Path) -> list[Outcome]:
    """One export into one folder killed again and again, then run to the end."""
    rng = random.Random(SEED + 1)
    plan = [
        ("random delay", after(rng.uniform(0.5, 3.0))),
        ("staging folder made", staged("")),
        ("model.onnx staged", staged("model.onnx")),
        ("writing manifest.json", writing("manifest.json")),
    ]  # the files are in place, the manifest not yet
    outcomes: list[Outcome] = []
    for name, trigger in [*plan, ("to the end", None)]:
        outcomes.append(run_and_kill(("export", checkpoint, "--format", "onnx", "--out", out), out, trigger, name))
        assert_only_complete_files(out, EXPORT_FILES)
    return outcomes


@pytest.fixture(scope="module")
def chains(tmp_path_factory, untrained_checkpoint) -> dict[str, Future]:
    """Both chains at once (one thread each, one CPU thread per process): the suite's two cores stay busy."""
    folder = tmp_path_factory.mktemp("interrupted")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            "train": pool.submit(train_chain, folder / "run"),
            "export": pool.submit(export_chain, folder / "export", untrained_checkpoint),
        }
        wait(futures.values())
    return {**futures, "folder": folder}


def test_killed_training_resumes_to_the_same_complete_run(chains):
    run = chains["folder"] / "run"
    outcomes = chains["train"].result()
    summary = report("rtool train", outcomes)
    print(summary)
    assert epochs_done(run) == (EPOCHS, list(range(1, EPOCHS + 1))), summary
    assert {p.name for p in run.iterdir() if not p.name.startswith(".")} == RUN_FILES, summary
    assert sum(o.killed for o in outcomes) >= 5 and any(o.mid_write for o in outcomes), summary


def test_killed_export_never_leaves_a_partial_file(chains):
    out = chains["folder"] / "export"
    outcomes = chains["export"].result()
    summary = report("rtool export", outcomes)
    print(summary)
    assert verify_manifest(out) == [], summary
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == EXPORT_FILES, summary
    assert sum(o.killed for o in outcomes) >= 3, summary
