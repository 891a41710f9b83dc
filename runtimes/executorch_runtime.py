"""ExecuTorch (``.pte``) through ``executorch.runtime``, on the CPU with the XNNPACK delegate rtool lowers to.

The program is flatbuffer-verified at load (``Verification.InternalConsistency``),
its card and batch limit are read from its constant methods (else the
manifest beside it), and larger batches are split by ``infer_in_batches``.
XNNPACK's thread pool is one per process; ``threads`` resizes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporters.executorch_common import (
    executorch_missing,
    load_program,
    planned_batch,
    quiet_native_stderr,
    stored_card_json,
)
from runtimes import Runtime, error_summary, physical_cores, register_runtime
from runtimes.cards import card_beside, card_from_json
from toolkit.devices import parse_device
from toolkit.errors import BadInputError


@register_runtime
class ExecuTorchRuntime(Runtime):
    """Options: ``threads`` (XNNPACK's thread pool; default: physical cores)."""

    name = "executorch"
    suffixes = (".pte",)
    formats = ("executorch",)
    order = 34
    devices = ("cpu",)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        missing = executorch_missing()
        return not missing, missing

    def load(self, artifact_path: str | Path, device: str = "auto") -> None:
        import torch

        self._torch = torch
        path = self.expect_file(artifact_path)
        if parse_device(device)[0] == "cuda":  # the programs are lowered to XNNPACK, a CPU backend
            self.notes.append(f"--device {device}: the executorch runtime runs on the CPU (XNNPACK)")
        program = load_program(path, self.options.get("threads") or physical_cores())
        stored = stored_card_json(program)
        self.card = card_from_json(stored, path) if stored else card_beside(path)
        if self.card is None:
            raise BadInputError(f"{path.name} carries no rtool model card; export it with `rtool export`")
        try:
            with quiet_native_stderr():
                self.method = program.load_method("forward")
                self.max_batch = planned_batch(self.method)
                self.method.execute([torch.zeros((1, *self.card.input.shape))])  # starts XNNPACK's pool quietly
        except (RuntimeError, IndexError) as e:
            raise BadInputError(f"{path.name} does not run in ExecuTorch ({error_summary(e)}); re-export it") from None
        self.program = program
        self.device = "CPU (XNNPACK)"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self.method.execute([self._torch.from_numpy(batch)])[0].numpy()
        except RuntimeError as e:
            raise BadInputError(
                f"ExecuTorch failed to run this model ({error_summary(e)}); the file may be corrupt, re-export it"
            ) from None

    def close(self) -> None:
        self.method = None
        self.program = None
