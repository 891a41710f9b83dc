"""Run many `rtool` command lines for one test, each through the real entry point in this process.

The CLI's parsing, one-line errors and exit codes are the console script's
(``conftest.run_cli``); running them in-process spares each row the PyTorch
import that dominated a subprocess per row. Tests that need a real process
(signals, fresh memory, the console script itself) call ``run_rtool``.
"""

from __future__ import annotations

import subprocess

from conftest import run_cli


def run_many(commands: dict[str, tuple], timeout: float = 120) -> dict[str, subprocess.CompletedProcess]:
    """Run ``rtool`` with each argument tuple; results by the same keys."""
    return {key: run_cli(*args, timeout=timeout) for key, args in commands.items()}
