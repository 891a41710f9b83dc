"""ONNX (``model.onnx``, ``model.fp16.onnx``, ``model.int8-cpu.onnx``, ``model.int8-trt.onnx``).

Every file is one self-contained protobuf (weights inside, no ``.onnx.data``
side file) so an app can embed it; input ``input`` (N, C, H, W) float32 with
a dynamic batch axis, output ``logits``; the ModelCard in ``metadata_props``.
Before a file is declared written it passes ``onnx.checker`` (full check) and
runs in ONNX Runtime (CPU provider) on a real batch next to the eager model.

FP16 converts weights and compute but keeps float32 inputs/outputs, so callers
feed the same arrays at every precision. INT8 lives in ``exporters.onnx_int8``.
The FP32 graph is exported once per run and shared (``opts['cache']``) by the
FP16, INT8 and TensorRT exporters.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import onnx
import torch

from exporters import Artifact, artifact_filename, register_exporter
from exporters.onnx_embed import onnx_metadata
from exporters.validation import compare, reference, require_fp32_match
from toolkit.card import ModelCard
from toolkit.errors import BadInputError, CheckFailedError
from toolkit.fileio import atomic_path

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18  # torch's exporter writes 18 natively; TensorRT 8.6+, ONNX Runtime 1.14+ and onnxruntime-web run it
LOWEST_OPSET = 18  # torch.onnx (torch.export-based) cannot write older opsets
EXAMPLE_BATCH = 2
MAX_BATCH = 4096


@functools.lru_cache(maxsize=None)
def highest_opset() -> int:
    """The newest opset both the installed onnx package and ONNX Runtime accept (probed with a one-node model)."""
    import onnxruntime as ort

    for opset in range(onnx.defs.onnx_opset_version(), LOWEST_OPSET - 1, -1):
        node = onnx.helper.make_node("Identity", ["x"], ["y"])
        value = onnx.helper.make_tensor_value_info
        graph = onnx.helper.make_graph([node], "probe", [value("x", onnx.TensorProto.FLOAT, [1])],
                                       [value("y", onnx.TensorProto.FLOAT, [1])])
        probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)], ir_version=10)
        try:
            ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
            return opset
        except Exception:  # ONNX Runtime raises its own exception types for an unknown opset
            continue
    return LOWEST_OPSET


def check_opset(opset: int) -> int:
    """``opset`` if torch can write it and ONNX Runtime can run it, else one BadInputError line."""
    top = highest_opset()
    if not LOWEST_OPSET <= opset <= top:
        raise BadInputError(f"opset {opset} cannot be exported here: torch {torch.__version__}'s ONNX exporter "
                            f"writes opsets {LOWEST_OPSET}..{onnx.defs.onnx_opset_version()} and the installed "
                            f"ONNX Runtime runs up to {top}; choose --opset {LOWEST_OPSET}..{top}")
    return opset


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.onnx and onnxscript print progress and log conversion notes; rtool shows its own progress."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def cached(opts: dict[str, Any], key: tuple, build: Callable[[], Any]) -> Any:
    """``build()`` once per export run: the pipeline shares one ``opts['cache']`` dict between formats."""
    cache = opts.get("cache")
    if cache is None:
        return build()
    if key not in cache:
        cache[key] = build()
    return cache[key]


def fp32_graph(model: torch.nn.Module, card: ModelCard, opts: dict[str, Any]) -> onnx.ModelProto:
    """The model as an FP32 ONNX graph (in memory), exported by torch's torch.export-based exporter."""
    opset = check_opset(int(opts.get("opset") or DEFAULT_OPSET))

    def build() -> onnx.ModelProto:
        batch, _, _ = reference(model, card, opts)
        example = torch.from_numpy(batch[:EXAMPLE_BATCH].copy())
        with _quiet_exporter():
            program = torch.onnx.export(model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        opset_version=opset, dynamo=True, external_data=False, verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},))
        proto = program.model_proto
        written = opset_of(proto)
        if written != opset:
            raise BadInputError(f"torch's ONNX exporter wrote opset {written} when asked for {opset}; "
                                f"choose --opset {DEFAULT_OPSET}")
        return proto

    return cached(opts, ("onnx", "fp32", opset), build)


def fp16_graph(model: torch.nn.Module, card: ModelCard, opts: dict[str, Any]) -> onnx.ModelProto:
    """FP16 weights and compute, float32 inputs/outputs (``keep_io_types``) so callers need not change."""
    from onnxconverter_common.float16 import convert_float_to_float16

    fp32 = fp32_graph(model, card, opts)

    def build() -> onnx.ModelProto:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the converter warns about values it clamps to the FP16 range
            return convert_float_to_float16(fp32, keep_io_types=True)

    return cached(opts, ("onnx", "fp16", opset_of(fp32)), build)


