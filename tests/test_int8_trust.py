"""INT8 you can trust: the gate at export, per-layer sensitivity, and the fallback that keeps layers in float.

Everything runs on the session's trained resnet20 (the demo's model, 4 epochs): an untrained network predicts
one class everywhere, so a broken file could agree with it. The hard case is that model with the channels of
one block rescaled (``equalization_broken``): the float network computes the same function, but one activation
tensor's channels now span a range 20x apart, the pathology BN folding gives networks such as MobileNetV2
(Nagel et al. 2019). Per-tensor activation quantization then costs points, in two known layers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import exporters.onnx_int8 as onnx_int8
from exporters import Artifact, ExportContext
from exporters.gate import apply_gate, verdict
from exporters.int8_sensitivity import Step, run_graph, search, weighted_layers
from exporters.onnx import fp32_graph
from exporters.onnx_int8 import Int8Options, quantizer
from toolkit.card import MANIFEST_NAME
from toolkit.checkpoint import load_model, save_checkpoint
from toolkit.errors import CheckFailedError
from toolkit.parity import run_parity
from toolkit.report import parity_markdown
from toolkit.thresholds import default_thresholds

from conftest import run_cli

GATE = ("--gate-images", "200")


@pytest.fixture(scope="module")
def trained_checkpoint(demo_run) -> Path:
    """resnet20 trained 4 epochs on mnist5k (the demo's best.pt, so the session trains it once)."""
    out, result = demo_run
    assert result.returncode == 0, result.stderr
    return out / "train" / "best.pt"


BROKEN_BLOCK = "layer1.0"
SPREAD = 20.0


@pytest.fixture(scope="module")
def hard_case(trained_checkpoint, tmp_path_factory) -> Path:
    """The trained model with block layer1.0's middle channels rescaled by factors in [1/20, 20]: bn1's output
    channel c times s_c and conv2's input channel c divided by it. ReLU commutes with a positive scale, so the
    float function is unchanged; only the ranges INT8 must cover are not."""
    model, card = load_model(trained_checkpoint)
    scales = torch.from_numpy(np.exp(np.random.default_rng(0).uniform(-1, 1, 16) * np.log(SPREAD))).float()
    block = dict(model.named_modules())[BROKEN_BLOCK]
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((4, 1, 28, 28)).astype(np.float32))
    with torch.no_grad():
        before = model(x)
        block.bn1.weight.mul_(scales)
        block.bn1.bias.mul_(scales)
        block.conv2.weight.div_(scales.view(1, -1, 1, 1))
        assert torch.allclose(model(x), before, atol=1e-4), "the rescaling keeps the float function"
    return save_checkpoint(tmp_path_factory.mktemp("hard") / "hard.pt", model, card)


# ---------------------------------------------------------------- the gate


def stats(agreement: float, delta: float | None) -> dict:
    figures = {"top1_agreement": agreement, "max_abs_diff_rel": 0.01, "images": 200, "inputs": "mnist5k test, 200"}
    return figures if delta is None else {**figures, "accuracy_delta": delta}


def test_gate_holds_each_file_to_its_precisions_parity_thresholds(tmp_path):
    thresholds = default_thresholds()
    assert verdict(stats(0.995, -0.5), thresholds["int8"])["status"] == "passed"
    failed = verdict(stats(0.98, -1.5), thresholds["int8"])
    assert failed["status"] == "failed"
    assert failed["failed"] == ["agreement 98.00% < 99%", "accuracy drop 1.50 points > 1"]
    assert verdict(stats(0.98, -1.5), thresholds["fp16"])["failed"] == ["agreement 98.00% < 99.5%"]
    assert verdict(stats(0.2, None), thresholds["int8"])["status"] == "not run"  # noise: no labels
    # every format is gated alike: a TensorRT engine that misses int8's thresholds is refused too
    engine = Artifact("tensorrt", "int8", tmp_path / "model.int8.engine", "tensorrt", validation=stats(0.9, -4.0))
    with pytest.raises(CheckFailedError, match=r"model.int8.engine misses the int8 parity thresholds.*agreement 90"):
        apply_gate([engine], thresholds, keep_failed=False)
    assert apply_gate([engine], thresholds, keep_failed=True) == [
        "model.int8.engine misses the int8 parity thresholds on mnist5k test, 200: agreement 90.00% < 99%; "
        "accuracy drop 4.00 points > 1"
    ]
    assert engine.validation["gate"]["status"] == "failed"


