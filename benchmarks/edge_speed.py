"""rtool's runtimes against the libraries' own APIs on the same files, in one interleaved run.

    .venv/bin/python benchmarks/edge_speed.py                      # ResNet-18 3x224x224, batch 1, 3 repeats
    .venv/bin/python benchmarks/edge_speed.py --repeats 5 --iters 200 --json edge.json

Exports resnet18 once (untrained weights: latency does not depend on them) to
ONNX FP32 and INT8 (cpu), OpenVINO FP32 and INT8 and, where ExecuTorch is
installed, .pte FP32 and INT8. Then each repeat times, side by side in turns
(``toolkit.bench.timed_rounds``, as ``rtool bench`` does), eager, every rtool
runtime on its files, a bare ``onnxruntime.InferenceSession`` (only
``intra_op_num_threads`` set) on ``model.int8-cpu.onnx``, and OpenVINO's own
``core.compile_model(xml, "CPU")`` on ``model.int8.openvino.xml``.

Targets (issue 18): rtool's fastest INT8 row p50 <= 0.08x eager, and rtool's
OpenVINO INT8 row <= 1.1x OpenVINO's own API on the same file. Run it on a
quiet machine; the verdict uses the median over the repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runtimes import available, open_runtime, physical_cores  # noqa: E402
from toolkit.bench import cpu_description, timed_rounds  # noqa: E402
from toolkit.card import MANIFEST_NAME  # noqa: E402

ROWS = [  # (label, runtime, file)
    ("eager fp32", "eager", "model.pt"),
    ("onnxruntime fp32", "onnxruntime", "model.onnx"),
    ("onnxruntime int8 (cpu)", "onnxruntime", "model.int8-cpu.onnx"),
    ("openvino fp32", "openvino", "model.openvino.xml"),
    ("openvino int8", "openvino", "model.int8.openvino.xml"),
    ("executorch fp32", "executorch", "model.pte"),
    ("executorch int8", "executorch", "model.int8.pte"),
]


class BareOnnxRuntime:
    """What a user writes without rtool: an InferenceSession with the thread count set, nothing else."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input": batch})[0]


class BareOpenVino:
    """OpenVINO's own API with its defaults: core.compile_model(xml, "CPU") and one infer request."""

    def __init__(self, path: Path) -> None:
        import openvino as ov

        self.request = ov.Core().compile_model(str(path), "CPU").create_infer_request()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.request.infer({0: batch})[0]


def export_resnet18(out: Path) -> Path:
    if (out / MANIFEST_NAME).is_file():
        return out
    from exporters.pipeline import export_model

    formats = ["onnx", "openvino"] + (["executorch"] if available("executorch")[0] else [])
    print(f"exporting resnet18 3x224x224 ({', '.join(formats)}) to {out} (once)", flush=True)
    export_model("resnet18", formats, "fp32,int8", out, target="cpu", input_shape=(3, 224, 224), calib_size=32)
    return out


def one_run(export_dir: Path, threads: int, warmup: int, iters: int) -> dict[str, float]:
    """p50 ms of every row, all loaded side by side and timed in turns."""
    rows: list[tuple[str, Any]] = []
    for label, runtime, name in ROWS:
        if (export_dir / name).is_file() and available(runtime)[0]:
            rows.append((label, open_runtime(runtime, export_dir / name, "cpu", threads=threads)))
    rows.append(("bare InferenceSession int8 (cpu)", BareOnnxRuntime(export_dir / "model.int8-cpu.onnx", threads)))
    rows.append(("bare OpenVINO API int8", BareOpenVino(export_dir / "model.int8.openvino.xml")))
    batch = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    times = timed_rounds([r for _, r in rows], batch, warmup, iters)
    return {label: float(np.percentile(t, 50) * 1e3) for (label, _), t in zip(rows, times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export-dir", type=Path, default=REPO / "runs" / "bench-resnet18-edge")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    threads = args.threads or physical_cores()
    export_dir = export_resnet18(args.export_dir)
    runs = []
    for repeat in range(args.repeats):
        began = time.perf_counter()
        p50 = one_run(export_dir, threads, args.warmup, args.iters)
        eager = p50["eager fp32"]
        int8 = {k: v for k, v in p50.items() if "int8" in k and not k.startswith("bare")}
        fastest = min(int8, key=int8.get)
        ratios = {
            "fastest rtool int8 / eager": int8[fastest] / eager,
            "rtool openvino int8 / bare OpenVINO API": p50["openvino int8"] / p50["bare OpenVINO API int8"],
            "rtool onnxruntime int8 / bare InferenceSession": p50["onnxruntime int8 (cpu)"]
            / p50["bare InferenceSession int8 (cpu)"],
        }
        runs.append(
            {"p50_ms": p50, "ratios": ratios, "fastest_int8": fastest, "seconds": round(time.perf_counter() - began, 1)}
        )
        print(f"run {repeat + 1}: " + "; ".join(f"{k} {v:.2f} ms" for k, v in p50.items()), flush=True)
        print(f"  fastest int8: {fastest}; " + "; ".join(f"{k} = {v:.3f}x" for k, v in ratios.items()), flush=True)
    print(f"\nmedian of {args.repeats} runs ({threads} threads, {cpu_description()['cpu']}):")
    for key in runs[0]["ratios"]:
        print(f"  {key}: {statistics.median(r['ratios'][key] for r in runs):.3f}x")
    if args.json:
        args.json.write_text(json.dumps({"threads": threads, "iters": args.iters, "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
