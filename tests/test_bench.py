"""rtool bench: real timings of real files, every runtime in one interleaved run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtimes import Runtime, available, list_runtimes
from toolkit.bench import parse_batch_sizes, run_bench, timed_rounds
from toolkit.bench_config import BenchSettings
from toolkit.errors import BadInputError

from conftest import assert_one_line_error

ROW_KEYS = ("runtime", "precision", "batch", "p50_ms", "p90_ms", "p99_ms", "throughput")


class SleepyRuntime(Runtime):
    """Takes a fixed time per call and counts its calls: timing without a model."""

    name = "sleepy"

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.calls = seconds, 0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import time

        self.calls += 1
        time.sleep(self.seconds)
        return batch


def test_timed_rounds_counts_and_orders_calls():
    fast, slow = SleepyRuntime(0.001), SleepyRuntime(0.004)
    times = timed_rounds([fast, slow], np.zeros((1, 1, 2, 2), np.float32), warmup=2, iters=7)
    assert [len(t) for t in times] == [7, 7]
    # warm-up + timed + one untimed lead-in call per turn (two rounds of up to 5 calls)
    assert fast.calls == slow.calls == 2 + 7 + 2
    assert np.median(times[1]) > np.median(times[0]) * 2


def test_bench_every_runtime_in_one_run(cpu_export_dir):
    # the browser is timed in tests/test_web.py, whose worker has Chromium running already
    runtimes = [name for name in list_runtimes() if name != "browser"]
    settings = BenchSettings(batch_sizes="1,4", warmup=1, iters=3, threads=1)
    result = run_bench(cpu_export_dir, settings, runtimes=runtimes)
    measured = {(r.runtime, r.precision, r.target) for r in result.rows}
    assert {
        ("eager", "fp32", None),
        ("torchscript", "fp32", None),
        ("pt2", "fp32", None),
        ("onnxruntime", "fp32", None),
        ("onnxruntime", "fp16", None),
        ("onnxruntime", "int8", "cpu"),
    } <= measured
    assert sorted({r.batch for r in result.rows}) == [1, 4]
    for row in result.rows:
        assert 0 < row.p50_ms <= row.p90_ms <= row.p99_ms
        assert row.throughput == pytest.approx(1000 * row.batch / row.mean_ms)
    if available("tensorrt")[0]:  # a GPU machine with TensorRT: the export built engines, and they are timed
        assert {("tensorrt", "fp16", None), ("tensorrt", "int8", None)} <= measured
        assert all(r.device.startswith("cuda") for r in result.rows if r.runtime == "tensorrt")
    else:  # elsewhere they are listed with the reason
        reasons = [u["reason"] for u in result.unavailable if u["runtime"] == "tensorrt"]
        assert reasons and all("TensorRT" in r or "GPU" in r for r in reasons)
    assert result.settings["device"] == "auto"
    eager = result.row("eager", "fp32", 1).p50_ms
    for precision, best in result.fastest(1).items():  # per precision, the lowest p50 at batch 1 and its ratio
        rows = [r for r in result.rows if r.batch == 1 and r.precision == precision]
        assert best["p50_ms"] == min(r.p50_ms for r in rows) and best["vs_eager"] == best["p50_ms"] / eager
        assert best["label"] in {r.label for r in rows}
    assert set(result.fastest(1)) == {r.precision for r in result.rows}
    ratios = result.ratios(1)
    assert ratios["onnxruntime fp32 / eager fp32"] == pytest.approx(
        result.row("onnxruntime", "fp32", 1).p50_ms / result.row("eager", "fp32", 1).p50_ms
    )


def test_bench_cli_json(cpu_export_dir, tmp_path, rtool):
    out = tmp_path / "bench.json"
    result = rtool(
        "bench",
        cpu_export_dir,
        "--runtimes",
        "eager,onnxruntime",
        "--precisions",
        "fp32,int8",
        "--batch-sizes",
        "2",
        "--warmup",
        "1",
        "--iters",
        "3",
        "--threads",
        "1",
        "--json",
        out,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    labels = {(r["runtime"], r["precision"], r["target"], r["format"]) for r in document["rows"]}
    assert labels == {
        ("eager", "fp32", None, "checkpoint"),
        ("onnxruntime", "fp32", None, "onnx"),
        ("onnxruntime", "int8", "cpu", "onnx"),
        ("onnxruntime", "int8", "tensorrt", "onnx"),
        ("onnxruntime", "fp32", None, "ort"),  # the .ort files run in ONNX Runtime too
        ("onnxruntime", "int8", None, "ort"),
    }
    for row in document["rows"]:
        assert all(key in row for key in ROW_KEYS) and row["batch"] == 2
    assert document["settings"]["threads"] == 1 and document["settings"]["iters"] == 3
    assert "p50" in result.stdout and "onnxruntime" in result.stdout


def test_bench_a_model_name_exports_first(rtool):
    result = rtool(
        "bench",
        "resnet20",
        "--input-shape",
        "1x16x16",
        "--runtimes",
        "onnxruntime",
        "--precisions",
        "fp32",
        "--batch-sizes",
        "1",
        "--warmup",
        "0",
        "--iters",
        "2",
        "--json",
        "-",
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["input_shape"] == [1, 16, 16]
    rows = [(r["runtime"], r["precision"], r["format"]) for r in document["rows"]]
    assert rows == [("onnxruntime", "fp32", "onnx"), ("onnxruntime", "fp32", "ort")]  # the formats it runs
    fastest = document["fastest_batch1"]["fp32"]
    assert fastest["p50_ms"] == min(r["p50_ms"] for r in document["rows"]) and fastest["vs_eager"] is None


@pytest.mark.parametrize("text", ["1,x", "0", ""])
def test_bad_batch_sizes(text):
    with pytest.raises(BadInputError):
        parse_batch_sizes(text)


def test_bench_bad_input_is_one_line(cpu_export_dir, tmp_path, rtool):
    assert_one_line_error(rtool("bench", tmp_path / "nothing"), 2, "neither a checkpoint")
    assert_one_line_error(rtool("bench", cpu_export_dir, "--runtimes", "warp"), 2, "unknown 'warp'")
    assert_one_line_error(rtool("bench", cpu_export_dir, "--batch-sizes", "1,-3"), 2, "batch-sizes")
