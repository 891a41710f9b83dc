"""Start several real `rtool` processes at once.

They spend most of their time importing PyTorch, so two at a time roughly
halves the wall time of a test that needs many of them on two cores.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

from conftest import run_rtool


def run_many(
    commands: dict[str, tuple], timeout: float = 120, workers: int = 2
) -> dict[str, subprocess.CompletedProcess]:
    """Run ``rtool`` with each argument tuple, ``workers`` at a time; results by the same keys."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {key: pool.submit(run_rtool, *args, timeout=timeout) for key, args in commands.items()}
        return {key: future.result() for key, future in futures.items()}
