"""The runtime speed targets, measured: ResNet-18, 3x224x224, batch 1, eager vs ONNX Runtime FP32 and INT8 (cpu).

    .venv/bin/python benchmarks/runtime_speed.py                    # export once, 3 interleaved runs
    .venv/bin/python benchmarks/runtime_speed.py --repeats 5 --iters 200 --json speed.json
    .venv/bin/python benchmarks/runtime_speed.py --profile          # where the time goes, per operator type

Targets (p50 at batch 1, all from one interleaved run):
  ONNX Runtime FP32 <= 0.55x eager;  ONNX Runtime INT8 (cpu) <= 0.2x eager and <= 0.4x ONNX Runtime FP32.

Each repeat is one ``rtool bench`` run (toolkit.bench.bench_export_dir); the
verdict uses the median ratio over the repeats, and every repeat is printed.
Run it on a quiet machine: other processes on the same cores distort latency.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runtimes import physical_cores  # noqa: E402
from toolkit.bench import bench_export_dir  # noqa: E402
from toolkit.bench_config import BenchSettings  # noqa: E402
from toolkit.card import MANIFEST_NAME  # noqa: E402

TARGETS = {
    "onnxruntime fp32 / eager fp32": 0.55,
    "onnxruntime int8 (cpu) / eager fp32": 0.2,
    "onnxruntime int8 (cpu) / onnxruntime fp32": 0.4,
}


def export_resnet18(out: Path) -> Path:
    """model.pt, model.onnx and model.int8-cpu.onnx of an untrained ResNet-18 (speed does not depend on weights)."""
    if (out / MANIFEST_NAME).is_file():
        return out
    from exporters.pipeline import export_model

    print(f"exporting resnet18 3x224x224 to {out} (once)", flush=True)
    export_model("resnet18", "onnx", "fp32,int8", out, target="cpu", input_shape=(3, 224, 224), calib_size=32)
    return out


def profile_onnx(path: Path, threads: int, runs: int = 50) -> list[tuple[str, float]]:
    """Share of ONNX Runtime's kernel time per operator type (its own profiler)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as work:
        options.profile_file_prefix = str(Path(work) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        for _ in range(runs):
            session.run(None, {"input": x})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: Counter[str] = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values()) or 1
    return [(op, 100 * us / total) for op, us in per_op.most_common(8)]


def profile_eager(path: Path, threads: int, runs: int = 20) -> list[tuple[str, float]]:
    """Share of eager CPU time per aten operator (torch.profiler)."""
    import torch

    from toolkit.checkpoint import load_model

    torch.set_num_threads(threads)
    model, _ = load_model(path)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                model(x)
    rows = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in rows) or 1
    return [(k, 100 * t / total) for k, t in sorted(rows, key=lambda r: -r[1])[:8]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export-dir", type=Path, default=REPO / "runs" / "bench-resnet18")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--profile", action="store_true", help="print where the time goes per operator type")
    args = parser.parse_args()
    threads = args.threads or physical_cores()
    export_dir = export_resnet18(args.export_dir)

    if args.profile:
        for name in ("model.onnx", "model.int8-cpu.onnx"):
            print(f"\n{name}: ONNX Runtime kernel time by operator type")
            for op, share in profile_onnx(export_dir / name, threads):
                print(f"  {op:<24} {share:5.1f}%")
        print("\nmodel.pt (eager): CPU time by aten operator")
        for op, share in profile_eager(export_dir / "model.pt", threads):
            print(f"  {op:<40} {share:5.1f}%")

    runs = []
    for repeat in range(args.repeats):
        began = time.perf_counter()
        settings = BenchSettings(batch_sizes="1", warmup=args.warmup, iters=args.iters, threads=threads)
        report = bench_export_dir(export_dir, settings, runtimes=["eager", "onnxruntime"], precisions=["fp32", "int8"])
        p50 = {r.label: round(r.p50_ms, 3) for r in report.rows}
        ratios = {k: round(v, 3) for k, v in report.ratios(1).items() if k in TARGETS}
        runs.append({"p50_ms": p50, "ratios": ratios, "seconds": round(time.perf_counter() - began, 1)})
        print(f"run {repeat + 1}: p50 ms {p50}; ratios {ratios}", flush=True)

    verdict = {}
    print(f"\nResNet-18 3x224x224 batch 1, {threads} threads, median of {args.repeats} runs of {args.iters} calls:")
    for name, limit in TARGETS.items():
        median = statistics.median(run["ratios"][name] for run in runs)
        verdict[name] = {"median_ratio": median, "target": limit, "met": median <= limit}
        print(f"  {name:<44} {median:.3f}x  (target <= {limit}x: {'met' if median <= limit else 'MISSED'})")
    if args.json:
        args.json.write_text(
            json.dumps({"threads": threads, "iters": args.iters, "runs": runs, "targets": verdict}, indent=2) + "\n"
        )
    return 0 if all(v["met"] for v in verdict.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
