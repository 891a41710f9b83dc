"""DistributedDataParallel: two CPU processes (gloo) on tiny data, through `rtool train --nproc` and torchrun."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, run_rtool
from toolkit.checkpoint import load_checkpoint, load_model
from toolkit.train import read_metrics

TINY = ["--train-limit", "256", "--test-limit", "64", "--epochs", "1", "--batch-size", "64"]


def _check_run(out, world_size: int) -> None:
    model, card = load_model(out / "best.pt")
    assert card.training["world_size"] == world_size and card.model == "resnet20"
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    state = load_checkpoint(out / "last.pt").train_state
    assert state["world_size"] == world_size and state["epoch"] == 1
    rows = read_metrics(out)
    assert len(rows) == 1 and 0.0 <= rows[0]["val_acc"] <= 1.0
    assert 0.0 <= card.metrics["test_acc"] <= 1.0 and card.metrics["test_images"] == 64
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "curves.png", "last.pt", "metrics.csv", "metrics.jsonl"]


def test_rtool_train_nproc_2(tmp_path):
    out = tmp_path / "ddp"
    result = run_rtool("train", "--nproc", "2", "--out", out, *TINY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("best val accuracy") == 1 and result.stdout.count("test: accuracy") == 1  # rank 0
    _check_run(out, 2)
    resumed = run_rtool("train", "--out", out, "--resume")  # a 2-process run resumes with 2 processes only
    assert resumed.returncode == 2 and "2 process" in resumed.stderr


def test_torchrun_module_entry_point(tmp_path):
    out = tmp_path / "torchrun"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "toolkit.train",
            "--out",
            str(out),
            "--quiet",
            *TINY,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _check_run(out, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none is usable here)")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_amp_channels_last(tmp_path, amp):
    out = tmp_path / amp
    result = run_rtool("train", "--device", "cuda", "--amp", amp, "--out", out, *TINY)
    assert result.returncode == 0, result.stderr
    model, card = load_model(out / "best.pt")
    assert card.training["amp"] == amp
    assert all(v.device.type == "cpu" and v.dtype != torch.float16 for v in model.state_dict().values())


def test_fp16_on_cpu_is_refused(tmp_path):
    result = run_rtool("train", "--device", "cpu", "--amp", "fp16", "--out", tmp_path / "x", *TINY)
    assert result.returncode == 2 and "fp16 needs --device cuda" in result.stderr
