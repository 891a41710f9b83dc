"""rtool demo end to end (short training), and how it treats its output folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from runtimes import available
from toolkit.demo import MARKER, OWNED, claim_folder
from toolkit.errors import BadInputError
from toolkit.parity import run_parity
from toolkit.thresholds import default_thresholds

from conftest import (
    DEMO_ARGS,
    DEMO_USER_FILES,
    EXECUTORCH_MISSING,
    OPENVINO_MISSING,
    assert_one_line_error,
    edge_files,
)

FAST = DEMO_ARGS


def test_demo_end_to_end(demo_run):
    out, result = demo_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    # --overwrite replaces the demo's own files only: the user's files survive
    assert {name: (out / name).read_text() for name in DEMO_USER_FILES} == DEMO_USER_FILES
    report = (out / "report.md").read_text()
    for link in ("train/curves.png", "parity.png", "predictions.png", "browser.png"):
        assert f"]({link})" in report
        assert (out / link).read_bytes()[:4] == b"\x89PNG"
    assert "## Parity" in report and "## Benchmark" in report and "parity PASSED" in report
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] is True and parity["reference"]["images"] == 500
    statuses = {(r["runtime"], r["precision"], r["target"]): r["status"] for r in parity["rows"]}
    assert statuses[("onnxruntime", "int8", "cpu")] == "ok"
    assert statuses[("browser", "fp32", None)] == statuses[("browser", "int8", None)] == "ok"
    assert "## In the browser" in report and "headless Chromium" in report
    assert statuses[("tensorrt", "fp16", None)] in ("ok", "unavailable")
    bench = json.loads((out / "bench.json").read_text())
    assert {r["batch"] for r in bench["rows"]} == {1, 32}
    assert all(r["p50_ms"] > 0 for r in bench["rows"])
    summary = json.loads((out / MARKER).read_text())
    assert summary["status"] == "done" and summary["passed"] is True
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert {
        "model.pt",
        "model.ts",
        "model.pt2",
        "model.onnx",
        "model.fp16.onnx",
        "model.int8-cpu.onnx",
        "model.int8-trt.onnx",
        "web/model.onnx",
        "web/model.int8.onnx",
    } | edge_files()[0] <= {a["file"] for a in manifest["artifacts"]}
    assert "fastest int8 at batch 1:" in result.stdout and "fastest int8 at batch 1:" in report
    assert "cpuinfo" not in result.stdout + result.stderr  # ExecuTorch's native start-up lines stay out
    for step in ("[1/6]", "[3/6]", "[6/6]", "report:"):
        assert step in result.stdout
    for line in result.stdout.splitlines():  # reasons are printed as they are, not read as rich markup
        if "TensorRT is not installed" in line:
            assert "pip install 'rtool[tensorrt]'" in line, line


def test_demo_refuses_a_folder_it_did_not_write(tmp_path, rtool):
    (tmp_path / "notes.txt").write_text("mine")
    assert_one_line_error(rtool("demo", "--out", tmp_path, *FAST), 2, "--overwrite")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_claim_folder_replaces_only_the_demos_own_files(tmp_path):
    claim_folder(tmp_path, overwrite=False)  # empty folder: fine
    (tmp_path / "report.md").write_text("old report")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.onnx").write_text("old")
    (tmp_path / "keep.txt").write_text("someone else's")
    claim_folder(tmp_path, overwrite=False)  # a demo folder (marker present): its report files cleared
    assert not (tmp_path / "report.md").exists()
    assert (tmp_path / "export" / "model.onnx").exists(), "export/ is cleaned by the export, which proves ownership"
    assert (tmp_path / "keep.txt").read_text() == "someone else's"
    assert json.loads((tmp_path / MARKER).read_text())["status"] == "running"
    assert "report.md" in OWNED


def test_claim_folder_needs_overwrite_for_foreign_files(tmp_path):
    (tmp_path / "data.csv").write_text("x")
    with pytest.raises(BadInputError, match="--overwrite"):
        claim_folder(tmp_path, overwrite=False)
    claim_folder(tmp_path, overwrite=True)
    assert (tmp_path / "data.csv").exists() and (tmp_path / MARKER).exists()
    with pytest.raises(BadInputError, match="is a file"):
        claim_folder(tmp_path / "data.csv", overwrite=True)


# The card's parity test: the demo's trained model, exported to every format and precision this machine
# builds; each runtime available here runs the whole test set against the eager FP32 model.
CPU_ROWS = {
    ("torchscript", "fp32", None),
    ("pt2", "fp32", None),
    ("onnxruntime", "fp32", None),
    ("onnxruntime", "fp16", None),
    ("onnxruntime", "int8", "cpu"),
    ("onnxruntime", "int8", "tensorrt"),
    ("browser", "fp32", None),  # the web page in headless Chromium (tests/test_web.py)
    ("browser", "int8", None),
}
EDGE_ROWS = {  # (runtime, precision, format) of the edge targets whose packages are installed here
    ("onnxruntime", "fp32", "ort"),
    ("onnxruntime", "int8", "ort"),
    *([] if OPENVINO_MISSING else [("openvino", p, "openvino") for p in ("fp32", "fp16", "int8")]),
    *([] if EXECUTORCH_MISSING else [("executorch", p, "executorch") for p in ("fp32", "int8")]),
}


@pytest.fixture(scope="module")
def trained_export(demo_run, tmp_path_factory) -> Path:
    """resnet20 trained 4 epochs on mnist5k and exported to every format and precision this machine builds:
    the demo's own export folder (a copy), so the session trains that model once."""
    out, result = demo_run
    assert result.returncode == 0, result.stderr
    return Path(shutil.copytree(out / "export", tmp_path_factory.mktemp("parity") / "export"))


def test_every_available_runtime_meets_the_thresholds(trained_export):
    report = run_parity(trained_export)
    assert report.reference["images"] == 1000 and report.reference["accuracy"] > 90
    measured = {(r.runtime, r.precision, r.target) for r in report.rows if r.status != "unavailable"}
    assert CPU_ROWS <= measured
    assert EDGE_ROWS <= {(r.runtime, r.precision, r.format) for r in report.rows if r.status != "unavailable"}
    for row in report.rows:
        if row.status == "unavailable":
            assert not available(row.runtime)[0] or row.artifact is None, row
            assert row.reason
            continue
        assert row.status == "ok", f"{row.label}: {row.reason}"
        assert row.failed_thresholds == []
        limits = default_thresholds()[row.precision]
        assert row.agreement >= limits.agreement
        if limits.max_abs_diff is not None:
            assert row.max_abs_diff <= limits.max_abs_diff * report.reference["logit_range"]
        if limits.accuracy_drop is not None:
            assert row.accuracy_delta >= -limits.accuracy_drop
        assert row.latency_ms > 0
    assert report.passed


def test_tensorrt_rows_say_why_they_are_unavailable(trained_export):
    ok, reason = available("tensorrt")
    if ok:
        pytest.skip("TensorRT runs on this machine, so its rows are measured")
    report = run_parity(trained_export, runtimes=["tensorrt"])
    assert [(r.precision, r.status) for r in report.rows] == [("fp16", "unavailable"), ("int8", "unavailable")]
    assert all("TensorRT" in r.reason for r in report.rows)
    assert report.passed