def onnx_graph(model: torch.nn.Module, card: ModelCard, precision: str, opts: dict[str, Any],
               target: str | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """(graph with the card in its metadata, settings for the manifest) at ``precision`` (and INT8 ``target``)."""
    fp32 = fp32_graph(model, card, opts)
    settings: dict[str, Any] = {"opset": opset_of(fp32), "input": INPUT_NAME, "output": OUTPUT_NAME,
                                "dynamic_batch": [1, MAX_BATCH], "exporter": f"torch.onnx (dynamo) {torch.__version__}"}
    if precision == "fp32":
        proto = fp32
    elif precision == "fp16":
        proto = fp16_graph(model, card, opts)
        settings["converter"] = "onnxconverter_common.float16 (keep_io_types)"
    elif precision == "int8":
        from exporters.onnx_int8 import int8_graph

        proto, quantization = int8_graph(fp32, card, target or "cpu", opts)
        settings.update(quantization)
    else:
        raise BadInputError(f"unknown precision '{precision}'; choose fp32, fp16 or int8")
    return with_card(proto, card), settings


def with_card(proto: onnx.ModelProto, card: ModelCard) -> onnx.ModelProto:
    """A copy of ``proto`` that carries the card in ``metadata_props`` (replacing any older rtool keys)."""
    stamped = onnx.ModelProto()
    stamped.CopyFrom(proto)
    props = onnx_metadata(card)
    kept = [(p.key, p.value) for p in stamped.metadata_props if p.key not in props]
    del stamped.metadata_props[:]
    onnx.helper.set_model_props(stamped, {**dict(kept), **props})
    stamped.producer_name = "rtool"
    return stamped


def opset_of(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


@register_exporter("onnx", precisions=("fp32", "fp16", "int8"))
def export(model: torch.nn.Module, card: ModelCard, out_dir: Path, *, precision: str = "fp32",
           target: str | None = None, **opts: Any) -> Artifact:
    target = (target or "cpu") if precision == "int8" else None
    proto, settings = onnx_graph(model, card, precision, opts, target)
    path = Path(out_dir) / artifact_filename("onnx", precision, target)
    batch, expected, source = reference(model, card, opts)
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
    return Artifact(format="onnx", precision=precision, path=path, runtime="onnxruntime", target=target,
                    settings=settings, validation=stats)


def save_single_file(proto: onnx.ModelProto, path: Path) -> None:
    """Write ``proto`` as one file: every weight inside it, none in an external ``.data`` file."""
    for tensor in proto.graph.initializer:
        if onnx.external_data_helper.uses_external_data(tensor):
            raise CheckFailedError(f"ONNX weight {tensor.name} lives in an external file; rtool writes one file")
    try:
        onnx.save_model(proto, str(path), save_as_external_data=False)
    except ValueError as e:  # protobuf's 2 GB limit
        raise BadInputError(f"the ONNX model is too large for one file ({e}); ResNets fit easily, "
                            f"so check the model") from None


def check_file(path: Path, name: str) -> None:
    """``onnx.checker`` with the full check (strict shape inference) on the file as written."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else e.__class__.__name__
        raise CheckFailedError(f"{name} failed onnx.checker ({first}); not written") from None


def run_onnxruntime(path: Path, batch: np.ndarray, precision: str = "fp32", simulate: bool = False) -> np.ndarray:
    """Logits from the file in ONNX Runtime's CPU provider; batch 1 must agree too (dynamic batch axis).

    ``simulate`` turns graph optimizations off, so Q/DQ pairs run as float arithmetic
    instead of being fused into ONNX Runtime's integer kernels.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if simulate:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        full = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        single = session.run([OUTPUT_NAME], {INPUT_NAME: batch[:1]})[0]
    except Exception as e:  # ONNX Runtime's own exception types
        first = str(e).strip().splitlines()[0][:200]
        raise CheckFailedError(f"ONNX Runtime {ort.__version__} could not run the exported model ({first})") from None
    tolerance = (1e-4 if precision == "fp32" else 1e-2) * max(1.0, float(np.abs(full).max()))
    if single.shape != full[:1].shape or not np.allclose(single, full[:1], rtol=0, atol=tolerance):
        raise CheckFailedError("the exported ONNX model gives another answer at batch 1 than at batch "
                               f"{len(batch)}: its batch axis is not dynamic")
    return full
