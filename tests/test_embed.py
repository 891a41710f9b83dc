"""`--embed-preprocessing` / `--embed-softmax` and the metadata every rtool ONNX file carries."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from exporters.onnx_common import CARD_FORMAT_KEY, CLASS_NAMES_KEY, INPUT_KEY, OUTPUT_KEY
from exporters.onnx_embed import InGraphPreprocessing, variant_filename
from exporters.pipeline import check_options, plan
from toolkit.card import ONNX_METADATA_KEY, ModelCard
from toolkit.checkpoint import load_model
from toolkit.data import load_dataset
from toolkit.errors import BadInputError
from toolkit.preprocess import normalize, prepare_batch

from conftest import MNIST_SPEC, assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """64 real test digits and 8 frames of noise, uint8 (N, 1, 28, 28)."""
    digits = load_dataset("mnist5k").test.images[:64].numpy()
    noise = np.random.default_rng(0).integers(0, 256, size=(8, 1, 28, 28), dtype=np.uint8)
    return np.concatenate([digits, noise])


def run(path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def metadata(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def nhwc(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))


def test_wrapper_normalises_exactly_like_toolkit_preprocess(pixels):
    wrapped = InGraphPreprocessing(torch.nn.Identity(), MNIST_SPEC).eval()
    with torch.inference_mode():
        got = wrapped(torch.from_numpy(nhwc(pixels))).numpy()
    assert got.dtype == np.float32 and np.array_equal(got, normalize(pixels, MNIST_SPEC))


def test_variant_names_never_collide_with_the_plain_file():
    assert (variant_filename(False), variant_filename(True)) == ("model.raw.onnx", "model.raw-softmax.onnx")


def test_cli_writes_the_variant_beside_the_plain_files(embed_export_dir):
    files = {p.name for p in embed_export_dir.iterdir()}
    assert {"model.pt", "model.onnx", "model.fp16.onnx", "model.raw-softmax.onnx", "manifest.json"} <= files
    manifest = json.loads((embed_export_dir / "manifest.json").read_text())
    entries = {e["file"]: e for e in manifest["artifacts"]}
    variant = entries["model.raw-softmax.onnx"]
    assert (variant["format"], variant["precision"], variant["runtime"]) == ("onnx", "fp32", "onnx_app")
    settings = variant["settings"]
    assert (settings["input_dtype"], settings["input_layout"], settings["input_shape"]) == (
        "uint8",
        "NHWC",
        ["N", 28, 28, 1],
    )
    assert settings["output"] == "probabilities" and settings["embedded"] == ["preprocessing", "softmax"]
    assert variant["validation"]["top1_agreement"] == 1.0 and "mnist5k test" in variant["validation"]["inputs"]
    assert entries["model.onnx"]["runtime"] == "onnxruntime" and "input_dtype" not in entries["model.onnx"]["settings"]
    session = ort.InferenceSession(str(embed_export_dir / "model.raw-softmax.onnx"), providers=["CPUExecutionProvider"])
    (graph_input,), (graph_output,) = session.get_inputs(), session.get_outputs()
    assert graph_input.type == "tensor(uint8)" and graph_input.shape[1:] == [28, 28, 1]
    assert graph_output.name == "probabilities" and graph_output.shape[1:] == [10]


def test_raw_pixel_variants_match_the_plain_export(embed_export_dir, inprocess_export_dir, pixels):
    logits = run(embed_export_dir / "model.onnx", prepare_batch(pixels, MNIST_SPEC))
    raw_logits = run(inprocess_export_dir / "model.raw.onnx", nhwc(pixels))
    probabilities = run(embed_export_dir / "model.raw-softmax.onnx", nhwc(pixels))
    assert raw_logits.dtype == np.float32 and raw_logits.shape == logits.shape == (72, 10)
    np.testing.assert_allclose(raw_logits, logits, rtol=0, atol=1e-5)
    assert np.array_equal(raw_logits.argmax(axis=1), logits.argmax(axis=1))
    np.testing.assert_allclose(probabilities, softmax(logits), rtol=0, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert np.array_equal(probabilities.argmax(axis=1), logits.argmax(axis=1))


@pytest.mark.parametrize("name", ["model.onnx", "model.fp16.onnx", "model.raw-softmax.onnx"])
def test_every_file_carries_the_card_and_the_flat_keys(embed_export_dir, untrained_checkpoint, name):
    props = metadata(embed_export_dir / name)
    card = json.loads(props[ONNX_METADATA_KEY])
    _, original = load_model(untrained_checkpoint)
    assert card["class_names"] == original.class_names == json.loads(props[CLASS_NAMES_KEY])
    assert card["input"] == json.loads(props[INPUT_KEY])
    assert props[OUTPUT_KEY] == card["output"] and props[CARD_FORMAT_KEY] == str(card["format_version"]) == "2"
    spec = card["input"]
    assert (spec["channels"], spec["height"], spec["width"], spec["color"]) == (1, 28, 28, "L")
    assert spec["mean"] == original.input.mean and spec["std"] == original.input.std
    assert spec["scale"] == pytest.approx(1 / 255)
    raw = name == "model.raw-softmax.onnx"
    assert (spec["layout"], spec["dtype"]) == (("NHWC", "uint8") if raw else ("NCHW", "float32"))
    assert spec.get("preprocessing") == ("in_graph" if raw else None)
    assert card["output"] == ("probabilities" if raw else "logits")
    assert ModelCard.from_json(props[ONNX_METADATA_KEY]).class_names == original.class_names  # rtool reads it too


def test_embedding_without_an_fp32_onnx_export_is_refused(untrained_checkpoint, tmp_path):
    result = run_cli(
        "export",
        untrained_checkpoint,
        "--format",
        "onnx",
        "--precision",
        "fp16",
        "--embed-preprocessing",
        "--out",
        tmp_path,
    )
    assert_one_line_error(result, 2, "--embed-preprocessing/--embed-softmax add an FP32 ONNX variant")
    assert not any(p.name.startswith("model.") for p in tmp_path.iterdir())
    jobs, _ = plan("torchscript,pt2", "fp32")
    with pytest.raises(BadInputError, match="use them with --format onnx"):
        check_options(jobs, {"embed_preprocessing": True})
    with pytest.raises(BadInputError, match="--embed-softmax goes with --embed-preprocessing"):
        check_options(plan("onnx", "fp32")[0], {"embed_softmax": True})
