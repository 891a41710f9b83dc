"""ExecuTorch (``model.pte``, ``model.int8.pte``): PyTorch's on-device runtime, lowered to the XNNPACK delegate.

``torch.export`` (dynamic batch up to ``--pte-max-batch``) ->
``to_edge_transform_and_lower`` with the ``XnnpackPartitioner`` -> ``.pte``.
INT8 is PT2E post-training quantization with the XNNPACK quantizer
(symmetric int8, per-channel weights), calibrated on the same training images
as the ONNX INT8 files (``--calib-size``); its observers take min/max ranges
whatever ``--calib-method`` says. The manifest records how many graph nodes
the delegate took (what it did not take runs on ExecuTorch's portable
kernels, much slower). The card and the batch limit live in the program as
constant methods (``exporters.executorch_common``); the program is loaded with
``executorch.runtime`` and compared with eager before it is written.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporters import MAX_BATCH, Artifact, ExportContext, register_exporter
from exporters.executorch_common import (
    CARD_METHOD,
    executorch_missing,
    load_program,
    planned_batch,
    quiet_logs,
    quiet_native_stderr,
)
from exporters.onnx_int8 import CALIB_BATCH, Int8Options, calibration_batch
from exporters.validation import compare, require_fp32_match, validation_data
from toolkit.card import ModelCard
from toolkit.errors import CheckFailedError
from toolkit.fileio import atomic_path
from toolkit.flags import setting

FILES = {"fp32": "model.pte", "int8": "model.int8.pte"}
EXAMPLE_BATCH = 2  # torch.export specialises sizes 0 and 1


@dataclass(frozen=True)
class ExecuTorchOptions:
    """How ExecuTorch programs are built."""

    pte_max_batch: int = setting(
        32, "Largest batch an ExecuTorch program takes (1: a fixed batch of one).", low=1, high=MAX_BATCH
    )


def available() -> tuple[bool, str]:
    missing = executorch_missing()
    return not missing, missing


def capture(module: torch.nn.Module, example: torch.Tensor, max_batch: int) -> torch.export.ExportedProgram:
    """``module`` through torch.export, its batch dimension symbolic up to ``max_batch`` (fixed at 1 for 1)."""
    shapes = ({0: torch.export.Dim("batch", min=1, max=max_batch)},) if max_batch > 1 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, UserWarning))
        return torch.export.export(module, (example,), dynamic_shapes=shapes)


def quantized(
    model: torch.nn.Module, example: torch.Tensor, calibration: np.ndarray, max_batch: int
) -> torch.export.ExportedProgram:
    """PT2E INT8: prepare with the XNNPACK quantizer, run the calibration images, convert, export again."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    class PostTrainingQuantizer(XNNPACKQuantizer):
        """The XNNPACK quantizer without its conv+batch-norm patterns: they are for QAT (prepare_pt2e folds
        batch norm into the convolution first), and exporting them to match against cost most of the time
        (resnet20 here: 20 s of CPU to quantize with them, 4 s without)."""

        SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if "_bn" not in p.name]

    quantizer = PostTrainingQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, UserWarning))
        prepared = prepare_pt2e(capture(model, example, max_batch).module(), quantizer)
        step = min(CALIB_BATCH, max_batch)
        with torch.no_grad():
            for start in range(0, len(calibration), step):
                prepared(torch.from_numpy(np.ascontiguousarray(calibration[start : start + step])))
        converted = convert_pt2e(prepared)
    return capture(converted, example, max_batch)


