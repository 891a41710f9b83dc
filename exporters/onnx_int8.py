"""INT8 ONNX by static post-training quantization with Q/DQ nodes, in two forms for two runtimes.

``cpu`` (``model.int8-cpu.onnx``): uint8 activations, int8 per-channel weights
(U8S8), the form ONNX Runtime's x86 kernels run fastest (QLinearConv and
friends, with Relu folded into the convolution). Weights use 7 of their 8
bits so the result is exact on CPUs without VNNI too.

``tensorrt`` (``model.int8-trt.onnx``): symmetric int8 activations and
weights, every zero point 0, weight scales per output channel (axis 0): the
explicit-quantization form TensorRT builds INT8 engines from. On a CPU it
runs slower than FP32, so it is never the CPU default.

Both are calibrated on ``calib_size`` training images of the card's data set,
preprocessed exactly as the card says; only a model whose card names no data
set is calibrated on random pixels, with a warning.

``--max-accuracy-drop POINTS`` keeps the layers that cost most in float until
the file passes int8's parity thresholds with that budget on the held-out
images (``exporters.int8_sensitivity``). In the TensorRT form such a layer
reads its inputs unquantized (no Q/DQ in front of it, float weights), so
TensorRT runs it in float; the Q/DQ after it, where its consumer is INT8,
belongs to that consumer.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import TensorsData, create_calibrator, save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from exporters import ExportContext
from exporters.gate import measurement
from exporters.int8_sensitivity import (
    SENSITIVITY_IMAGES,
    Fallback,
    Judge,
    Layer,
    LayerError,
    Step,
    run_graph,
    search,
    sensitivity,
    weighted_layers,
)
from exporters.onnx_common import INPUT_NAME, OUTPUT_NAME, opset_of
from exporters.validation import HeldOut, compare, load_pixels, random_pixels
from toolkit.card import ModelCard
from toolkit.errors import BadInputError, CheckFailedError
from toolkit.flags import setting
from toolkit.preprocess import prepare_batch
from toolkit.thresholds import Thresholds, check_thresholds, default_thresholds

TARGETS = ("cpu", "tensorrt")
CALIB_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
CALIB_BATCH = 32
MAX_CALIB_SIZE = 100_000  # calibration images are held in memory; more adds nothing to the ranges


@dataclass(frozen=True)
class Int8Options:
    """How INT8 files are calibrated."""

    calib_size: int = setting(256, "INT8 calibration images from the training split.", low=1, high=MAX_CALIB_SIZE)
    calib_method: str = setting(
        "minmax", "INT8 calibration method.", choices=tuple(CALIB_METHODS), what="calibration method"
    )
    per_channel: bool = setting(True, "INT8 weights with one scale per output channel (off: one per tensor).")
    max_accuracy_drop: float | None = setting(
        None,
        "INT8 accuracy budget in points on the held-out images: keep the layers that cost most in float "
        "until the file is within it (and within int8's parity thresholds).",
        low=0,
        high=100,
    )


# The classifier's output (the logits) stays float: quantizing it clips the logits to the calibration range in
# 8-bit steps, and TensorRT's guidance is not to quantize the output of the last weighted layer. Measured on a
# resnet20 trained 4 epochs on mnist5k (1,000 test images, logits span 30.2): max |logit - eager| 1.635 -> 0.450
# (cpu), 1.598 -> 0.402 (tensorrt form, Q/DQ in float); agreement 99.8% (cpu) and 99.9% (tensorrt) either way.
FLOAT_LOGITS = {"OpTypesToExcludeOutputQuantization": ["Gemm"]}


def recipe(target: str) -> dict[str, Any]:
    """The ``quantize_static`` arguments that make the Q/DQ graph right for ``target``."""
    if target == "cpu":
        # reduce_range: 7-bit weights. x86 CPUs without VNNI (AVX2 only) add u8*s8 products in int16, which
        # can saturate with full 8-bit weights; 7-bit weights cannot overflow it.
        return {
            "activation_type": QuantType.QUInt8,
            "weight_type": QuantType.QInt8,
            "reduce_range": True,
            "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True, **FLOAT_LOGITS},
        }
    if target == "tensorrt":
        return {
            "activation_type": QuantType.QInt8,
            "weight_type": QuantType.QInt8,
            # TensorRT takes float biases; an int32-quantized bias is not part of its Q/DQ vocabulary
            "extra_options": {
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                **FLOAT_LOGITS,
            },
        }
    raise BadInputError(f"unknown INT8 target '{target}'; choose one of: {', '.join(TARGETS)}")


class _Batches(CalibrationDataReader):
    """Feeds preprocessed calibration images to ONNX Runtime's calibrator in batches."""

    def __init__(self, batch: np.ndarray) -> None:
        self._chunks: Iterator[np.ndarray] = iter(np.array_split(batch, max(1, -(-len(batch) // CALIB_BATCH))))

    def get_next(self) -> dict[str, np.ndarray] | None:
        chunk = next(self._chunks, None)
        return None if chunk is None else {INPUT_NAME: np.ascontiguousarray(chunk)}


def calibration_batch(card: ModelCard, size: int, context: ExportContext) -> tuple[np.ndarray, str]:
    """(float32 calibration batch, where it came from): training images, or noise for a card without data set."""
    if size < 1:
        raise BadInputError(f"--calib-size must be at least 1, got {size}")
    if card.dataset:
        pixels = load_pixels(card, "train", size, context.data_dir, context.cache)
        return prepare_batch(pixels, card.input), f"{card.dataset} train, {len(pixels)} images"
    message = (
        "the model card names no data set, so INT8 is calibrated on random pixels; its accuracy "
        "may suffer (export from a checkpoint trained by rtool to calibrate on real images)"
    )
    if message not in context.notes:
        context.notes.append(message)
    return prepare_batch(random_pixels(card, size, seed=1), card.input), f"random pixels, {size} images"


def calibrate(model_path: Path, batch: np.ndarray, method: str, *, symmetric: bool, work: Path) -> TensorsData:
    """Activation ranges of every tensor on the calibration batch.

    Run here rather than inside ``quantize_static`` so that entropy gets a
    histogram finer than its quantized levels: ``quantize_static`` gives it 128
    bins for 128 levels, which leaves one candidate threshold (the full range,
    i.e. minmax again). 256 bins give 65 candidates at a bearable cost; the
    search is pure Python and grows with the square of the bins.
    """
    options = {"symmetric": symmetric}
    if method == "entropy":
        options.update(num_bins=256, num_quantized_bins=128)
    calibrator = create_calibrator(
        model_path,
        augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=CALIB_METHODS[method],
        extra_options=options,
    )
    calibrator.collect_data(_Batches(batch))
    return calibrator.compute_data()


@dataclass
class Quantizer:
    """The FP32 graph prepared and calibrated once, quantized for one target with any layers kept in float."""

    prepared: onnx.ModelProto  # after shape inference and ONNX Runtime's fusions: the graph calibration saw
    ranges: TensorsData
    target: str
    method: str
    per_channel: bool
    source: str  # where the calibration images came from
    images: int
    layers: list[Layer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.layers = weighted_layers(self.prepared)

    def build(self, exclude: Sequence[str] = (), only: Sequence[str] | None = None) -> onnx.ModelProto:
        """The Q/DQ graph with the nodes in ``exclude`` kept in float (or only the nodes in ``only`` in INT8)."""
        with tempfile.TemporaryDirectory(prefix="rtool-int8-") as work, contextlib.redirect_stdout(io.StringIO()):
            folder = Path(work)
            onnx.save(self.prepared, str(folder / "prepared.onnx"))
            save_tensors_data(self.ranges, folder / "ranges.json")
            quantize_static(
                str(folder / "prepared.onnx"),
                str(folder / "quantized.onnx"),
                None,
                quant_format=QuantFormat.QDQ,
                per_channel=self.per_channel,
                calibrate_method=CALIB_METHODS[self.method],
                calibration_cache_path=str(folder / "ranges.json"),
                nodes_to_exclude=list(exclude) or None,
                nodes_to_quantize=list(only) if only is not None else None,
                **recipe(self.target),
            )
            proto = onnx.load(str(folder / "quantized.onnx"))
        if self.target == "tensorrt" and exclude:
            float_inputs(proto, set(exclude))
        return proto

    def names(self, nodes: Sequence[str]) -> list[str]:
        """The module names of ``nodes`` (what the manifest and the report show)."""
        by_node = {layer.node: layer.name for layer in self.layers}
        return [by_node.get(node, node) for node in nodes]


def float_inputs(proto: onnx.ModelProto, nodes: set[str]) -> None:
    """Feed the ``nodes`` the unquantized tensors (skip the Q/DQ pair in front of them) and drop unused Q/DQ.

    TensorRT runs a layer in INT8 when a DequantizeLinear feeds it; one whose inputs come straight from float
    tensors (and whose weights are float) it runs in float, as asked.
    """
    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.name not in nodes:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
    while True:  # remove Q/DQ nodes nothing reads any more (a DQ first, then the Q that fed it)
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [
            n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in used
        ]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    kept = {name for node in graph.node for name in node.input}
    unused = [t for t in graph.initializer if t.name not in kept]
    for t in unused:
        graph.initializer.remove(t)


def quantizer(fp32: onnx.ModelProto, card: ModelCard, target: str, context: ExportContext) -> Quantizer:
    """The run's prepared and calibrated graph for ``target`` (built once, shared by the file and its fallback)."""
    options = context.option(Int8Options)
    method, size = options.calib_method, options.calib_size

    def build() -> Quantizer:
        batch, source = calibration_batch(card, size, context)
        with tempfile.TemporaryDirectory(prefix="rtool-int8-") as work, contextlib.redirect_stdout(io.StringIO()):
            folder = Path(work)
            # Shape inference + ONNX Runtime's graph fusions first, so calibration sees the graph that runs.
            quant_pre_process(fp32, str(folder / "prepared.onnx"))
            ranges = calibrate(folder / "prepared.onnx", batch, method, symmetric=target == "tensorrt", work=folder)
            prepared = onnx.load(str(folder / "prepared.onnx"))
        return Quantizer(prepared, ranges, target, method, options.per_channel, source, len(batch))

    key = ("int8-quantizer", target, method, size, options.per_channel, opset_of(fp32))
    return context.cached(key, build)


def int8_settings(q: Quantizer) -> dict[str, Any]:
    """What the manifest records about how a file was quantized."""
    granularity = "per output channel" if q.per_channel else "per tensor"
    return {
        "quantization": "static QDQ",
        "target": q.target,
        "calibration": {"method": q.method, "images": q.images, "source": q.source},
        "activations": "uint8 asymmetric" if q.target == "cpu" else "int8 symmetric (zero point 0)",
        "weights": f"int8 symmetric, {granularity}" + (", 7-bit range" if q.target == "cpu" else ""),
        "float_layers": [],
        "int8_layers": {"int8": len(q.layers), "total": len(q.layers)},
    }


def int8_limits(budget: float | None) -> Thresholds:
    """int8's parity thresholds, with the accuracy budget where it is tighter."""
    limits = default_thresholds()["int8"]
    if budget is not None:
        limits.accuracy_drop = budget if limits.accuracy_drop is None else min(budget, limits.accuracy_drop)
    return limits


def judge_on(held: tuple[np.ndarray, np.ndarray, HeldOut], target: str, limits: Thresholds) -> Judge:
    """A judge of Q/DQ graphs: run as the file's runtime runs it, on the held-out images, against ``limits``."""
    batch, expected, source = held
    if source.labels is None:
        raise BadInputError(
            f"--max-accuracy-drop measures accuracy on labelled held-out images, and the export has only "
            f"{source}; export a checkpoint whose card names a data set that is on this machine (--data-dir)"
        )

    def judge(graph: onnx.ModelProto) -> tuple[list[str], dict[str, Any]]:
        logits = run_graph(graph, batch, simulate=target == "tensorrt")[OUTPUT_NAME]
        stats = compare(expected, logits, source)
        return check_thresholds(measurement(stats), limits), stats

    return judge


def fallback_plan(
    q: Quantizer,
    held: tuple[np.ndarray, np.ndarray, HeldOut],
    budget: float | None,
    full: onnx.ModelProto,
    rank_always: bool = False,
) -> tuple[list[LayerError], Fallback]:
    """(every layer's error, ranked; the fewest most sensitive layers to keep in float to pass ``budget``).

    The layers are measured only when the full INT8 graph misses the budget, or when ``rank_always``.
    """
    judge = judge_on(held, q.target, int8_limits(budget))
    broken, figures = judge(full)
    first = Step(0, not broken, broken, figures)
    rows = sensitivity(q.build, q.prepared, full, held[0][:SENSITIVITY_IMAGES]) if broken or rank_always else []
    if not broken:
        return rows, Fallback(full, [], [first])
    ranking = [r.node for r in sorted(rows, key=lambda r: r.rank)]
    return rows, search(q.build, ranking, judge, full, first)


def fallback_settings(q: Quantizer, plan: Fallback, budget: float, images: int) -> dict[str, Any]:
    """The manifest's record of the fallback: the layers kept in float and every candidate tried."""
    floats = len(plan.excluded)
    return {
        "float_layers": q.names(plan.excluded),
        "int8_layers": {"int8": len(q.layers) - floats, "total": len(q.layers)},
        "fallback": {
            "max_accuracy_drop": budget,
            "thresholds": int8_limits(budget).describe(),
            "ranking": f"SQNR of the logits with one layer alone in INT8, on {images} held-out images",
            "tries": [
                {
                    "float_layers": step.float_layers,
                    "passed": step.passed,
                    "accuracy_delta": step.figures.get("accuracy_delta"),
                    "agreement": step.figures.get("top1_agreement"),
                    "failed": step.broken,
                }
                for step in plan.steps
            ],
        },
    }


def int8_graph(
    fp32: onnx.ModelProto,
    card: ModelCard,
    target: str,
    context: ExportContext,
    held: tuple[np.ndarray, np.ndarray, HeldOut] | None = None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """(Q/DQ graph for ``target``, the settings that made it), calibrated as the options say.

    With ``--max-accuracy-drop`` the ``held`` (batch, eager logits, labelled source) judge the file, and the
    layers that cost most stay in float until it passes; CheckFailedError when even all of them cannot.
    """
    recipe(target)  # an unknown target is refused before any work
    options = context.option(Int8Options)
    budget = options.max_accuracy_drop

    def build() -> tuple[onnx.ModelProto, dict[str, Any]]:
        q = quantizer(fp32, card, target, context)
        full = q.build()
        settings = int8_settings(q)
        if budget is None:
            return full, settings
        if held is None:
            raise BadInputError("--max-accuracy-drop needs held-out images to measure the drop on")
        _, plan = fallback_plan(q, held, budget, full)
        if not plan.met:
            last = plan.steps[-1]
            raise CheckFailedError(
                f"--max-accuracy-drop {budget:g} cannot be met for the {target} INT8 file: with all "
                f"{len(q.layers)} weighted layers in float it still misses {'; '.join(last.broken)} on "
                f"{last.figures.get('inputs')}"
            )
        settings.update(fallback_settings(q, plan, budget, min(SENSITIVITY_IMAGES, len(held[0]))))
        return plan.graph, settings

    key = ("onnx", "int8", target, options, opset_of(fp32))
    return context.cached(key, build)
