"""One rule for every command's rich console, so piped output reads the same everywhere."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def make_console(stderr: bool = False, **options: Any) -> Console:
    """A rich console; piped output without COLUMNS gets a wide one, so a table row stays one line for grep.

    rich falls back to 80 columns when its stream is not a terminal, which cut
    and wrapped tables written to files and pipes.
    """
    from rich.console import Console

    class PipeFriendlyConsole(Console):
        def on_broken_pipe(self) -> None:
            """The reader left (`rtool infer ... | head -1`): stop quietly with 0; rich's own exit 1 reads as a
            failed check."""
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(0)

    if (sys.stderr if stderr else sys.stdout).isatty() or os.environ.get("COLUMNS", "").isdigit():
        return PipeFriendlyConsole(stderr=stderr, **options)
    return PipeFriendlyConsole(stderr=stderr, width=1000, **options)