def lower(program: torch.export.ExportedProgram, card: ModelCard, max_batch: int) -> tuple[bytes, dict[str, Any]]:
    """(.pte bytes, what the XNNPACK delegate took), with the card as a constant method.

    NNPACK and oneDNN are off while lowering and planning memory: both run each convolution on fake tensors,
    and PyTorch's CPU backend choice asks "batch >= 16?" (NNPACK's rule), which pins the symbolic batch below
    16 (measured with torch 2.14: a program exported for batch 1..64 was planned for 15). The lowered program
    runs on XNNPACK either way.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    constants = {CARD_METHOD: torch.tensor(list(card.to_json().encode("utf-8")), dtype=torch.uint8)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # also mkldnn.flags' note that TF32 needs an Intel GPU
        with torch.backends.nnpack.flags(enabled=False), torch.backends.mkldnn.flags(enabled=False):
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()], constant_methods=constants)
            info = get_delegation_info(edge.exported_program().graph_module)
            buffer = edge.to_executorch().buffer  # memory planning: it runs the graph on fake tensors too
    delegation = {
        "delegate": "XNNPACK",
        "delegated_nodes": info.num_delegated_nodes,
        "non_delegated_nodes": info.num_non_delegated_nodes,
        "delegated_subgraphs": info.num_delegated_subgraphs,
    }
    return buffer, delegation


def run_pte(path: Path, batch: np.ndarray, max_batch: int) -> np.ndarray:
    """Logits of the program as written, in chunks of its batch limit; batch 1 must agree with the first row."""
    program = load_program(path)
    with quiet_native_stderr():
        forward = program.load_method("forward")
        if planned_batch(forward) != max_batch:
            raise CheckFailedError(
                f"ExecuTorch planned the program for batches up to {planned_batch(forward)}, not the {max_batch} "
                f"asked for (--pte-max-batch); not written"
            )
        outputs = [
            forward.execute([torch.from_numpy(np.ascontiguousarray(batch[s : s + max_batch]))])[0].numpy()
            for s in range(0, len(batch), max_batch)
        ]
        single = forward.execute([torch.from_numpy(np.ascontiguousarray(batch[:1]))])[0].numpy()
    full = np.concatenate(outputs)
    if not np.allclose(single, full[:1], rtol=0, atol=1e-2 * max(1.0, float(np.abs(full).max()))):
        raise CheckFailedError("the ExecuTorch program gives another answer at batch 1 than in a larger batch")
    return full


@register_exporter(
    "executorch",
    precisions=("fp32", "int8"),
    runtime="executorch",
    files=FILES,
    options=(ExecuTorchOptions, Int8Options),
    available=available,
)
def export(
    model: torch.nn.Module,
    card: ModelCard,
    out_dir: Path,
    *,
    precision: str,
    target: str | None,
    context: ExportContext,
) -> Artifact:
    """The ``.pte`` at ``precision``, run by executorch.runtime and compared with eager before it is written."""
    import executorch.version

    batch, expected, source = validation_data(model, card, precision, context)
    max_batch = context.option(ExecuTorchOptions).pte_max_batch
    example = torch.from_numpy(batch[: min(EXAMPLE_BATCH, max_batch)].copy())
    settings: dict[str, Any] = {"max_batch": max_batch, "executorch": executorch.version.__version__}
    with quiet_logs():
        if precision == "int8":
            options = context.option(Int8Options)
            calibration, calib_source = calibration_batch(card, options.calib_size, context)
            program = quantized(model, example, calibration, max_batch)
            settings.update(
                quantization="PT2E static, XNNPACKQuantizer (symmetric int8, per-channel weights)",
                calibration={"method": "minmax (the quantizer's observers)", "images": len(calibration)},
            )
            settings["calibration"]["source"] = calib_source
            if options.max_accuracy_drop is not None:
                context.notes.append(
                    "--max-accuracy-drop applies to the ONNX INT8 graphs (onnx, ort, openvino); the ExecuTorch INT8 "
                    "file is quantized whole and held to the int8 thresholds"
                )
            if options.calib_method != "minmax":
                note = f"ExecuTorch INT8 is calibrated with min/max ranges; --calib-method {options.calib_method} "
                note += "applies to the ONNX INT8 files only"
                context.notes.append(note)
        else:
            program = capture(model, example, max_batch)
        buffer, delegation = lower(program, card, max_batch)
    settings.update(delegation)
    path = Path(out_dir) / FILES[precision]
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer)
        stats = compare(expected, run_pte(tmp, batch, max_batch), source)
        if precision == "fp32":
            require_fp32_match(path.name, stats, expected)
    return Artifact(
        format="executorch", precision=precision, path=path, runtime="executorch", settings=settings, validation=stats
    )
