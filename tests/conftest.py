"""Shared fixtures: a real `rtool` subprocess runner and small checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from toolkit.card import InputSpec
from toolkit.checkpoint import make_card, save_checkpoint
from toolkit.models import create_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    """Two cores on CI: keep each test process from oversubscribing them."""
    torch.set_num_threads(2)


def run_rtool(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *map(str, args)], cwd=cwd or REPO,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def rtool():
    return run_rtool


def assert_one_line_error(result: subprocess.CompletedProcess, code: int = 2, contains: str = "") -> None:
    """Bad input: the given exit code, one line on stderr, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rtool: error:"), lines[0]
    assert contains.lower() in lines[0].lower(), lines[0]


MNIST_SPEC = InputSpec(channels=1, height=28, width=28, mean=[0.1311], std=[0.3083])


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory) -> Path:
    """An untrained resnet20 with an mnist5k card: fast, and a real rtool checkpoint."""
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1, num_classes=10)
    card = make_card("resnet20", class_names=[str(d) for d in range(10)], input_spec=MNIST_SPEC, dataset="mnist5k")
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "untrained.pt", model, card)
