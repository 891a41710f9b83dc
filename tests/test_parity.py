"""Parity that fails when it should: the tests break things on purpose (perturbed weights, a changed file,
strict thresholds, a required runtime that is missing) and check the failure is caught and named.

The card's parity test itself (every runtime on this machine predicts what the eager model predicts, on the
demo's trained model) lives in test_demo.py, beside the demo run that trains that model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from runtimes import available
from toolkit.card import MANIFEST_NAME
from toolkit.errors import BadInputError
from toolkit.parity import run_parity
from toolkit.thresholds import load_thresholds

from conftest import assert_one_line_error


def copy_export(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "export"
    shutil.copytree(source, target)
    return target


def restamp(export_dir: Path, name: str) -> None:
    """Record a changed file's new sha256 and size in the manifest, as if it had been exported that way."""
    manifest = json.loads((export_dir / MANIFEST_NAME).read_text())
    data = (export_dir / name).read_bytes()
    for entry in manifest["artifacts"]:
        if entry["file"] == name:
            entry.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    (export_dir / MANIFEST_NAME).write_text(json.dumps(manifest))


def perturb_onnx_weights(path: Path, scale: float = 1.0) -> None:
    """Add noise as large as the weights themselves to the classifier (the last initializer with 2 dims)."""
    model = onnx.load(str(path))
    weights = [t for t in model.graph.initializer if len(t.dims) == 2][-1]
    values = numpy_helper.to_array(weights)
    noisy = values + scale * values.std() * np.random.default_rng(0).standard_normal(values.shape)
    weights.CopyFrom(numpy_helper.from_array(noisy.astype(values.dtype), weights.name))
    onnx.save(model, str(path))


def test_perturbed_onnx_fails_and_names_the_threshold(cpu_export_dir, tmp_path, rtool):
    export_dir = copy_export(cpu_export_dir, tmp_path)
    perturb_onnx_weights(export_dir / "model.onnx")
    restamp(export_dir, "model.onnx")
    out = tmp_path / "parity.json"
    result = rtool(
        "parity",
        export_dir,
        "--runtimes",
        "onnxruntime",
        "--precisions",
        "fp32",
        "--limit",
        "200",
        "--json",
        out,
        "--markdown",
        tmp_path / "parity.md",
        "--plot",
        tmp_path / "parity.png",
    )
    assert_one_line_error(result, 1, "max abs diff")
    assert "onnxruntime fp32 (model.onnx)" in result.stderr
    document = json.loads(out.read_text())
    assert document["passed"] is False
    [row] = [r for r in document["rows"] if r["artifact"] == "model.onnx"]
    assert row["status"] == "failed" and row["max_abs_diff"] > 1e-3 * document["reference"]["logit_range"]
    assert any(t.startswith("max abs diff") for t in row["failed_thresholds"])
    assert "failed" in (tmp_path / "parity.md").read_text()
    assert (tmp_path / "parity.png").read_bytes()[:4] == b"\x89PNG"


def test_untouched_export_passes_fp32_on_the_cli(cpu_export_dir, tmp_path, rtool):
    """The same command as above on the unbroken files exits 0: the failure above came from the weights."""
    result = rtool(
        "parity",
        cpu_export_dir,
        "--runtimes",
        "onnxruntime,torchscript",
        "--precisions",
        "fp32",
        "--limit",
        "200",
        "--json",
        "-",
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["passed"] is True
    assert {r["runtime"] for r in document["rows"] if r["status"] == "ok"} == {"onnxruntime", "torchscript"}


def test_file_changed_after_export_fails_its_row(cpu_export_dir, tmp_path):
    export_dir = copy_export(cpu_export_dir, tmp_path)
    perturb_onnx_weights(export_dir / "model.onnx", scale=0.01)  # manifest left as it was
    report = run_parity(export_dir, runtimes=["onnxruntime"], precisions=["fp32"], limit=50)
    [row] = [r for r in report.rows if r.artifact == "model.onnx"]
    assert row.status == "failed" and "sha256" in row.reason
    assert not report.passed


def test_a_stricter_threshold_flag_fails_the_row(cpu_export_dir, rtool):
    result = rtool(
        "parity",
        cpu_export_dir,
        "--runtimes",
        "onnxruntime",
        "--precisions",
        "fp16",
        "--limit",
        "100",
        "--threshold",
        "fp16.max_abs_diff=0",
    )
    assert_one_line_error(result, 1, "onnxruntime fp16 (model.fp16.onnx): max abs diff")


def test_require_turns_unavailable_into_failure(cpu_export_dir, rtool):
    if available("tensorrt")[0]:
        pytest.skip("TensorRT runs on this machine")
    result = rtool("parity", cpu_export_dir, "--runtimes", "tensorrt", "--require", "tensorrt", "--limit", "20")
    assert_one_line_error(result, 1, "required by --require")
    assert rtool("parity", cpu_export_dir, "--runtimes", "tensorrt", "--limit", "20").returncode == 0


def test_thresholds_from_json_toml_and_flags(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"int8": {"agreement": 99.5, "accuracy_drop": "none"}}))
    (tmp_path / "t.toml").write_text("[fp32]\nmax_abs_diff = 1e-4\n[fp16]\nagreement = 98\n")
    from_json = load_thresholds(tmp_path / "t.json")
    assert (from_json["int8"].agreement, from_json["int8"].accuracy_drop) == (99.5, None)
    assert from_json["fp32"].agreement == 99.9  # untouched defaults stay
    from_toml = load_thresholds(tmp_path / "t.toml", ["fp16.agreement=97.5"])
    assert from_toml["fp32"].max_abs_diff == 1e-4 and from_toml["fp16"].agreement == 97.5


@pytest.mark.parametrize(
    "content, flag, message",
    [
        ('{"int9": {"agreement": 99}}', None, "unknown precision 'int9'"),
        ('{"int8": {"agreemnt": 99}}', None, "unknown threshold 'agreemnt'"),
        ('{"int8": {"agreement": "high"}}', None, "not a number"),
        ('{"int8": 99}', None, "must map each precision"),
        ("{not json", None, "not valid JSON"),
        (None, "int8.agreement", "PRECISION.KEY=VALUE"),
        (None, "int8.agreement=-1", ">= 0"),
    ],
)
def test_bad_thresholds_are_refused(tmp_path, content, flag, message):
    path = None
    if content is not None:
        path = tmp_path / "t.json"
        path.write_text(content)
    with pytest.raises(BadInputError, match=message.replace("(", r"\(")):
        load_thresholds(path, [flag] if flag else [])


def test_bad_input_exits_2_in_one_line(cpu_export_dir, tmp_path, rtool):
    assert_one_line_error(rtool("parity", tmp_path / "missing"), 2, "does not exist")
    assert_one_line_error(rtool("parity", tmp_path), 2, MANIFEST_NAME)
    assert_one_line_error(rtool("parity", cpu_export_dir, "--runtimes", "warp"), 2, "unknown 'warp'")
    assert_one_line_error(rtool("parity", cpu_export_dir, "--thresholds", tmp_path / "none.toml"), 2, "does not exist")
    assert_one_line_error(rtool("parity", cpu_export_dir, "--dataset", "cifar10", "--data-dir", tmp_path), 2)
