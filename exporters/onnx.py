"""ONNX (``model.onnx``, ``model.fp16.onnx``, ``model.int8-cpu.onnx``, ``model.int8-trt.onnx``).

Every file is one self-contained protobuf (weights inside, no ``.onnx.data``
side file) so an app can embed it; input ``input`` (N, C, H, W) float32 with
a dynamic batch axis, output ``logits``; the ModelCard in ``metadata_props``.
Before a file is declared written it passes ``onnx.checker`` (full check) and
runs in ONNX Runtime (CPU provider) on a real batch next to the eager model.

FP16 converts weights and compute but keeps float32 inputs/outputs, so callers
feed the same arrays at every precision. INT8 lives in ``exporters.onnx_int8``,
the raw-pixel variant for apps (``--embed-preprocessing``) in
``exporters.onnx_embed``. The FP32 graph is exported once per run and shared
through the run's cache by the FP16, INT8, TensorRT and Triton exporters.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from exporters import Artifact, ExportContext, register_exporter
from exporters.onnx_common import (
    EXAMPLE_BATCH,
    INPUT_NAME,
    MAX_BATCH,
    OUTPUT_NAME,
    OnnxOptions,
    check_file,
    opset_of,
    run_onnxruntime,
    save_single_file,
    torch_to_onnx,
    with_card,
)
from exporters.onnx_embed import EmbedOptions, export_embedded
from exporters.onnx_int8 import TARGETS, Int8Options, int8_graph
from exporters.validation import compare, held_out, reference, require_fp32_match, validation_data
from toolkit.card import ModelCard
from toolkit.errors import BadInputError
from toolkit.fileio import atomic_path

FILES = {
    "fp32": "model.onnx",
    "fp16": "model.fp16.onnx",
    "int8-cpu": "model.int8-cpu.onnx",
    "int8-tensorrt": "model.int8-trt.onnx",
}


def fp32_graph(model: torch.nn.Module, card: ModelCard, context: ExportContext) -> onnx.ModelProto:
    """The model as an FP32 ONNX graph (in memory), exported by torch's torch.export-based exporter."""
    opset = context.option(OnnxOptions).opset

    def build() -> onnx.ModelProto:
        batch, _, _ = reference(model, card, context)
        return torch_to_onnx(model, torch.from_numpy(batch[:EXAMPLE_BATCH].copy()), opset, OUTPUT_NAME)

    return context.cached(("onnx", "fp32", opset), build)


def fp16_graph(model: torch.nn.Module, card: ModelCard, context: ExportContext) -> onnx.ModelProto:
    """FP16 weights and compute, float32 inputs/outputs (``keep_io_types``) so callers need not change."""
    from onnxconverter_common.float16 import convert_float_to_float16

    fp32 = fp32_graph(model, card, context)

    def build() -> onnx.ModelProto:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the converter warns about values it clamps to the FP16 range
            return convert_float_to_float16(fp32, keep_io_types=True)

    return context.cached(("onnx", "fp16", opset_of(fp32)), build)


def onnx_graph(
    model: torch.nn.Module, card: ModelCard, precision: str, context: ExportContext, target: str | None = None
) -> tuple[onnx.ModelProto, dict]:
    """(graph with the card in its metadata, settings for the manifest) at ``precision`` (and INT8 ``target``)."""
    fp32 = fp32_graph(model, card, context)
    settings: dict = {
        "opset": opset_of(fp32),
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "dynamic_batch": [1, MAX_BATCH],
        "exporter": f"torch.onnx (dynamo) {torch.__version__}",
    }
    if precision == "fp32":
        proto = fp32
    elif precision == "fp16":
        proto = fp16_graph(model, card, context)
        settings["converter"] = "onnxconverter_common.float16 (keep_io_types)"
    elif precision == "int8":
        proto, quantization = int8_graph(fp32, card, target or TARGETS[0], context, held_out(model, card, context))
        settings.update(quantization)
    else:
        raise BadInputError(f"unknown precision '{precision}'; choose fp32, fp16 or int8")
    return with_card(proto, card), settings


@register_exporter(
    "onnx",
    precisions=("fp32", "fp16", "int8"),
    runtime="onnxruntime",
    files=FILES,
    targets={"int8": TARGETS},
    options=(OnnxOptions, Int8Options, EmbedOptions),
    owns=(r"model\.raw(-softmax)?\.onnx",),
)
def export(
    model: torch.nn.Module,
    card: ModelCard,
    out_dir: Path,
    *,
    precision: str,
    target: str | None,
    context: ExportContext,
) -> list[Artifact]:
    """The file at ``precision``; at FP32 with --embed-preprocessing also the raw-pixel variant for apps."""
    target = (target or TARGETS[0]) if precision == "int8" else None
    proto, settings = onnx_graph(model, card, precision, context, target)
    path = Path(out_dir) / FILES[f"{precision}-{target}" if target else precision]
    batch, expected, source = validation_data(model, card, precision, context)
    with atomic_path(path) as tmp:
        save_single_file(proto, tmp)
        check_file(tmp, path.name)
        # The TensorRT form is checked as TensorRT computes it: Q/DQ in float with exact integer ranges.
        # (ONNX Runtime's x86 S8S8 kernels can saturate, which says nothing about the engine.)
        simulate = target == "tensorrt"
        stats = compare(expected, run_onnxruntime(tmp, batch, precision, simulate=simulate), source)
        if simulate:
            stats["onnxruntime"] = "Q/DQ simulated in float (graph optimizations off), as TensorRT computes"
        if precision == "fp32":
            require_fp32_match(path.name, stats, expected)  # inside: a failed check leaves no file
    artifacts = [
        Artifact(
            format="onnx",
            precision=precision,
            path=path,
            runtime="onnxruntime",
            target=target,
            settings=settings,
            validation=stats,
        )
    ]
    if precision == "fp32" and context.option(EmbedOptions).embed_preprocessing:
        artifacts.append(export_embedded(model, card, Path(out_dir), context))
    return artifacts
