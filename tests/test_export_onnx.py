"""ONNX FP32 and FP16: one self-contained file, named dynamic I/O, card in metadata, runs in plain ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from exporters.onnx_common import DEFAULT_OPSET, LOWEST_OPSET, check_opset, highest_opset
from toolkit.card import ONNX_METADATA_KEY
from toolkit.checkpoint import load_model
from toolkit.errors import BadInputError


def _onnx(result, precision):
    return next(a for a in result.artifacts if a.format == "onnx" and a.precision == precision)


def _eager(checkpoint, x: np.ndarray) -> np.ndarray:
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _run(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx_is_one_checked_file_with_named_dynamic_io_and_card(pipeline_export, untrained_checkpoint, precision):
    path = _onnx(pipeline_export, precision).path
    assert path.name == ("model.onnx" if precision == "fp32" else "model.fp16.onnx")
    assert not list(path.parent.glob("*.data")), "weights must live inside the .onnx file"
    model = onnx.load(str(path), load_external_data=False)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    onnx.checker.check_model(str(path), full_check=True)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == DEFAULT_OPSET >= 17
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert inp.type.tensor_type.shape.dim[0].dim_param, "batch axis must be symbolic"
    card = load_model(untrained_checkpoint)[1]
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props[ONNX_METADATA_KEY]) == card.to_dict()


def test_fp32_onnx_matches_eager_in_plain_onnxruntime(pipeline_export, untrained_checkpoint):
    path = _onnx(pipeline_export, "fp32").path
    x = np.random.default_rng(1).standard_normal((7, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(_run(path, x), _eager(untrained_checkpoint, x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_run(path, x[:1]), _eager(untrained_checkpoint, x[:1]), rtol=1e-4, atol=1e-4)
    assert _onnx(pipeline_export, "fp32").validation["max_abs_diff"] < 1e-4


def test_fp16_onnx_computes_in_half_but_takes_float32(pipeline_export, untrained_checkpoint):
    artifact = _onnx(pipeline_export, "fp16")
    model = onnx.load(str(artifact.path))
    weights = [t for t in model.graph.initializer if len(t.dims) == 4]  # convolution kernels
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    x = np.random.default_rng(2).standard_normal((4, 1, 28, 28)).astype(np.float32)
    got = _run(artifact.path, x)
    assert got.dtype == np.float32
    expected = _eager(untrained_checkpoint, x)
    assert np.abs(got - expected).max() < 0.02 * max(1.0, np.abs(expected).max())
    assert 0 < artifact.validation["max_abs_diff"] < 0.02 * max(1.0, np.abs(expected).max())


def test_opset_range_is_checked_before_exporting():
    assert check_opset(DEFAULT_OPSET) == DEFAULT_OPSET
    assert highest_opset() >= DEFAULT_OPSET
    for bad in (LOWEST_OPSET - 1, 11, highest_opset() + 1):
        with pytest.raises(BadInputError, match=f"opset {bad}"):
            check_opset(bad)
