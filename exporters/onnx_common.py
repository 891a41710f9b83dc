"""What every ONNX file rtool writes has in common: names, opsets, the torch export call, the single-file
save (IR <= 13), ``onnx.checker``, an ONNX Runtime run, and the card in ``metadata_props``.

The format modules (``onnx``, ``onnx_int8``, ``onnx_embed``, ``tensorrt``,
``triton``) import these from here, so none of them reaches into another
format's module for a helper.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import torch

from exporters import MAX_BATCH
from toolkit.card import ONNX_METADATA_KEY, ModelCard
from toolkit.errors import BadInputError, CheckFailedError
from toolkit.flags import setting

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18  # torch's exporter writes 18 natively; TensorRT 8.6+, ONNX Runtime 1.14+ and onnxruntime-web run it
LOWEST_OPSET = 18  # torch.onnx (torch.export-based) cannot write older opsets
MAX_IR_VERSION = 13  # onnx 1.23 writes IR 14, which onnxruntime 1.31, onnxruntime-node and -web refuse
EXAMPLE_BATCH = 2
# Flat keys beside the card, for readers that want one field without parsing the card.
CLASS_NAMES_KEY = "rtool.class_names"  # JSON list of strings, index = output position
INPUT_KEY = "rtool.input"  # JSON object: the card's "input" (size, colour, layout, dtype, mean/std, scale)
OUTPUT_KEY = "rtool.output"  # "logits" or "probabilities"
CARD_FORMAT_KEY = "rtool.card_format_version"  # integer as text


@dataclass(frozen=True)
class OnnxOptions:
    """Options of every ONNX graph rtool writes (also the source of TensorRT engines and Triton models)."""

    opset: int = setting(DEFAULT_OPSET, "ONNX opset.")

    def validate(self) -> None:
        check_opset(self.opset)


@functools.lru_cache(maxsize=None)
def highest_opset() -> int:
    """The newest opset both the installed onnx package and ONNX Runtime accept (probed with a one-node model)."""
    import onnxruntime as ort

    for opset in range(onnx.defs.onnx_opset_version(), LOWEST_OPSET - 1, -1):
        node = onnx.helper.make_node("Identity", ["x"], ["y"])
        value = onnx.helper.make_tensor_value_info
        graph = onnx.helper.make_graph(
            [node], "probe", [value("x", onnx.TensorProto.FLOAT, [1])], [value("y", onnx.TensorProto.FLOAT, [1])]
        )
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
        raise BadInputError(
            f"opset {opset} cannot be exported here: torch {torch.__version__}'s ONNX exporter "
            f"writes opsets {LOWEST_OPSET}..{onnx.defs.onnx_opset_version()} and the installed "
            f"ONNX Runtime runs up to {top}; choose --opset {LOWEST_OPSET}..{top}"
        )
    return opset


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
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


def torch_to_onnx(module: torch.nn.Module, example: torch.Tensor, opset: int, output_name: str) -> onnx.ModelProto:
    """``module`` as an in-memory ONNX graph with a dynamic batch axis, written by torch's dynamo exporter."""
    with quiet_exporter():
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[output_name],
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},),
        )
    proto = program.model_proto
    written = opset_of(proto)
    if written != opset:
        raise BadInputError(
            f"torch's ONNX exporter wrote opset {written} when asked for {opset}; choose --opset {DEFAULT_OPSET}"
        )
    return proto


def opset_of(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def onnx_metadata(card: ModelCard | dict[str, Any]) -> dict[str, str]:
    """The ``metadata_props`` of an rtool ONNX file: the card as JSON plus flat copies of what apps read first."""
    d = card.to_dict() if isinstance(card, ModelCard) else card
    return {
        ONNX_METADATA_KEY: json.dumps(d, sort_keys=True),
        CLASS_NAMES_KEY: json.dumps(d["class_names"]),
        INPUT_KEY: json.dumps(d["input"], sort_keys=True),
        OUTPUT_KEY: str(d.get("output", "logits")),
        CARD_FORMAT_KEY: str(d["format_version"]),
    }


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


def save_single_file(proto: onnx.ModelProto, path: Path) -> None:
    """Write ``proto`` as one file: every weight inside it, none in an external ``.data`` file."""
    for tensor in proto.graph.initializer:
        if onnx.external_data_helper.uses_external_data(tensor):
            raise CheckFailedError(f"ONNX weight {tensor.name} lives in an external file; rtool writes one file")
    if proto.ir_version > MAX_IR_VERSION:  # onnxruntime 1.31, onnxruntime-node and -web refuse IR 14
        proto.ir_version = MAX_IR_VERSION
    try:
        onnx.save_model(proto, str(path), save_as_external_data=False)
    except ValueError as e:  # protobuf's 2 GB limit
        raise BadInputError(
            f"the ONNX model is too large for one file ({e}); ResNets fit easily, so check the model"
        ) from None


def check_file(path: Path, name: str) -> None:
    """``onnx.checker`` with the full check (strict shape inference) on the file as written."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else e.__class__.__name__
        raise CheckFailedError(f"{name} failed onnx.checker ({first}); not written") from None


def run_onnxruntime(
    path: Path, batch: np.ndarray, precision: str = "fp32", simulate: bool = False, ort_format: bool = False
) -> np.ndarray:
    """Logits from the file in ONNX Runtime's CPU provider; batch 1 must agree too (dynamic batch axis).

    ``simulate`` turns graph optimizations off, so Q/DQ pairs run as float arithmetic
    instead of being fused into ONNX Runtime's integer kernels. ``ort_format``: the file is
    ONNX Runtime's flatbuffer format (ONNX Runtime tells the two apart by the ``.ort`` ending).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if ort_format:
        options.add_session_config_entry("session.load_model_format", "ORT")
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
        raise CheckFailedError(
            "the exported ONNX model gives another answer at batch 1 than at batch "
            f"{len(batch)}: its batch axis is not dynamic"
        )
    return full
