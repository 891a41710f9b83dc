"""Report output: the same numbers in the terminal table, Markdown, JSON and the PNG plot."""

from __future__ import annotations

import io
import json

from PIL import Image
from rich.console import Console

from toolkit import report
from toolkit.bench import BenchReport, BenchRow
from toolkit.parity import ParityReport, ParityRow
from toolkit.thresholds import default_thresholds

REFERENCE = {
    "runtime": "eager",
    "precision": "fp32",
    "artifact": "model.pt",
    "device": "cpu",
    "dataset": "mnist5k",
    "images": 1000,
    "batch_size": 100,
    "accuracy": 99.1,
    "logit_range": 30.0,
    "latency_ms": 41.5,
}


def parity_report(failed: bool = False) -> ParityReport:
    rows = [
        ParityRow(
            "onnxruntime",
            "fp32",
            "model.onnx",
            None,
            "CPUExecutionProvider",
            "ok",
            "",
            99.1,
            0.0,
            100.0,
            2e-6,
            3e-7,
            7e-8,
            12.25,
        ),
        ParityRow(
            "onnxruntime",
            "int8",
            "model.int8-cpu.onnx",
            "cpu",
            "CPUExecutionProvider",
            "failed" if failed else "ok",
            "agreement 97.00% < 99%" if failed else "",
            98.7,
            -0.4,
            97.0 if failed else 99.6,
            0.9,
            0.08,
            0.03,
            5.5,
            ["agreement 97.00% < 99%"] if failed else [],
        ),
        ParityRow("tensorrt", "fp16", None, None, None, "unavailable", "not exported: TensorRT is not installed"),
    ]
    return ParityReport("exp", REFERENCE, rows, default_thresholds())


def bench_report() -> BenchReport:
    rows = [
        BenchRow("eager", "fp32", 1, 10.0, 11.0, 12.0, 10.2, 98.0, None, "model.pt", "cpu"),
        BenchRow("onnxruntime", "fp32", 1, 5.0, 5.5, 6.0, 5.1, 196.1, None, "model.onnx", "CPUExecutionProvider"),
        BenchRow(
            "onnxruntime", "int8", 1, 1.5, 1.6, 1.9, 1.55, 645.2, "cpu", "model.int8-cpu.onnx", "CPUExecutionProvider"
        ),
    ]
    settings = {
        "batch_sizes": [1],
        "warmup": 2,
        "iters": 10,
        "threads": 2,
        "device": "cpu",
        "machine": {"cpu": "x86_64", "physical_cores": 2, "python": "3.11"},
    }
    return BenchReport(
        "exp",
        "resnet20",
        [1, 28, 28],
        settings,
        rows,
        [{"runtime": "tensorrt", "precision": "fp16", "reason": "TensorRT is not installed"}],
    )


def test_parity_markdown_has_every_row_and_the_verdict():
    text = report.parity_markdown(parity_report())
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert len(lines) == 1 + 1 + 3  # header, reference, three rows
    assert "| eager | fp32 | model.pt | cpu | reference | 99.10% |" in text
    assert (
        "| onnxruntime | int8 (cpu) | model.int8-cpu.onnx | CPUExecutionProvider | ok | 98.70% | -0.40 | 99.60% |"
        in text
    )
    assert "unavailable" in text and "TensorRT is not installed" in text
    assert "parity PASSED" in text


def test_parity_json_keys_and_verdict(tmp_path):
    path = report.write_parity_files(parity_report(failed=True), json_file=str(tmp_path / "p.json"))[0]
    document = json.loads(path.read_text())
    assert document["passed"] is False
    assert document["reference"]["accuracy"] == 99.1
    row = document["rows"][1]
    for key in (
        "runtime",
        "precision",
        "artifact",
        "target",
        "device",
        "status",
        "reason",
        "accuracy",
        "accuracy_delta",
        "agreement",
        "max_abs_diff",
        "mean_abs_diff",
        "latency_ms",
        "failed_thresholds",
    ):
        assert key in row
    assert row["status"] == "failed" and row["failed_thresholds"] == ["agreement 97.00% < 99%"]
    assert document["thresholds"]["int8"] == {"agreement": 99.0, "max_abs_diff": None, "accuracy_drop": 1.0}


def test_terminal_table_fits_80_columns_and_names_the_failure():
    out = io.StringIO()
    report.print_parity(parity_report(failed=True), Console(file=out, width=80))
    text = out.getvalue()
    table = text.split("files:")[0]
    assert "…" not in table  # nothing cut at 80 columns
    assert "onnxruntime int8 (cpu): agreement 97.00% < 99%" in text
    assert "parity FAILED: 1 ok, 1 failed, 1 unavailable" in text


def test_parity_plot_is_a_png(tmp_path):
    path = report.parity_plot(parity_report(failed=True), tmp_path / "parity.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 500


def test_bench_markdown_and_ratios():
    text = report.bench_markdown(bench_report())
    assert "| onnxruntime | int8 (cpu) | 1 | 1.50 | 1.60 | 1.90 | 645.2 |" in text
    assert "onnxruntime fp32 / eager fp32 = 0.50x" in text
    assert "onnxruntime int8 (cpu) / onnxruntime fp32 = 0.30x" in text
    assert "tensorrt fp16 (TensorRT is not installed)" in text


def test_demo_page_links_every_figure():
    text = report.demo_markdown(
        title="demo",
        intro="intro",
        training={"epochs": 1},
        curves="train/curves.png",
        parity=parity_report(),
        parity_plot_file="parity.png",
        bench=bench_report(),
        grid="predictions.png",
        grid_caption="caption",
        exports=[
            {
                "file": "model.onnx",
                "format": "onnx",
                "precision": "fp32",
                "runtime": "onnxruntime",
                "target": None,
                "size": 1_100_000,
            }
        ],
        timings={"total": 12.0},
        commands=[["rtool", "demo"]],
    )
    for link in ("](train/curves.png)", "](parity.png)", "](predictions.png)"):
        assert link in text
    assert "## Parity" in text and "## Benchmark" in text and "1.10 MB" in text


def test_bench_terminal_output_keeps_brackets_in_reasons():
    bench = bench_report()
    bench.unavailable = [
        {
            "runtime": "tensorrt",
            "precision": "int8",
            "reason": "TensorRT is not installed (pip install 'rtool[tensorrt]')",
        }
    ]
    out = io.StringIO()
    report.print_bench(bench, Console(file=out, width=200))
    assert "pip install 'rtool[tensorrt]'" in out.getvalue()
