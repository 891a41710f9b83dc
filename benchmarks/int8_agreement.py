"""Top-1 agreement of both INT8 ONNX forms with the eager model, on a checkpoint's whole test split.

    .venv/bin/python benchmarks/int8_agreement.py runs/r20/best.pt [--calib-size 256] [--calib-method minmax]

The CPU form runs as ONNX Runtime runs it on this machine; the TensorRT form
with graph optimizations off, i.e. Q/DQ in float, the arithmetic a TensorRT
engine performs (ONNX Runtime's x86 S8S8 kernels are not what an engine runs).
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
import torch

from exporters import ExportContext
from exporters.onnx import fp32_graph
from exporters.onnx_int8 import Int8Options, int8_graph
from toolkit.checkpoint import load_model
from toolkit.data import load_dataset
from toolkit.preprocess import prepare_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--calib-size", type=int, default=256)
    parser.add_argument("--calib-method", default="minmax")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    model, card = load_model(args.checkpoint)
    test = load_dataset(card.dataset, data_dir=args.data_dir).test
    x = prepare_batch(test.images.numpy(), card.input)
    labels = test.labels.numpy()
    with torch.inference_mode():
        eager = model(torch.from_numpy(x)).argmax(1).numpy()
    context = ExportContext(
        options={Int8Options: Int8Options(calib_size=args.calib_size, calib_method=args.calib_method)},
        data_dir=args.data_dir,
    )
    fp32 = fp32_graph(model, card, context)
    print(f"{args.checkpoint}: {len(x)} test images, eager accuracy {np.mean(eager == labels):.4f}")
    for target in ("cpu", "tensorrt"):
        graph, _ = int8_graph(fp32, card, target, context)
        options = ort.SessionOptions()
        if target == "tensorrt":
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
        got = session.run(["logits"], {"input": x})[0].argmax(1)
        print(
            f"  int8 {target:8s} agreement with eager {np.mean(got == eager):.4f}   "
            f"accuracy {np.mean(got == labels):.4f}"
        )


if __name__ == "__main__":
    main()
