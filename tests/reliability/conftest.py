"""Every test in this folder is a reliability test: ``pytest -m reliability`` runs them all.

Shared here: a digit image, copies of the session's export folder (tests may
change the copy), and a runner that starts several real `rtool` processes at
once (they spend most of their time importing PyTorch, so two at a time
roughly halves the wall time on two cores).
"""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_rtool

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.reliability)


def run_many(commands: dict[str, tuple], timeout: float = 120, workers: int = 2) -> dict[str, subprocess.CompletedProcess]:
    """Run ``rtool`` with each argument tuple, ``workers`` at a time; results by the same keys."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {key: pool.submit(run_rtool, *args, timeout=timeout) for key, args in commands.items()}
        return {key: future.result() for key, future in futures.items()}


@pytest.fixture(scope="session")
def digit_png(tmp_path_factory) -> Path:
    """A real 28x28 grey test digit as a PNG file."""
    from toolkit.data import load_dataset

    path = tmp_path_factory.mktemp("digit") / "digit.png"
    Image.fromarray(load_dataset("mnist5k").test.images[0, 0].numpy().astype(np.uint8), mode="L").save(path)
    return path


@pytest.fixture
def export_copy(cpu_export_dir, tmp_path) -> Path:
    """A private copy of the session's export folder (every format this machine builds, with manifest.json)."""
    return Path(shutil.copytree(cpu_export_dir, tmp_path / "export"))


@pytest.fixture
def marker(tmp_path) -> Path:
    """The file a hostile payload would create if it ever ran."""
    return tmp_path / "PAYLOAD-RAN"