def _producers(graph: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.graph.node for out in node.output}


def broken_build(original):
    """A quantizer whose first convolution's weight scales come out negated: a file that runs, badly."""

    def build(self, exclude=(), only=None):
        graph = original(self, exclude, only)
        inits = {t.name: t for t in graph.graph.initializer}
        # the DequantizeLinear feeding the first Conv's weight input: the bias has one too, and a negated bias
        # can leave a trained model's predictions almost unchanged
        dq = _producers(graph)[next(n for n in graph.graph.node if n.op_type == "Conv").input[1]]
        assert dq.op_type == "DequantizeLinear", dq.op_type
        scale = inits[dq.input[1]]
        scale.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(scale), scale.name))
        return graph

    return build


def test_a_broken_int8_file_is_refused_or_kept_marked_failed(trained_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_int8.Quantizer, "build", broken_build(onnx_int8.Quantizer.build))
    args = ("export", trained_checkpoint, "--precision", "int8", "--calib-size", "32", *GATE)
    refused = run_cli(*args, "--out", tmp_path / "refused")
    assert refused.returncode == 1, refused.stderr
    assert "model.int8-cpu.onnx misses the int8 parity thresholds on mnist5k test, 200 images: agreement" in (
        refused.stderr
    )
    assert "not written" in refused.stderr and "Traceback" not in refused.stderr
    assert not [p.name for p in (tmp_path / "refused").iterdir()], "nothing is written"

    kept = run_cli(*args, "--keep-failed", "--out", tmp_path / "kept")
    assert kept.returncode == 1 and "kept by --keep-failed" in kept.stderr, kept.stderr
    manifest = json.loads((tmp_path / "kept" / MANIFEST_NAME).read_text())
    entry = next(e for e in manifest["artifacts"] if e["file"] == "model.int8-cpu.onnx")
    assert (tmp_path / "kept" / "model.int8-cpu.onnx").is_file()
    assert entry["validation"]["gate"]["status"] == "failed"
    assert entry["validation"]["gate"]["failed"][0].startswith("agreement")
    assert entry["validation"]["top1_agreement"] < 0.99


# ---------------------------------------------------------------- the search


def test_search_keeps_the_fewest_most_sensitive_layers_in_float():
    ranking = [f"n{i}" for i in range(10)]
    tried = []

    def judge_needing(k):
        def judge(graph):
            tried.append(graph)
            return ([] if graph >= k else ["accuracy drop"]), {"float": graph}

        return judge

    def build(exclude=(), only=None):
        return len(exclude)  # stands in for a graph: how many layers it keeps in float

    plan = search(build, ranking, judge_needing(3), 0)
    assert plan.met and plan.excluded == ["n0", "n1", "n2"] and plan.graph == 3
    assert [s.float_layers for s in plan.steps] == [0, 1, 2, 3, 4]  # 0, 1, 2, 4 then bisection to 3
    assert search(build, ranking, judge_needing(0), 0).excluded == []
    tried.clear()
    first = Step(0, False, ["accuracy drop"], {})
    never = search(build, ranking, judge_needing(11), 0, first)
    assert not never.met and never.graph is None and tried == [1, 2, 4, 8, 10]  # the full graph was not judged again


# ---------------------------------------------------------------- graphs


