"""What makes an ONNX file easy to embed in an app: its metadata and in-graph preprocessing.

``onnx_metadata`` is the set of ``metadata_props`` every rtool ONNX file
carries (the full ModelCard plus a few flat keys; see docs/onnx-metadata.md).

``InGraphPreprocessing`` wraps a model for ``--embed-preprocessing`` and
``--embed-softmax``; ``export_embedded`` writes it as an extra FP32 file
beside the plain ``model.onnx`` (which every other format and check uses).
With preprocessing inside, the graph takes raw ``uint8`` pixels (N, H, W, C)
at the card's size and does the cast, ``/ 255``, mean/std and the NHWC ->
NCHW transpose itself; with the softmax it outputs probabilities. An app
then needs no numerics of its own, only an image decoder.
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


class InGraphPreprocessing(nn.Module):
    """``model`` behind the card's preprocessing (and optionally a softmax), so the graph takes what an app has.

    The arithmetic is the one ``toolkit.preprocess.normalize`` does in NumPy:
    ``(float32(pixels) / 255 - mean) / std``, so the two paths agree to float32
    rounding.
    """

    def __init__(self, model: nn.Module, spec: InputSpec, *, raw_pixels: bool = True, softmax: bool = False) -> None:
        super().__init__()
        self.model = model
        self.raw_pixels = raw_pixels
        self.softmax = softmax
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.raw_pixels:  # uint8 (N, H, W, C) -> normalised float32 (N, C, H, W)
            x = (x.permute(0, 3, 1, 2).to(torch.float32) / 255.0 - self.mean) / self.std
        out = self.model(x)
        return torch.softmax(out, dim=1) if self.softmax else out


def example_input(spec: InputSpec, batch: int = 2, raw_pixels: bool = True) -> torch.Tensor:
    """A tracing input in the layout and dtype the wrapped graph takes."""
    if raw_pixels:
        return torch.zeros((batch, spec.height, spec.width, spec.channels), dtype=torch.uint8)
    return torch.zeros((batch, *spec.shape), dtype=torch.float32)


def variant_filename(*, raw_pixels: bool, softmax: bool) -> str:
    """model.raw.onnx | model.raw-softmax.onnx | model.softmax.onnx: never the plain model.onnx."""
    if not (raw_pixels or softmax):
        raise ValueError("a variant embeds preprocessing, a softmax or both")
    tag = "-".join(t for t, on in (("raw", raw_pixels), ("softmax", softmax)) if on)
    return f"model.{tag}.onnx"


def card_dict(card: ModelCard, *, raw_pixels: bool = False, softmax: bool = False) -> dict[str, Any]:
    """The card as the file that carries it sees it: input dtype/layout and output meaning of this graph."""
    d = card.to_dict()
    if raw_pixels:
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


def validation_pixels(card: ModelCard, opts: dict[str, Any], count: int = 16) -> tuple[np.ndarray, str]:
    """uint8 (N, C, H, W) images to check a variant on: the card's test images where they load, else noise."""
    from exporters.validation import load_pixels, random_pixels

    if card.dataset:
        try:
            pixels = load_pixels(card, "test", count, opts.get("data_dir"), opts.get("cache"))
            return pixels, f"{card.dataset} test, {len(pixels)} images"
        except BadInputError:
            pass
    return random_pixels(card, count), f"random pixels x{count}"


def run_variant(path: Path, inputs: np.ndarray) -> np.ndarray:
    """The file's output in ONNX Runtime (CPU), checked to agree between batch 1 and the full batch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        full = session.run(None, {name: inputs})[0]
        single = session.run(None, {name: inputs[:1]})[0]
    except Exception as e:  # ONNX Runtime's own exception types
        raise CheckFailedError(f"ONNX Runtime could not run {path.name} ({str(e).strip().splitlines()[0][:200]})") \
            from None
    if not np.allclose(single, full[:1], rtol=0, atol=1e-4 * max(1.0, float(np.abs(full).max()))):
        raise CheckFailedError(f"{path.name} gives another answer at batch 1 than at batch {len(inputs)}")
    return full


def embedding_requested(opts: dict[str, Any]) -> bool:
    """Whether ``--embed-preprocessing`` or ``--embed-softmax`` was given."""
    return bool(opts.get("embed_preprocessing") or opts.get("embed_softmax"))


def export_embedded(model: nn.Module, card: ModelCard, out_dir: Path, *, embed_preprocessing: bool = False,
                    embed_softmax: bool = False, **opts: Any) -> Artifact:
    """Write model.raw.onnx / model.raw-softmax.onnx / model.softmax.onnx (FP32) beside the plain model.onnx.

    Checked like every rtool export: onnx.checker, then ONNX Runtime on real
    test images against the eager model fed the same images through
    ``toolkit.preprocess`` (and a softmax when the graph has one).
    """
    from exporters.onnx import (DEFAULT_OPSET, INPUT_NAME, MAX_BATCH, OUTPUT_NAME, _quiet_exporter, cached,
                                check_file, check_opset, save_single_file)
    from exporters.validation import compare, eager_logits, require_fp32_match
    from toolkit.fileio import atomic_path
    from toolkit.preprocess import prepare_batch

    raw_pixels, softmax = bool(embed_preprocessing), bool(embed_softmax)
    wrapped = InGraphPreprocessing(model, card.input, raw_pixels=raw_pixels, softmax=softmax).eval()
    output_name = "probabilities" if softmax else OUTPUT_NAME
    opset = check_opset(int(opts.get("opset") or DEFAULT_OPSET))

    def build() -> onnx.ModelProto:
        with _quiet_exporter():
            program = torch.onnx.export(wrapped, (example_input(card.input, raw_pixels=raw_pixels),),
                                        input_names=[INPUT_NAME], output_names=[output_name], opset_version=opset,
                                        dynamo=True, external_data=False, verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},))
        proto = program.model_proto
        onnx.helper.set_model_props(proto, onnx_metadata(card_dict(card, raw_pixels=raw_pixels, softmax=softmax)))
        proto.producer_name = "rtool"
        return proto

    proto = cached(opts, ("onnx-embedded", raw_pixels, softmax, opset), build)  # the Triton exporter reuses it

    pixels, source = validation_pixels(card, opts)
    expected = eager_logits(model, prepare_batch(pixels, card.input))
    if softmax:
        expected = torch.softmax(torch.from_numpy(expected), dim=1).numpy()
    inputs = np.ascontiguousarray(pixels.transpose(0, 2, 3, 1)) if raw_pixels else prepare_batch(pixels, card.input)
    path = Path(out_dir) / variant_filename(raw_pixels=raw_pixels, softmax=softmax)
    with atomic_path(path) as tmp:
        save_single_file(proto, tmp)
        check_file(tmp, path.name)
        stats = compare(expected, run_variant(tmp, inputs), source)
        require_fp32_match(path.name, stats, expected)
    spec = card.input
    shape = ["N", spec.height, spec.width, spec.channels] if raw_pixels else ["N", *spec.shape]
    settings = {"opset": opset, "input": INPUT_NAME, "input_dtype": "uint8" if raw_pixels else "float32",
                "input_layout": "NHWC" if raw_pixels else "NCHW", "input_shape": shape, "output": output_name,
                "embedded": [name for name, on in (("preprocessing", raw_pixels), ("softmax", softmax)) if on],
                "dynamic_batch": [1, MAX_BATCH], "exporter": f"torch.onnx (dynamo) {torch.__version__}"}
    return Artifact(format="onnx", precision="fp32", path=path, runtime="onnx_app", settings=settings,
                    validation=stats)
