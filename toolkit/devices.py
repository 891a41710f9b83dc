"""The --device flag of infer, eval, parity and bench: one default, one rule, no heavy imports.

'auto' (the default) lets each runtime take its own best device: a CUDA GPU,
TensorRT or ONNX Runtime's GPU providers where usable, else the CPU. 'cuda:N'
picks a GPU; the runtimes pass N on (torch device, ONNX Runtime ``device_id``,
the TensorRT engine's GPU).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from toolkit.errors import BadInputError
from toolkit.flags import setting

DEVICE_PATTERN = r"auto|cpu|cuda(:[0-9]+)?"
DEVICE_HELP = (
    "Where each runtime runs: auto (each on its own best device: a CUDA GPU, TensorRT or ONNX Runtime's "
    "GPU providers where usable, else the CPU), cpu, cuda or cuda:N."
)


@dataclass(frozen=True)
class DeviceSettings:
    """The --device flag of infer, eval, parity and bench: one default, one rule."""

    device: str = setting("auto", DEVICE_HELP, pattern=DEVICE_PATTERN)

    def __post_init__(self) -> None:
        parse_device(self.device)


def parse_device(device: str) -> tuple[str, int]:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> (kind, CUDA index); 'cuda' and 'auto' mean index 0."""
    if not isinstance(device, str) or not re.fullmatch(DEVICE_PATTERN, device):
        raise BadInputError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N (e.g. cuda:1)")
    kind, _, index = device.partition(":")
    return kind, int(index or 0)
