"""Bad training input through the real entry point, in-process (toolkit.cli.main): one line, exit 2, nothing written.

Numbers that would train on NaN, overflow a seed, ask for more processes than cores or pad images by
100000 pixels are refused before any work (at parsing, or for --shift once the image size is known).
--resume refuses --overwrite, and a last.pt that is not the run in the folder (another model or seed),
which it used to continue, overwriting that run's metrics and curves. A killed --nproc worker leaves no
``pytorch-errorfile-*.pickle`` behind in the temporary folder (a real `rtool train --nproc 2` process).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from toolkit.cli import main
from toolkit.train import TrainConfig, run_training
from toolkit.train.distributed import usable_cpus

from conftest import REPO

TINY = ("--train-limit", "64", "--test-limit", "32", "--epochs", "1", "--batch-size", "32", "--quiet")
CORES = usable_cpus()

# name -> (flags added to a tiny `rtool train --out NEW`, what the one line must say)
FLAG_ROWS = {
    "momentum nan": (("--momentum", "nan"), "'--momentum': 'nan' is not a finite number"),
    "momentum above 1": (("--momentum", "1.5"), "'--momentum': 1.5 is not in the range 0<=x<=1"),
    "weight decay nan": (("--weight-decay", "nan"), "'--weight-decay': 'nan' is not a finite number"),
    "weight decay inf": (("--weight-decay", "inf"), "'--weight-decay': 'inf' is not a finite number"),
    "lr nan": (("--lr", "nan"), "'--lr': 'nan' is not a finite number"),
    "lr inf": (("--lr", "inf"), "'--lr': 'inf' is not a finite number"),
    "label smoothing 1": (("--label-smoothing", "1"), "'--label-smoothing': 1.0 is not in the range 0<=x<1"),
    "label smoothing nan": (("--label-smoothing", "nan"), "'--label-smoothing': 'nan' is not a finite number"),
    "label smoothing negative": (("--label-smoothing", "-0.1"), "-0.1 is not in the range 0<=x<1"),
    "seed 1e20": (("--seed", "1e20"), "'--seed': '1e20' is not a valid integer"),
    "seed 10**20": (("--seed", str(10**20)), f"'--seed': {10**20} is not in the range 0<=x<=4294967295"),
    "seed negative": (("--seed", "-1"), "'--seed': -1 is not in the range 0<=x<=4294967295"),
    "epochs huge": (("--epochs", str(10**20)), f"'--epochs': {10**20} is not in the range 1<=x<=100000"),
    "batch size huge": (("--batch-size", str(10**20)), f"'--batch-size': {10**20} is not in the range 1<=x<=65536"),
    "shift 100000": (
        ("--shift", "100000"),
        "--shift 100000 is more than half the smaller side of the 28x28 images; use --shift 14 or less",
    ),
    "nproc over the cores": (
        ("--nproc", str(CORES + 1)),
        f"--nproc {CORES + 1} is more than the {CORES} CPU core(s) this machine gives rtool; use --nproc {CORES}",
    ),
}


def run_main(argv: list) -> tuple[int, str, str]:
    """``rtool ARGV`` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def assert_refused(argv: list, contains: str) -> None:
    code, out, err = run_main(argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (argv, code, out, err)
    assert len(lines) == 1 and lines[0].startswith("rtool: error:"), err
    assert contains in lines[0], lines[0]
    assert "Traceback" not in out + err


@pytest.mark.parametrize("name", FLAG_ROWS)
def test_bad_training_numbers_are_refused_before_any_work(name, tmp_path):
    flags, contains = FLAG_ROWS[name]
    assert_refused(["train", "--out", tmp_path / "run", *TINY, *flags], contains)
    assert not (tmp_path / "run").exists()


def tiny_run(folder: Path, **settings) -> Path:
    run_training(
        TrainConfig(out=str(folder), epochs=1, train_limit=64, test_limit=32, batch_size=32, quiet=True, **settings)
    )
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Three finished one-epoch runs: resnet20 (the run to resume), plain20, and resnet20 with another seed."""
    folder = tmp_path_factory.mktemp("runs")
    return {
        "resnet20": tiny_run(folder / "resnet20"),
        "plain20": tiny_run(folder / "plain20", model="plain20"),
        "seed1": tiny_run(folder / "seed1", seed=1),
    }


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# name -> (the other run whose last.pt is copied in (None: none), files of the run removed, extra flags, line)
RESUME_ROWS = {
    "--resume with --overwrite": (None, (), ("--overwrite",), "--resume and --overwrite exclude each other"),
    "last.pt of another model": ("plain20", (), (), "is not from the run whose best.pt is in"),
    "last.pt of another seed, no best.pt": ("seed1", ("best.pt",), (), "is not from the run whose metrics are in"),
}


@pytest.mark.parametrize("name", RESUME_ROWS)
def test_resume_refuses_what_would_overwrite_the_run(name, runs, tmp_path):
    other, removed, flags, contains = RESUME_ROWS[name]
    run = Path(shutil.copytree(runs["resnet20"], tmp_path / "run"))
    for file in removed:
        (run / file).unlink()
    if other:
        shutil.copy(runs[other] / "last.pt", run / "last.pt")
    before = snapshot(run)
    assert_refused(["train", "--out", run, "--resume", *flags], contains)
    assert snapshot(run) == before  # metrics, curves and checkpoints as they were


def test_the_runs_own_last_pt_still_resumes(runs, tmp_path):
    """The check above refuses only strangers: a finished run's own last.pt resumes (nothing left to do)."""
    run = Path(shutil.copytree(runs["resnet20"], tmp_path / "run"))
    code, out, err = run_main(["train", "--out", run, "--resume"])
    assert code == 0 and "already finished" in out and "best val accuracy" in out, (code, out, err)


def _workers_of(pid: int) -> list[int]:
    """The spawned training processes of ``pid`` (not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"resource_tracker" not in command:
            found.append(int(entry.name))
    return sorted(found)


@pytest.mark.skipif(not Path("/proc").is_dir() or CORES < 2, reason="needs /proc and two CPU cores")
def test_a_killed_worker_leaves_no_torch_error_file(tmp_path):
    """torch's launcher pickles an uncaught worker exception into TMPDIR/pytorch-errorfile-*.pickle, and
    nobody removes it: the survivor of a killed rank used to leave one there (about 25 s on 2 cores)."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(temp), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "toolkit.cli",
            "train",
            "--nproc",
            "2",
            "--epochs",
            "50",
            "--train-limit",
            "64",
            "--test-limit",
            "32",
            "--batch-size",
            "16",
            "--out",
            str(tmp_path / "run"),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()  # the header first, then "epoch   1/50 ...": both workers are training
        while first and not first.startswith("epoch"):
            first = proc.stdout.readline()
        assert first.startswith("epoch"), (first, proc.stderr.read() if proc.poll() is not None else "")
        workers = _workers_of(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = [
        line
        for line in stderr.splitlines()
        if line.strip() and "leaked semaphore" not in line and "warnings.warn(" not in line
    ]
    assert not list(temp.glob("pytorch-errorfile-*")), sorted(p.name for p in temp.iterdir())
    assert proc.returncode == 1 and len(lines) == 1 and "a training process died" in lines[0], stderr
    assert "Traceback" not in stderr
