"""TorchScript (``model.ts``): traced, ModelCard in ``_extra_files``, reloaded and compared with eager.

Tracing fits these networks (no data-dependent control flow); the reload runs
a batch of another size than the one traced, which proves the batch
dimension stayed dynamic. TorchScript is in maintenance upstream; ``pt2`` is
its successor, both are written.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporters import Artifact, ExportContext, register_exporter
from exporters.validation import compare, reference, require_fp32_match
from toolkit.card import EXTRA_FILE_NAME, ModelCard
from toolkit.errors import CheckFailedError
from toolkit.fileio import atomic_path

TRACE_BATCH = 2


FILES = {"fp32": "model.ts"}


@register_exporter("torchscript", precisions=("fp32",), runtime="torchscript", files=FILES)
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
    example = torch.from_numpy(batch[:TRACE_BATCH].copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning, torch.jit.TracerWarning))
        with torch.inference_mode(False), torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
        path = Path(out_dir) / FILES[precision]
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files={EXTRA_FILE_NAME: card.to_json()})
            stats = _reload_and_compare(tmp, batch, expected, source)
            require_fp32_match(path.name, stats, expected)  # inside: a failed check leaves no file
    return Artifact(
        format="torchscript",
        precision=precision,
        path=path,
        runtime="torchscript",
        settings={"method": "trace", "trace_batch": TRACE_BATCH, "torch": torch.__version__},
        validation=stats,
    )


def _reload_and_compare(path: Path, batch: np.ndarray, expected: np.ndarray, source: str) -> dict[str, Any]:
    extra = {EXTRA_FILE_NAME: ""}
    loaded = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if not extra[EXTRA_FILE_NAME]:
        raise CheckFailedError(f"{path.name}: the model card did not survive the round trip")
    with torch.no_grad():
        got = loaded(torch.from_numpy(batch)).numpy()
    return compare(expected, got, source)
