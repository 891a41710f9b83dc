"""Every test in this folder is a reliability test: ``pytest -m reliability`` runs them all.

Shared here: a digit image, copies of the session's export folder (tests may
change the copy) and the marker file a hostile payload would create.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.reliability)


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