@pytest.fixture(scope="module")
def trained_quantizers(trained_checkpoint):
    model, card = load_model(trained_checkpoint)
    context = ExportContext(options={Int8Options: Int8Options(calib_size=16)})
    fp32 = fp32_graph(model, card, context)
    return {target: quantizer(fp32, card, target, context) for target in ("cpu", "tensorrt")}


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_layers_kept_in_float_have_float_weights_and_tensorrt_ones_no_qdq_in_front(trained_quantizers, target):
    q = trained_quantizers[target]
    assert [layer.name for layer in q.layers][:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert q.layers[-1].name == "fc" and len(q.layers) == 20
    keep = [q.layers[4].node, q.layers[12].node]
    graph = q.build(exclude=keep)
    onnx.checker.check_model(graph, full_check=True)
    producer = _producers(graph)
    weights = {t.name for t in graph.graph.initializer}
    for node in graph.graph.node:
        if node.name not in keep and node.op_type in ("Conv", "Gemm"):
            assert producer[node.input[1]].op_type == "DequantizeLinear", node.name  # the others stay INT8
        if node.name in keep:
            assert node.input[1] in weights, "float weights"
            feeds = [producer[name].op_type for name in node.input if name in producer]
            if target == "tensorrt":
                assert "DequantizeLinear" not in feeds, f"{node.name} reads a Q/DQ tensor"
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    assert run_graph(graph, x)["logits"].shape == (2, 10)
    assert weighted_layers(graph)[4].node == keep[0]


# ---------------------------------------------------------------- the hard case


def test_fallback_keeps_the_broken_layers_in_float_and_meets_the_budget(hard_case, tmp_path):
    out = tmp_path / "export"
    args = ("--precision", "int8", "--calib-size", "32", *GATE, "--max-accuracy-drop", "0.5", "--out", out)
    result = run_cli("export", hard_case, *args)
    assert result.returncode == 0, result.stderr
    assert f"kept in float: {BROKEN_BLOCK}.conv" in result.stdout
    entry = next(e for e in json.loads((out / MANIFEST_NAME).read_text())["artifacts"] if e["precision"] == "int8")
    settings, validation = entry["settings"], entry["validation"]
    tries = settings["fallback"]["tries"]
    assert tries[0]["float_layers"] == 0 and tries[0]["accuracy_delta"] <= -1.0, "plain PTQ loses a point or more"
    assert set(settings["float_layers"]) <= {f"{BROKEN_BLOCK}.conv1", f"{BROKEN_BLOCK}.conv2"}
    layers = settings["int8_layers"]
    assert layers["total"] == 20 and layers["int8"] >= 0.8 * layers["total"]
    assert validation["accuracy_delta"] >= -0.5 and validation["gate"]["status"] == "passed"
    assert validation["inputs"] == "mnist5k test, 200 images" != settings["calibration"]["source"]
    report = run_parity(out, runtimes=["onnxruntime"], precisions=["int8"], limit=200)
    assert report.rows[0].float_layers == settings["float_layers"]
    assert f"model.int8-cpu.onnx keeps in float: {settings['float_layers'][0]}" in parity_markdown(report)


def test_quantize_report_ranks_the_broken_layers_first(hard_case, tmp_path):
    result = run_cli(
        "quantize-report", hard_case, "--calib-size", "32", "--gate-images", "100", "--out", tmp_path, "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = report["layers"]
    assert [row["index"] for row in rows] == list(range(20)) and rows[-1]["name"] == "fc"
    assert sorted(row["rank"] for row in rows) == list(range(1, 21))
    worst = {row["name"] for row in rows if row["rank"] <= 2}
    assert worst == {f"{BROKEN_BLOCK}.conv1", f"{BROKEN_BLOCK}.conv2"}, rows
    assert rows[-1]["output_sqnr"] == pytest.approx(rows[-1]["logits_sqnr"])  # the classifier's output is the logits
    assert set(report["keep_float"]) <= worst and report["met"]
    assert report["full"]["top1_agreement"] < 0.99
    assert (tmp_path / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "sensitivity.json").read_text())["keep_float"] == report["keep_float"]
