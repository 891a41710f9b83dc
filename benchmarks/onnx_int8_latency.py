"""Latency of an exported ResNet-18 (3x224x224, batch 1) on this CPU: eager vs ONNX Runtime FP32 / INT8.

    .venv/bin/python benchmarks/onnx_int8_latency.py [--out DIR] [--runs 100] [--threads N]

Exports resnet18 (untrained weights; latency does not depend on them) with
rtool's exporters, then times each file in ONNX Runtime's CPU provider and the
eager model in PyTorch, and prints p50/p90 in milliseconds and the ratios the
INT8 CPU recipe is judged by (INT8-cpu / FP32, INT8-cpu / eager).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from exporters.pipeline import export_model
from toolkit.checkpoint import load_model


def percentiles(run, runs: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 90) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="export folder (default: a temporary one)")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="rtool-bench-"))
    for target in ("cpu", "tensorrt"):
        export_model(
            "resnet18",
            "onnx",
            "fp32,int8",
            out,
            target=target,
            input_shape=(3, 224, 224),
            num_classes=1000,
            calib_size=64,
        )
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    results = {}
    for name in ("model.onnx", "model.int8-cpu.onnx", "model.int8-trt.onnx"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(out / name), options, providers=["CPUExecutionProvider"])
        results[f"onnxruntime {name}"] = percentiles(
            lambda session=session: session.run(None, {"input": x}), args.runs, args.warmup
        )
    torch.set_num_threads(args.threads)
    model, _ = load_model(out / "model.pt")
    tensor = torch.from_numpy(x)
    with torch.inference_mode():
        results["eager (torch)"] = percentiles(lambda: model(tensor), args.runs, args.warmup)
    print(f"resnet18 3x224x224 batch 1, {args.threads} threads, {args.runs} runs")
    for name, (p50, p90) in results.items():
        print(f"  {name:36s} p50 {p50:8.2f} ms   p90 {p90:8.2f} ms")
    fp32, int8, eager = (
        results[k][0] for k in ("onnxruntime model.onnx", "onnxruntime model.int8-cpu.onnx", "eager (torch)")
    )
    print(f"  int8-cpu / onnx fp32 = {int8 / fp32:.2f}   int8-cpu / eager = {int8 / eager:.2f}")


if __name__ == "__main__":
    main()
