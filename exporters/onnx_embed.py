"""What makes an ONNX file easy to embed in an app: its metadata and in-graph preprocessing.

``onnx_metadata`` is the set of ``metadata_props`` every rtool ONNX file
carries (the full ModelCard plus a few flat keys; see docs/onnx-metadata.md).

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

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from exporters import Artifact
from toolkit.card import ONNX_METADATA_KEY, InputSpec, ModelCard
from toolkit.errors import BadInputError, CheckFailedError

# Flat keys beside the card, for readers that want one field without parsing the card.
CLASS_NAMES_KEY = "rtool.class_names"  # JSON list of strings, index = output position
INPUT_KEY = "rtool.input"  # JSON object: the card's "input" (size, colour, layout, dtype, mean/std, scale)
OUTPUT_KEY = "rtool.output"  # "logits" or "probabilities"
CARD_FORMAT_KEY = "rtool.card_format_version"  # integer as text
VALIDATION_IMAGES = 16


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


def onnx_metadata(card: ModelCard | dict[str, Any]) -> dict[str, str]:
    """The ``metadata_props`` of an rtool ONNX file: the card as JSON plus flat copies of what apps read first."""
    d = card.to_dict() if isinstance(card, ModelCard) else card
    return {
        ONNX_METADATA_KEY: json.dumps(d, sort_keys=True),
        CLASS_NAMES_KEY: json.dumps(d["class_names"]),
        INPUT_KEY: json.dumps(d["input"], sort_keys=True),
        OUTPUT_KEY: str(d.get("output", "logits")),
        CARD_FORMAT_KEY: str(d["format_version"]),
    }


def embedding_requested(opts: dict[str, Any]) -> bool:
    """Whether ``--embed-preprocessing`` was given (``--embed-softmax`` alone is refused)."""
    if opts.get("embed_softmax") and not opts.get("embed_preprocessing"):
        raise BadInputError("--embed-softmax goes with --embed-preprocessing (it makes model.raw-softmax.onnx)")
    return bool(opts.get("embed_preprocessing"))


def validation_pixels(card: ModelCard, opts: dict[str, Any]) -> tuple[np.ndarray, str]:
    """uint8 (N, C, H, W) images to check a variant on: the card's test images where they load, else noise."""
    from exporters.validation import load_pixels, random_pixels

    if card.dataset:
        try:
            pixels = load_pixels(card, "test", VALIDATION_IMAGES, opts.get("data_dir"), opts.get("cache"))
            return pixels, f"{card.dataset} test, {len(pixels)} images"
        except BadInputError:
            pass
    return random_pixels(card, VALIDATION_IMAGES), f"random pixels x{VALIDATION_IMAGES}"


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
        raise CheckFailedError(f"ONNX Runtime could not run {path.name} ({str(e).strip().splitlines()[0][:200]})") \
            from None
    if not np.allclose(single, full[:1], rtol=0, atol=1e-4 * max(1.0, float(np.abs(full).max()))):
        raise CheckFailedError(f"{path.name} gives another answer at batch 1 than at batch {len(pixels)}")
    return full


def export_embedded(model: nn.Module, card: ModelCard, out_dir: Path, *, embed_softmax: bool = False,
                    **opts: Any) -> Artifact:
    """Write model.raw.onnx (or model.raw-softmax.onnx), FP32, beside the plain model.onnx.

    Checked like every rtool export: onnx.checker, then ONNX Runtime on real
    test images against the eager model fed the same images through
    ``toolkit.preprocess`` (and a softmax when the graph has one).
    """
    from exporters.onnx import (DEFAULT_OPSET, INPUT_NAME, MAX_BATCH, OUTPUT_NAME, _quiet_exporter, cached,
                                check_file, check_opset, save_single_file)
    from exporters.validation import compare, eager_logits, require_fp32_match
    from toolkit.fileio import atomic_path
    from toolkit.preprocess import prepare_batch

    softmax = bool(embed_softmax)
    spec = card.input
    output_name = "probabilities" if softmax else OUTPUT_NAME
    opset = check_opset(int(opts.get("opset") or DEFAULT_OPSET))

    def build() -> onnx.ModelProto:
        wrapped = InGraphPreprocessing(model, spec, softmax=softmax).eval()
        example = torch.zeros((2, spec.height, spec.width, spec.channels), dtype=torch.uint8)
        with _quiet_exporter():
            program = torch.onnx.export(wrapped, (example,), input_names=[INPUT_NAME], output_names=[output_name],
                                        opset_version=opset, dynamo=True, external_data=False, verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},))
        proto = program.model_proto
        onnx.helper.set_model_props(proto, onnx_metadata(card_dict(card, softmax=softmax)))
        proto.producer_name = "rtool"
        return proto

    proto = cached(opts, ("onnx-raw", softmax, opset), build)  # the Triton exporter reuses it
    pixels, source = validation_pixels(card, opts)
    expected = eager_logits(model, prepare_batch(pixels, spec))
    if softmax:
        expected = torch.softmax(torch.from_numpy(expected), dim=1).numpy()
    path = Path(out_dir) / variant_filename(softmax)
    with atomic_path(path) as tmp:
        save_single_file(proto, tmp)
        check_file(tmp, path.name)
        stats = compare(expected, run_variant(tmp, np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))), source)
        require_fp32_match(path.name, stats, expected)
    settings = {"opset": opset, "input": INPUT_NAME, "input_dtype": "uint8", "input_layout": "NHWC",
                "input_shape": ["N", spec.height, spec.width, spec.channels], "output": output_name,
                "embedded": ["preprocessing", "softmax"] if softmax else ["preprocessing"],
                "dynamic_batch": [1, MAX_BATCH], "exporter": f"torch.onnx (dynamo) {torch.__version__}"}
    return Artifact(format="onnx", precision="fp32", path=path, runtime="onnx_app", settings=settings,
                    validation=stats)
