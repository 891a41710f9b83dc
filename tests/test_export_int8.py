"""INT8 ONNX: the two Q/DQ forms have the properties their runtimes need, proven on the graphs themselves."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from exporters import ExportContext
from exporters.onnx_int8 import Int8Options, calibration_batch, int8_graph
from toolkit.checkpoint import load_model
from toolkit.data import load_dataset
from toolkit.preprocess import prepare_batch

WEIGHTED = ("Conv", "Gemm")


def _int8(result, target):
    return next(a for a in result.artifacts if a.format == "onnx" and a.precision == "int8" and a.target == target)


def _qdq(model: onnx.ModelProto):
    """(activation QuantizeLinear params, weight DequantizeLinear params by consumer, all Q/DQ params)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    activations, weights, every = [], [], []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        params = {"node": node, "scale": inits[node.input[1]], "zero_point": inits[node.input[2]], "axis": axis}
        every.append(params)
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            activations.append(params)
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            users = consumers.get(node.output[0], [])
            if any(u.op_type in WEIGHTED and u.input[1] == node.output[0] for u in users):
                weights.append({**params, "quantized": inits[node.input[0]]})
    return activations, weights, every


def _weighted_layers(model: onnx.ModelProto) -> int:
    return sum(n.op_type in WEIGHTED for n in model.graph.node)


def _check_per_channel_weights(model, weights):
    assert len(weights) == _weighted_layers(model), "every Conv/Gemm weight must be quantized"
    for w in weights:
        assert w["quantized"].dtype == np.int8
        assert w["zero_point"].dtype == np.int8 and not w["zero_point"].any(), "weights are symmetric"
        assert w["axis"] == 0, "scales run along the output channels"
        assert w["scale"].shape == (w["quantized"].shape[0],), "one scale per output channel"
        assert np.all(w["scale"] > 0)


def test_cpu_target_is_u8s8_per_channel(pipeline_export):
    artifact = _int8(pipeline_export, "cpu")
    assert artifact.path.name == "model.int8-cpu.onnx"
    model = onnx.load(str(artifact.path))
    activations, weights, _ = _qdq(model)
    assert activations and all(a["zero_point"].dtype == np.uint8 for a in activations)
    assert all(a["scale"].ndim == 0 for a in activations), "activations are per tensor"
    _check_per_channel_weights(model, weights)
    assert max(np.abs(w["quantized"]).max() for w in weights) <= 64, "7-bit weights (reduce_range)"
    assert any(a["zero_point"] != 0 for a in activations), "uint8 activations use their zero point"


def test_tensorrt_target_is_symmetric_int8_per_channel(pipeline_export):
    artifact = _int8(pipeline_export, "tensorrt")
    assert artifact.path.name == "model.int8-trt.onnx"
    model = onnx.load(str(artifact.path))
    activations, weights, every = _qdq(model)
    assert activations
    for q in every:
        assert q["zero_point"].dtype == np.int8, q["node"].name
        assert not q["zero_point"].any(), f"{q['node'].name}: TensorRT takes zero points of 0 only"
    _check_per_channel_weights(model, weights)
    biases = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT32]
    assert not biases, "TensorRT takes float biases"
    assert max(np.abs(w["quantized"]).max() for w in weights) == 127, "full 8-bit weights"
    assert "simulated" in artifact.validation["onnxruntime"]


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_int8_runs_in_onnxruntime_with_float32_input(pipeline_export, untrained_checkpoint, target):
    artifact = _int8(pipeline_export, target)
    assert artifact.settings["calibration"] == {"method": "minmax", "images": 16, "source": "mnist5k train, 16 images"}
    x = np.random.default_rng(3).standard_normal((3, 1, 28, 28)).astype(np.float32)
    session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input": x})[0]
    assert got.dtype == np.float32 and got.shape == (3, 10) and np.isfinite(got).all()
    assert 0 < artifact.validation["max_abs_diff"] < np.inf
    assert 0 <= artifact.validation["top1_agreement"] <= 1


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods_change_the_scales(pipeline_export, untrained_checkpoint, method):
    fp32 = onnx.load(str(next(a.path for a in pipeline_export.artifacts if a.path.name == "model.onnx")))
    card = load_model(untrained_checkpoint)[1]
    minmax = onnx.load(str(_int8(pipeline_export, "cpu").path))
    context = ExportContext(options={Int8Options: Int8Options(calib_size=16, calib_method=method)})
    graph, settings = int8_graph(fp32, card, "cpu", context)
    assert settings["calibration"]["method"] == method
    scales = lambda m: [a["scale"].item() for a in _qdq(m)[0]]  # noqa: E731
    assert len(scales(graph)) == len(scales(minmax)) and scales(graph) != scales(minmax)


def test_card_without_dataset_calibrates_on_noise_with_a_warning(untrained_checkpoint):
    card = load_model(untrained_checkpoint)[1]
    card.dataset = None
    notes: list[str] = []
    batch, source = calibration_batch(card, 8, ExportContext(notes=notes))
    assert batch.shape == (8, 1, 28, 28) and batch.dtype == np.float32
    assert source.startswith("random pixels") and len(notes) == 1 and "random pixels" in notes[0]


def test_card_with_dataset_calibrates_on_its_training_images(untrained_checkpoint):
    card = load_model(untrained_checkpoint)[1]
    notes: list[str] = []
    batch, source = calibration_batch(card, 12, ExportContext(notes=notes))
    train = prepare_batch(load_dataset("mnist5k").train.images.numpy(), card.input)
    assert not notes and source == "mnist5k train, 12 images"
    assert all((train == b).all(axis=(1, 2, 3)).any() for b in batch), "each image is a training image"


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_int8_logits_stay_float(pipeline_export, target):
    """No Q/DQ after the classifier: the graph's output comes straight from the float Gemm."""
    graph = onnx.load(str(_int8(pipeline_export, target).path)).graph
    producer = {out: node for node in graph.node for out in node.output}[graph.output[0].name]
    assert producer.op_type == "Gemm", [n.op_type for n in graph.node][-3:]
