"""torch.export (.pt2): TorchScript's successor, an ExportedProgram with the card in its extra files.

torch.export.load unpickles parts of the archive, so only open files you
trust; inside an export folder the manifest's sha256 is checked first.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from runtimes import Runtime, error_summary, register_runtime, resolve_device, run_torch_module
from runtimes.cards import card_beside, card_from_json
from toolkit.card import EXTRA_FILE_NAME
from toolkit.errors import BadInputError
from toolkit.safety import check_pt2_archive


@register_runtime
class Pt2Runtime(Runtime):
    name = "pt2"
    suffixes = (".pt2",)
    formats = ("pt2",)
    order = 20
    devices = ("cpu", "cuda")

    def load(self, artifact_path: str | Path, device: str = "auto") -> None:
        path = self.expect_file(artifact_path)
        import torch

        self.device = resolve_device(device, self.options.get("threads"))
        if not zipfile.is_zipfile(path):
            raise BadInputError(f"{path.name} is not a readable torch.export file (not a .pt2 archive); re-export it")
        check_pt2_archive(path)  # torch.export.load would unpickle anything a part needs: refuse all but tensors
        extra = {EXTRA_FILE_NAME: ""}
        export_log = logging.getLogger("torch.export")
        level = export_log.level
        export_log.setLevel(logging.ERROR)  # torch logs a traceback at WARNING before raising its own error
        try:
            program = torch.export.load(str(path), extra_files=extra)
        except Exception as e:  # a damaged archive raises many kinds (BadZipFile, KeyError, SpecViolationError, ...)
            raise BadInputError(f"{path.name} is not a readable torch.export file ({error_summary(e)})") from None
        finally:
            export_log.setLevel(level)
        if self.device != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, self.device)
        self.module = program.module()
        self.card = card_from_json(extra[EXTRA_FILE_NAME], path) if extra[EXTRA_FILE_NAME] else card_beside(path)
        if self.card is None:
            raise BadInputError(f"{path.name} carries no rtool model card; export it with `rtool export`")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return run_torch_module(self.module, batch, self.device, "torch.export program")

    def close(self) -> None:
        self.module = None
