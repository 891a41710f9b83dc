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
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import TensorsData, create_calibrator, save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from exporters import ExportContext
from exporters.onnx_common import INPUT_NAME, opset_of
from exporters.validation import load_pixels, random_pixels
from toolkit.card import ModelCard
from toolkit.errors import BadInputError
from toolkit.flags import setting
from toolkit.preprocess import prepare_batch

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


# The classifier's output (the logits) stays float: quantizing it clips the logits to the calibration range in
# 8-bit steps, and TensorRT's guidance is not to quantize the output of the last weighted layer. Measured on the
# demo's resnet20 (1,000 mnist5k test images): max |logit - eager| 0.592 -> 0.374 (cpu), 0.377 -> 0.330
# (tensorrt form, Q/DQ in float), agreement 99.9% -> 99.9% (cpu), 99.8% -> 99.9% (tensorrt form).
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


def int8_graph(
    fp32: onnx.ModelProto, card: ModelCard, target: str, context: ExportContext
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """(Q/DQ graph for ``target``, the settings that made it) from the FP32 graph, calibrated as the options say."""
    arguments = recipe(target)
    method, size = context.option(Int8Options).calib_method, context.option(Int8Options).calib_size

    def build() -> tuple[onnx.ModelProto, dict[str, Any]]:
        batch, source = calibration_batch(card, size, context)
        with tempfile.TemporaryDirectory(prefix="rtool-int8-") as work, contextlib.redirect_stdout(io.StringIO()):
            folder = Path(work)
            # Shape inference + ONNX Runtime's graph fusions first, so calibration sees the graph that runs.
            quant_pre_process(fp32, str(folder / "prepared.onnx"))
            ranges = calibrate(folder / "prepared.onnx", batch, method, symmetric=target == "tensorrt", work=folder)
            save_tensors_data(ranges, folder / "ranges.json")
            quantize_static(
                str(folder / "prepared.onnx"),
                str(folder / "quantized.onnx"),
                None,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                calibrate_method=CALIB_METHODS[method],
                calibration_cache_path=str(folder / "ranges.json"),
                **arguments,
            )
            proto = onnx.load(str(folder / "quantized.onnx"))
        settings = {
            "quantization": "static QDQ",
            "target": target,
            "calibration": {"method": method, "images": len(batch), "source": source},
            "activations": "uint8 asymmetric" if target == "cpu" else "int8 symmetric (zero point 0)",
            "weights": "int8 symmetric, per output channel" + (", 7-bit range" if target == "cpu" else ""),
        }
        return proto, settings

    return context.cached(("onnx", "int8", target, method, size, opset_of(fp32)), build)
