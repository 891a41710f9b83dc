"""What makes an ONNX file easy to embed in an app: in-graph preprocessing (``--embed-preprocessing``).

``InGraphPreprocessing`` wraps a model for ``--embed-preprocessing`` (and
``--embed-softmax``); ``export_embedded`` writes it as an extra FP32 file,
``model.raw.onnx`` (``model.raw-softmax.onnx``), beside the plain
``model.onnx`` that every other format and check uses. The graph takes raw
``uint8`` pixels (N, H, W, C) at the card's size and does the cast,
``/ 255``, mean/std and the NHWC -> NCHW transpose itself; with the softmax
it outputs probabilities. An app then needs no numerics of its own, only an
image decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from exporters import Artifact, ExportContext
from exporters.onnx_common import (
    INPUT_NAME,
    MAX_BATCH,
    OUTPUT_NAME,
    OnnxOptions,
    check_file,
    onnx_metadata,
    save_single_file,
    torch_to_onnx,
)
from exporters.validation import compare, eager_logits, require_fp32_match, test_pixels
from toolkit.card import InputSpec, ModelCard
from toolkit.errors import BadInputError, CheckFailedError
from toolkit.fileio import atomic_path
from toolkit.flags import setting
from toolkit.preprocess import prepare_batch


@dataclass(frozen=True)
class EmbedOptions:
    """The extra FP32 file for apps: raw pixels in (and probabilities out)."""

    embed_preprocessing: bool = setting(
        False,
        "Also write model.raw.onnx (FP32) for apps: it takes uint8 (N, H, W, C) "
        "pixels and does the scaling, mean/std and layout inside the graph (the FP32 "
        "Triton model serves it too).",
    )
    embed_softmax: bool = setting(
        False,
        "With --embed-preprocessing: that file ends in a softmax and outputs "
        "probabilities (model.raw-softmax.onnx, instead of model.raw.onnx).",
    )

    def validate(self) -> None:
        if self.embed_softmax and not self.embed_preprocessing:
            raise BadInputError("--embed-softmax goes with --embed-preprocessing (it makes model.raw-softmax.onnx)")

    def check_jobs(self, jobs: list[Any]) -> None:
        """The variant is written beside an FP32 ONNX file (or served by the FP32 Triton model)."""
        if self.embed_preprocessing and not any(j.format in ("onnx", "triton") and j.precision == "fp32" for j in jobs):
            raise BadInputError(
                "--embed-preprocessing/--embed-softmax add an FP32 ONNX variant: use them with "
                "--format onnx (or triton) and --precision fp32"
            )


class InGraphPreprocessing(nn.Module):
    """``model`` behind the card's preprocessing (and optionally a softmax): uint8 (N, H, W, C) pixels in.

    The arithmetic is the one ``toolkit.preprocess.normalize`` does in NumPy,
    ``(float32(pixels) / 255 - mean) / std``, so both give the same float32 input.
    """

    def __init__(self, model: nn.Module, spec: InputSpec, *, softmax: bool = False) -> None:
        super().__init__()
        self.model = model
        self.softmax = softmax
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.permute(0, 3, 1, 2).to(torch.float32) / 255.0 - self.mean) / self.std
        out = self.model(x)
        return torch.softmax(out, dim=1) if self.softmax else out


def variant_filename(softmax: bool) -> str:
    """model.raw.onnx or model.raw-softmax.onnx: never the plain model.onnx."""
    return "model.raw-softmax.onnx" if softmax else "model.raw.onnx"


def card_dict(card: ModelCard, *, softmax: bool = False) -> dict[str, Any]:
    """The card of a raw-pixel variant: uint8 NHWC input, and probabilities out with the softmax."""
    d = card.to_dict()
    d["input"].update(layout="NHWC", dtype="uint8", preprocessing="in_graph")
    if softmax:
        d["output"] = "probabilities"
    return d


def run_variant(path: Path, pixels: np.ndarray) -> np.ndarray:
    """The file's output in ONNX Runtime (CPU), checked to agree between batch 1 and the full batch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        full = session.run(None, {name: pixels})[0]
        single = session.run(None, {name: pixels[:1]})[0]
    except Exception as e:  # ONNX Runtime's own exception types
        raise CheckFailedError(
            f"ONNX Runtime could not run {path.name} ({str(e).strip().splitlines()[0][:200]})"
        ) from None
    if not np.allclose(single, full[:1], rtol=0, atol=1e-4 * max(1.0, float(np.abs(full).max()))):
        raise CheckFailedError(f"{path.name} gives another answer at batch 1 than at batch {len(pixels)}")
    return full


def raw_graph(model: nn.Module, card: ModelCard, context: ExportContext) -> onnx.ModelProto:
    """The raw-pixel variant as an ONNX graph, built once per run (the Triton exporter serves the same one)."""
    softmax = context.option(EmbedOptions).embed_softmax
    opset = context.option(OnnxOptions).opset
    spec = card.input

    def build() -> onnx.ModelProto:
        wrapped = InGraphPreprocessing(model, spec, softmax=softmax).eval()
        example = torch.zeros((2, spec.height, spec.width, spec.channels), dtype=torch.uint8)
        proto = torch_to_onnx(wrapped, example, opset, "probabilities" if softmax else OUTPUT_NAME)
        onnx.helper.set_model_props(proto, onnx_metadata(card_dict(card, softmax=softmax)))
        proto.producer_name = "rtool"
        return proto

    return context.cached(("onnx-raw", softmax, opset), build)


def export_embedded(model: nn.Module, card: ModelCard, out_dir: Path, context: ExportContext) -> Artifact:
    """Write model.raw.onnx (or model.raw-softmax.onnx), FP32, beside the plain model.onnx.

    Checked like every rtool export: onnx.checker, then ONNX Runtime on real
    test images against the eager model fed the same images through
    ``toolkit.preprocess`` (and a softmax when the graph has one).
    """
    softmax = context.option(EmbedOptions).embed_softmax
    spec = card.input
    proto = raw_graph(model, card, context)
    pixels, source = test_pixels(card, context.data_dir, context.cache)
    expected = eager_logits(model, prepare_batch(pixels, spec))
    if softmax:
        expected = torch.softmax(torch.from_numpy(expected), dim=1).numpy()
    path = Path(out_dir) / variant_filename(softmax)
    with atomic_path(path) as tmp:
        save_single_file(proto, tmp)
        check_file(tmp, path.name)
        stats = compare(expected, run_variant(tmp, np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))), source)
        require_fp32_match(path.name, stats, expected)
    settings = {
        "opset": context.option(OnnxOptions).opset,
        "input": INPUT_NAME,
        "input_dtype": "uint8",
        "input_layout": "NHWC",
        "input_shape": ["N", spec.height, spec.width, spec.channels],
        "output": "probabilities" if softmax else OUTPUT_NAME,
        "embedded": ["preprocessing", "softmax"] if softmax else ["preprocessing"],
        "dynamic_batch": [1, MAX_BATCH],
        "exporter": f"torch.onnx (dynamo) {torch.__version__}",
    }
    return Artifact(format="onnx", precision="fp32", path=path, runtime="onnx_app", settings=settings, validation=stats)
