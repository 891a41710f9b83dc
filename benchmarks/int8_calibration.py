"""INT8 calibration methods side by side: agreement, accuracy drop and latency of each method x calibration size.

    .venv/bin/python benchmarks/int8_calibration.py runs/r20/best.pt [--target cpu] [--sizes 16,64,256]
        [--methods minmax,entropy,percentile] [--per-tensor] [--images 1000] [--runs 200] [--markdown FILE]

Every file is built by rtool's own INT8 path (the same calibration images,
``exporters.onnx_int8``) from one checkpoint, and measured on the held-out
test split against the eager model: top-1 agreement, accuracy change in
points, max |logit diff|. Latency is ONNX Runtime's CPU provider at batch 1
(p50 of ``--runs`` calls, one thread, the files taking turns so machine load
reaches all alike), with the FP32 ONNX file's p50 for the speed-up. The
TensorRT form runs with graph optimizations off (Q/DQ in float, as parity
checks it), so its latency says nothing about an engine's.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

from exporters import ExportContext
from exporters.int8_sensitivity import run_graph
from exporters.onnx import fp32_graph
from exporters.onnx_common import INPUT_NAME
from exporters.onnx_int8 import Int8Options, quantizer
from exporters.validation import GateOptions, compare, held_out
from toolkit.checkpoint import load_model


def session(graph, simulate: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if simulate:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])


def p50_latencies(sessions: dict[str, ort.InferenceSession], x: np.ndarray, runs: int) -> dict[str, float]:
    """p50 ms per session at batch 1; sessions take turns in blocks of 10 calls."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for s in sessions.values():
        for _ in range(10):
            s.run(None, {INPUT_NAME: x})
    for _ in range(0, runs, 10):
        for name, s in sessions.items():
            for _ in range(10):
                began = time.perf_counter()
                s.run(None, {INPUT_NAME: x})
                times[name].append(time.perf_counter() - began)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--target", default="cpu", choices=("cpu", "tensorrt"))
    parser.add_argument("--methods", default="minmax,entropy,percentile")
    parser.add_argument("--sizes", default="16,64,256")
    parser.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor")
    parser.add_argument("--images", type=int, default=1000, help="held-out test images")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--markdown", default=None, help="also write the table as Markdown")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, card = load_model(args.checkpoint)
    simulate = args.target == "tensorrt"
    base = ExportContext(options={GateOptions: GateOptions(gate_images=args.images)}, data_dir=args.data_dir)
    batch, expected, source = held_out(model, card, base)
    fp32 = fp32_graph(model, card, base)
    rows, sessions = [], {"fp32": session(fp32, False)}
    for method in args.methods.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            options = Int8Options(calib_size=size, calib_method=method, per_channel=not args.per_tensor)
            context = ExportContext(options={Int8Options: options}, cache=base.cache, data_dir=args.data_dir)
            began = time.perf_counter()
            graph = quantizer(fp32, card, args.target, context).build()
            seconds = time.perf_counter() - began
            stats = compare(expected, run_graph(graph, batch, simulate=simulate)["logits"], source)
            rows.append((method, size, seconds, stats))
            sessions[f"{method}/{size}"] = session(graph, simulate)
            print(f"built {method} {size}: {seconds:.1f} s", flush=True)
    latency = p50_latencies(sessions, batch[:1], args.runs)
    columns = ("method", "calib images", "agreement", "Δ acc (pts)", "max |Δ logit|", "p50 ms", "vs fp32", "build s")
    table = Table(title=f"{args.checkpoint}: INT8 ({args.target}) on {source}, eager {stats['eager_accuracy']:.2f}%")
    for column in columns:
        table.add_column(column, justify="left" if column == "method" else "right")
    lines = []
    for method, size, seconds, stats in rows:
        ms = latency[f"{method}/{size}"]
        cells = [
            method,
            str(size),
            f"{100 * stats['top1_agreement']:.2f}%",
            f"{stats['accuracy_delta']:+.2f}",
            f"{stats['max_abs_diff']:.3f}",
            f"{ms:.3f}",
            f"{latency['fp32'] / ms:.2f}x",
            f"{seconds:.1f}",
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    Console().print(table)
    print(f"fp32 ONNX p50 {latency['fp32']:.3f} ms (batch 1, 1 thread, {args.runs} runs)")
    if args.markdown:
        header = ["| " + " | ".join(c.replace("|", "\\|") for c in columns) + " |", "|" + "---|" * len(columns)]
        with open(args.markdown, "w") as f:
            f.write("\n".join([table.title, "", *header, *lines, "", f"fp32 p50 {latency['fp32']:.3f} ms", ""]))


if __name__ == "__main__":
    main()
