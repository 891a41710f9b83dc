"""OpenVINO IR (``model.openvino.xml`` + ``.bin``): FP32, FP16, BF16 and INT8, converted from rtool's ONNX graphs.

FP32, FP16 and BF16 come from the FP32 ONNX graph (``ov.convert_model``),
INT8 from the calibrated Q/DQ graph for CPUs (``model.int8-cpu.onnx``'s graph,
same calibration images): OpenVINO turns Q/DQ pairs into FakeQuantize and runs
those layers with int8 kernels. ``ov.save_model`` compresses weights to FP16
unless told otherwise; rtool keeps FP32 weights everywhere but the FP16 IR
(the convolutions would otherwise run on FP16-rounded weights even when f32
is asked for: 3.2e-3 off). BF16 is an FP32 IR compiled with the bf16 hint,
written only where the CPU computes bf16 (AMX or AVX512-BF16).

The ModelCard and the precision live in the IR's ``rt_info`` (``rtool/card``,
``rtool/precision``), so the .xml carries what ONNX keeps in
``metadata_props``. Each IR is compiled for the CPU at its explicit
inference precision and checked against eager before it is written; the
``.bin`` is recorded with its .xml in the manifest (``companions``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporters import Artifact, ExportContext, register_exporter
from exporters.onnx import onnx_graph
from exporters.onnx_common import OnnxOptions, save_single_file
from exporters.onnx_int8 import Int8Options
from exporters.openvino_common import (
    CARD_KEY,
    PRECISION_KEY,
    compile_for_cpu,
    core,
    cpu_description,
    openvino_missing,
    precision_support,
)
from exporters.validation import compare, require_fp32_match, validation_data
from toolkit.card import ModelCard
from toolkit.errors import CheckFailedError
from toolkit.fileio import atomic_write_bytes

FILES = {
    "fp32": "model.openvino.xml",
    "fp16": "model.fp16.openvino.xml",
    "bf16": "model.bf16.openvino.xml",
    "int8": "model.int8.openvino.xml",
}
ONNX_SOURCE = {"fp32": "fp32", "fp16": "fp32", "bf16": "fp32", "int8": "int8"}  # the ONNX graph each IR comes from


def available() -> tuple[bool, str]:
    missing = openvino_missing()
    return not missing, missing


def convert(proto: Any, precision: str, card: ModelCard, folder: Path) -> Path:
    """The ONNX graph as an IR in ``folder`` (model.xml + model.bin) with the card and precision in rt_info."""
    import openvino as ov

    source = folder / "source.onnx"
    save_single_file(proto, source)
    model = ov.convert_model(str(source))
    model.set_rt_info(card.to_json(), CARD_KEY)
    model.set_rt_info(precision, PRECISION_KEY)
    xml = folder / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=precision == "fp16")
    source.unlink()
    return xml


def run_ir(xml: Path, batch: np.ndarray, precision: str) -> tuple[np.ndarray, str]:
    """(logits of the IR as written, the inference precision used); batch 1 must agree (dynamic batch axis)."""
    compiled, hint = compile_for_cpu(core().read_model(str(xml)), precision)
    request = compiled.create_infer_request()
    full = np.array(request.infer({0: batch})[0])
    single = np.array(request.infer({0: batch[:1]})[0])
    tolerance = (1e-4 if precision == "fp32" else 1e-2) * max(1.0, float(np.abs(full).max()))
    if single.shape != full[:1].shape or not np.allclose(single, full[:1], rtol=0, atol=tolerance):
        raise CheckFailedError(
            f"the OpenVINO IR gives another answer at batch 1 than at batch {len(batch)}: its batch axis is not dynamic"
        )
    return full, hint


@register_exporter(
    "openvino",
    precisions=("fp32", "fp16", "bf16", "int8"),
    runtime="openvino",
    files=FILES,
    options=(OnnxOptions, Int8Options),
    available=available,
    precision_available=precision_support,
    owns=(r"model(\.(fp16|bf16|int8))?\.openvino\.bin",),
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
    """The IR at ``precision``, compiled at its inference precision and compared with eager before it is written."""
    import openvino as ov

    batch, expected, source = validation_data(model, card, precision, context)
    proto, settings = onnx_graph(model, card, ONNX_SOURCE[precision], context, "cpu" if precision == "int8" else None)
    path = Path(out_dir) / FILES[precision]
    weights = path.with_suffix(".bin")
    with tempfile.TemporaryDirectory(prefix=".rtool-openvino-", dir=out_dir) as work:
        xml = convert(proto, precision, card, Path(work))
        got, hint = run_ir(xml, batch, precision)
        stats = compare(expected, got, source)
        if precision == "fp32":
            require_fp32_match(path.name, stats, expected)
        atomic_write_bytes(weights, xml.with_suffix(".bin").read_bytes())
        atomic_write_bytes(path, xml.read_bytes())
    settings.update(
        converter=f"openvino.convert_model {ov.__version__} from the {ONNX_SOURCE[precision]} ONNX graph",
        weights="fp16 (compress_to_fp16)" if precision == "fp16" else ("int8" if precision == "int8" else "fp32"),
        inference_precision=hint,
        checked_on=f"OpenVINO CPU ({cpu_description()[0]})",
    )
    return Artifact(
        format="openvino",
        precision=precision,
        path=path,
        runtime="openvino",
        target=None,
        settings=settings,
        validation=stats,
        companions=[weights],
    )
