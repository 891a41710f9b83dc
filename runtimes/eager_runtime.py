"""The reference: the trained PyTorch model from an rtool checkpoint, on CPU or CUDA.

The PyTorch runtimes import torch when they load, not when they register, so
listing runtimes or running an ONNX file never pays for importing PyTorch.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from runtimes import Runtime, register_runtime, resolve_device
from toolkit.errors import BadInputError


@register_runtime
class EagerRuntime(Runtime):
    name = "eager"
    suffixes = (".pt", ".pth")
    formats = ("checkpoint",)
    order = 0
    devices = ("cpu", "cuda")

    def load(self, artifact_path: str | Path, device: str = "auto") -> None:
        path = self.expect_file(artifact_path)
        if not zipfile.is_zipfile(path):  # every torch.save since PyTorch 1.6 is a zip archive
            raise BadInputError(
                f"{path.name} is not a readable PyTorch checkpoint (not a zip archive); "
                f"give an rtool checkpoint (best.pt)"
            )
        from toolkit.checkpoint import load_model

        self.device = resolve_device(device, self.options.get("threads"))
        model, self.card = load_model(path)
        self.model = model.to(self.device)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits = self.model(torch.from_numpy(batch).to(self.device))
        return logits.float().cpu().numpy()

    def close(self) -> None:
        self.model = None
