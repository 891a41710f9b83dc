"""What --max-accuracy-drop buys and costs: full INT8 vs the fallback file, accuracy on the test split and speed.

    .venv/bin/python benchmarks/int8_fallback.py CHECKPOINT --budget 0.5 [--target cpu] [--per-tensor]
        [--calib-size 256] [--calib-method minmax] [--gate-images 500] [--runs 300] [--batch 1]

Builds the FP32 ONNX graph, the full INT8 graph and the fallback graph
exactly as ``rtool export`` does (the fallback judged on ``--gate-images``
held-out test images), then measures all three on the whole test split
against the eager model (agreement, accuracy change) and times them in ONNX
Runtime's CPU provider, one thread, taking turns (p50 at ``--batch``). The
speed-ups are over the FP32 file; the target is that the fallback keeps its
speed-up within 20% of the full INT8 file's.
"""

from __future__ import annotations

import argparse

import torch
from int8_calibration import p50_latencies, session
from rich.console import Console
from rich.table import Table

from exporters import ExportContext
from exporters.int8_sensitivity import run_graph
from exporters.onnx import fp32_graph
from exporters.onnx_int8 import Int8Options, int8_graph, quantizer
from exporters.validation import GateOptions, compare, held_out, validation_batch
from toolkit.checkpoint import load_model
from toolkit.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--budget", type=float, required=True, help="--max-accuracy-drop, in points")
    parser.add_argument("--target", default="cpu", choices=("cpu", "tensorrt"))
    parser.add_argument("--per-tensor", action="store_true")
    parser.add_argument("--calib-size", type=int, default=256)
    parser.add_argument("--calib-method", default="minmax")
    parser.add_argument("--gate-images", type=int, default=500)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, card = load_model(args.checkpoint)
    int8 = Int8Options(
        calib_size=args.calib_size,
        calib_method=args.calib_method,
        per_channel=not args.per_tensor,
        max_accuracy_drop=args.budget,
    )
    context = ExportContext(options={Int8Options: int8, GateOptions: GateOptions(gate_images=args.gate_images)})
    fp32 = fp32_graph(model, card, context)
    fallback, settings = int8_graph(fp32, card, args.target, context, held_out(model, card, context))
    graphs = {"fp32": fp32, "full int8": quantizer(fp32, card, args.target, context).build(), "fallback": fallback}
    test = len(load_dataset(card.dataset).test)
    batch, source = validation_batch(card, None, context.cache, test)
    with torch.inference_mode():
        expected = model(torch.from_numpy(batch)).numpy()
    simulate = args.target == "tensorrt"
    figures = {
        name: compare(expected, run_graph(g, batch, simulate=simulate and name != "fp32")["logits"], source)
        for name, g in graphs.items()
    }
    sessions = {name: session(g, simulate and name != "fp32") for name, g in graphs.items()}
    latency = p50_latencies(sessions, batch[: args.batch], args.runs)
    layers = settings["int8_layers"]
    table = Table(title=f"{args.checkpoint}: INT8 ({args.target}), eager {figures['fp32']['eager_accuracy']:.2f}%")
    for column in ("file", "INT8 layers", "agreement", "Δ acc (pts)", f"p50 ms (batch {args.batch})", "speed-up"):
        table.add_column(column, justify="left" if column == "file" else "right")
    counts = {"fp32": "0", "full int8": f"{layers['total']}", "fallback": f"{layers['int8']} of {layers['total']}"}
    for name, stats in figures.items():
        table.add_row(
            name,
            counts[name],
            f"{100 * stats['top1_agreement']:.2f}%",
            f"{stats['accuracy_delta']:+.2f}",
            f"{latency[name]:.3f}",
            f"{latency['fp32'] / latency[name]:.2f}x",
        )
    Console().print(table)
    ratio = (latency["fp32"] / latency["fallback"]) / (latency["fp32"] / latency["full int8"])
    print(f"kept in float: {', '.join(settings['float_layers']) or 'none'}")
    print(f"fallback speed-up / full INT8 speed-up = {ratio:.2f} (target >= 0.80); test images: {source}")


if __name__ == "__main__":
    main()
