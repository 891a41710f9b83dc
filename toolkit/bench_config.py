"""The settings of `rtool bench`, apart from the timing code so that the CLI builds its flags without loading it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from exporters import MAX_BATCH
from toolkit.errors import BadInputError
from toolkit.flags import setting


@dataclass
class BenchSettings:
    """How `rtool bench` times (its flags come from here): one default and one rule per setting."""

    batch_sizes: str = setting("1,8,32", "Comma list of batch sizes.")
    warmup: int = setting(10, "Untimed calls first.", low=0)
    iters: int = setting(50, "Timed calls per row.", low=1)
    threads: int | None = setting(None, "CPU threads (default: physical cores).", low=1)

    def validate(self) -> None:
        parse_batch_sizes(self.batch_sizes)


def parse_batch_sizes(text: str | Iterable[int]) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; each a positive integer."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        sizes = [int(p) for p in parts if str(p).strip()]
    except ValueError:
        raise BadInputError(f"--batch-sizes '{text}' is not a list of integers like 1,8,32") from None
    if not sizes or any(s < 1 for s in sizes):
        raise BadInputError(f"--batch-sizes '{text}': give positive integers like 1,8,32")
    if max(sizes) > MAX_BATCH:
        raise BadInputError(
            f"--batch-sizes: {max(sizes)} is above {MAX_BATCH}, the largest batch an rtool export takes"
        )
    return list(dict.fromkeys(sizes))
