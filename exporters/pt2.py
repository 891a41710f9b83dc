"""torch.export (``model.pt2``): the successor of TorchScript, with a dynamic batch dimension.

``torch.export.export`` captures the whole graph ahead of time (it fails
loudly where TorchScript tracing would silently specialise), ``torch.export.save``
stores it with the ModelCard as an extra file, and the reload runs a batch of
another size than the example to prove the batch stayed dynamic.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporters import MAX_BATCH, Artifact, ExportContext, register_exporter
from exporters.validation import compare, reference, require_fp32_match
from toolkit.card import EXTRA_FILE_NAME, ModelCard
from toolkit.errors import CheckFailedError
from toolkit.fileio import atomic_path

EXAMPLE_BATCH = 2  # torch.export specialises sizes 0 and 1, so the example batch is 2


def exported_program(model: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """The model as an ExportedProgram whose first input dimension is symbolic ("batch")."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, UserWarning))
        return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


FILES = {"fp32": "model.pt2"}


@register_exporter("pt2", precisions=("fp32",), runtime="pt2", files=FILES)
def export(
    model: torch.nn.Module,
    card: ModelCard,
    out_dir: Path,
    *,
    precision: str,
    target: str | None,
    context: ExportContext,
) -> Artifact:
    batch, expected, source = reference(model, card, context)
    program = exported_program(model, torch.from_numpy(batch[:EXAMPLE_BATCH].copy()))
    path = Path(out_dir) / FILES[precision]
    with atomic_path(path) as tmp:
        buffer = io.BytesIO()  # torch.export names files by their ending; the temporary name has none
        torch.export.save(program, buffer, extra_files={EXTRA_FILE_NAME: card.to_json()})
        tmp.write_bytes(buffer.getvalue())
        stats = _reload_and_compare(tmp, batch, expected, source)
        require_fp32_match(path.name, stats, expected)  # inside: a failed check leaves no file
    return Artifact(
        format="pt2",
        precision=precision,
        path=path,
        runtime="pt2",
        settings={"dynamic_batch": [1, MAX_BATCH], "example_batch": EXAMPLE_BATCH, "torch": torch.__version__},
        validation=stats,
    )


def _reload_and_compare(path: Path, batch: np.ndarray, expected: np.ndarray, source: str) -> dict[str, Any]:
    extra = {EXTRA_FILE_NAME: ""}
    loaded = torch.export.load(io.BytesIO(path.read_bytes()), extra_files=extra)
    if not extra[EXTRA_FILE_NAME]:
        raise CheckFailedError(f"{path.name}: the model card did not survive the round trip")
    with torch.no_grad():
        got = loaded.module()(torch.from_numpy(batch)).numpy()
    return compare(expected, got, source)
