"""TorchScript (.ts): the model as a standalone program, card in its extra files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from runtimes import Runtime, error_summary, register_runtime, resolve_device, run_torch_module
from runtimes.cards import card_beside, card_from_json
from toolkit.card import EXTRA_FILE_NAME
from toolkit.errors import BadInputError


@register_runtime
class TorchScriptRuntime(Runtime):
    name = "torchscript"
    suffixes = (".ts",)
    formats = ("torchscript",)
    order = 10
    devices = ("cpu", "cuda")

    def load(self, artifact_path: str | Path, device: str = "auto") -> None:
        path = self.expect_file(artifact_path)
        import torch

        self.device = resolve_device(device, self.options.get("threads"))
        extra = {EXTRA_FILE_NAME: ""}
        try:
            with warnings.catch_warnings():  # TorchScript is in maintenance; the format is still required
                warnings.simplefilter("ignore", FutureWarning)
                self.module = torch.jit.load(str(path), map_location=self.device, _extra_files=extra)
        except (RuntimeError, ValueError, OSError) as e:
            raise BadInputError(f"{path.name} is not a readable TorchScript file ({error_summary(e)})") from None
        self.module.eval()
        self.card = card_from_json(extra[EXTRA_FILE_NAME], path) if extra[EXTRA_FILE_NAME] else card_beside(path)
        if self.card is None:
            raise BadInputError(f"{path.name} carries no rtool model card; export it with `rtool export`")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return run_torch_module(self.module, batch, self.device, "TorchScript")

    def close(self) -> None:
        self.module = None
