"""Which INT8 layers cost accuracy, and which to keep in float to meet an accuracy budget.

Sensitivity: for every weighted layer (Conv, Gemm) the graph is quantized
with that layer alone in INT8 (its input, weights and output Q/DQ, exactly as
the full file quantizes it) and run next to the float graph on held-out
images. The error the layer adds is the SQNR of its output against float
(``onnxruntime.quantization.qdq_loss_debug``'s measure, in dB: higher is
better) and the SQNR of the logits it causes alone; the SQNR of its output in
the full INT8 graph shows the error accumulated up to it. Layers are ranked
by the logits' SQNR, the most harmful first.

Fallback: the ``k`` most sensitive layers are kept in float
(``nodes_to_exclude``) for the smallest ``k`` whose file passes the judge
(the INT8 parity thresholds with the accuracy budget), found by doubling ``k``
and then bisecting, so a few quantizations instead of one per layer.

This module only needs a ``build(exclude, only)`` that quantizes; the
recipes live in ``exporters.onnx_int8``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio

from exporters.onnx_common import INPUT_NAME, OUTPUT_NAME

WEIGHTED = ("Conv", "Gemm")
SENSITIVITY_IMAGES = 128  # held-out images per single-layer run: SQNR settles long before accuracy does

Build = Callable[..., onnx.ModelProto]  # build(exclude=(), only=None) -> Q/DQ graph
Judge = Callable[[onnx.ModelProto], tuple[list[str], dict[str, Any]]]  # graph -> (broken thresholds, figures)


@dataclass(frozen=True)
class Layer:
    """A weighted layer of the graph: what quantize_static names it, and what the PyTorch model called it."""

    node: str  # the ONNX node name (nodes_to_exclude takes these)
    name: str  # the module, from its weight's name (layer3.2.conv2; a Conv carries its folded BatchNorm)
    op: str
    output: str


def weighted_layers(graph: onnx.ModelProto) -> list[Layer]:
    """The Conv and Gemm nodes in network order (the graph's topological order)."""
    weights = {t.name for t in graph.graph.initializer}
    layers = []
    for node in graph.graph.node:
        if node.op_type in WEIGHTED:
            weight = node.input[1] if len(node.input) > 1 else ""
            name = weight.removesuffix(".weight") if weight in weights else node.name
            layers.append(Layer(node.name, name, node.op_type, node.output[0]))
    return layers


def run_graph(
    graph: onnx.ModelProto, batch: np.ndarray, outputs: Sequence[str] = (), simulate: bool = True
) -> dict[str, np.ndarray]:
    """The logits (and the named inner tensors) of ``graph`` on ``batch`` in ONNX Runtime's CPU provider.

    ``simulate`` turns graph optimizations off: Q/DQ run as float arithmetic, exactly the quantization the graph
    defines, and every inner tensor exists to be read.
    """
    import onnxruntime as ort

    extended = onnx.ModelProto()
    extended.CopyFrom(graph)
    present = {o.name for o in extended.graph.output}
    extended.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in outputs if n not in present)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if simulate:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(extended.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [OUTPUT_NAME, *outputs]
    return dict(zip(names, session.run(names, {INPUT_NAME: batch})))


def sqnr(reference: np.ndarray, noisy: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (ONNX Runtime's QDQ debugging measure)."""
    return float(compute_signal_to_quantization_noice_ratio(reference, noisy))


@dataclass
class LayerError:
    """The error one layer adds when quantized: SQNR in dB against float (higher is better)."""

    index: int  # position in the network
    name: str
    node: str
    op: str
    output_sqnr: float  # its own output, only this layer INT8
    logits_sqnr: float  # the logits, only this layer INT8
    full_int8_sqnr: float  # its output in the full INT8 graph (all layers before it INT8 too)
    rank: int = 0  # 1 = the most harmful


def outputs_of(graph: onnx.ModelProto, nodes: Sequence[str]) -> list[str]:
    """The output tensor of each named node in ``graph`` (a Q/DQ graph may rename the tensor, never the node)."""
    by_name = {node.name: node.output[0] for node in graph.graph.node}
    return [by_name[name] for name in nodes]


def sensitivity(
    build: Build, float_graph: onnx.ModelProto, full: onnx.ModelProto, batch: np.ndarray
) -> list[LayerError]:
    """Every weighted layer's error, in network order, ranked by the SQNR of the logits it causes alone."""
    layers = weighted_layers(float_graph)
    nodes = [layer.node for layer in layers]
    reference = run_graph(float_graph, batch, outputs_of(float_graph, nodes))
    in_full = outputs_of(full, nodes)
    quantized = run_graph(full, batch, in_full)
    rows = []
    for index, layer in enumerate(layers):
        graph = build(only=[layer.node])
        mine = outputs_of(graph, [layer.node])[0]
        alone = run_graph(graph, batch, [mine])
        rows.append(
            LayerError(
                index=index,
                name=layer.name,
                node=layer.node,
                op=layer.op,
                output_sqnr=sqnr(reference[layer.output], alone[mine]),
                logits_sqnr=sqnr(reference[OUTPUT_NAME], alone[OUTPUT_NAME]),
                full_int8_sqnr=sqnr(reference[layer.output], quantized[in_full[index]]),
            )
        )
    for rank, row in enumerate(sorted(rows, key=lambda r: r.logits_sqnr), 1):
        row.rank = rank
    return rows


@dataclass
class Step:
    """One candidate of the search: the ``float_layers`` most sensitive layers kept in float."""

    float_layers: int
    passed: bool
    broken: list[str]
    figures: dict[str, Any]


@dataclass
class Fallback:
    """The search's outcome: the chosen graph and the layers it keeps in float (``met`` False: none passes)."""

    graph: onnx.ModelProto | None
    excluded: list[str]  # node names, most sensitive first
    steps: list[Step] = field(default_factory=list)
    met: bool = True


def search(
    build: Build, ranking: Sequence[str], judge: Judge, full: onnx.ModelProto, first: Step | None = None
) -> Fallback:
    """The fewest most-sensitive layers (a prefix of ``ranking``) to keep in float so that ``judge`` passes.

    Tries 0, 1, 2, 4, ... layers until one passes (or every layer is float), then bisects between the last
    failure and that success. Accuracy need not fall monotonically as layers return to float, so the result is
    the smallest passing prefix the bisection finds, and every try is listed in ``steps``. ``full`` is the graph
    with no layer in float; ``first`` its verdict when already known.
    """
    graphs: dict[int, onnx.ModelProto] = {0: full}
    steps: dict[int, Step] = {0: first} if first is not None else {}

    def passes(k: int) -> bool:
        if k not in steps:
            graphs.setdefault(k, build(exclude=list(ranking[:k])))
            broken, figures = judge(graphs[k])
            steps[k] = Step(k, not broken, broken, figures)
        return steps[k].passed

    def outcome(k: int | None) -> Fallback:
        tried = [steps[i] for i in sorted(steps)]
        if k is None:
            return Fallback(None, list(ranking), tried, met=False)
        return Fallback(graphs[k], list(ranking[:k]), tried)

    if passes(0):
        return outcome(0)
    low, k = 0, 1
    while k <= len(ranking) and not passes(k):
        if k == len(ranking):
            return outcome(None)
        low, k = k, min(2 * k, len(ranking))
    if k > len(ranking):  # a graph without weighted layers: nothing to keep in float
        return outcome(None)
    high = k
    while high - low > 1:
        middle = (low + high) // 2
        if passes(middle):
            high = middle
        else:
            low = middle
    return outcome(high)
