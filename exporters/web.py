"""A static web page that classifies on the user's device: ``rtool export SOURCE --format web``.

    OUT/web/                          <- any static host, or `rtool web serve OUT/web`
      index.html, app.js, classifier.js, style.css    the page (ES modules, no build step, no CDN)
      card.json                       the model card (class names, input size) and the model files
      model.onnx                      FP32: uint8 (N, H, W, C) pixels in, probabilities out
      model.int8.onnx                 INT8 (--precision int8): the same I/O around the U8S8 Q/DQ graph
      ort/ort.wasm.min.mjs, ort/ort-wasm-simd-threaded.{mjs,wasm}   onnxruntime-web's wasm backend

Each model is the graph the ``onnx`` exporter makes (FP32, or INT8 for the
``cpu`` target, calibrated as its options say) with the card's preprocessing
(NHWC -> NCHW, ``/ 255``, mean/std) put in front and a softmax behind, so the
page needs only an image decoder. The file is checked like every rtool ONNX
file (onnx.checker, IR <= 13, ONNX Runtime against the eager model on test
images); the ``browser`` runtime then proves it in Chromium. The page's files
come from ``exporters/web_assets/page``, onnxruntime-web from the npm package
pinned by ``exporters/web_assets/package-lock.json`` (``npm ci`` there, or
RTOOL_ONNXRUNTIME_WEB naming an installed ``onnxruntime-web`` folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from exporters import Artifact, ExportContext, register_exporter
from exporters.onnx import onnx_graph
from exporters.onnx_common import (
    INPUT_NAME,
    OUTPUT_NAME,
    OnnxOptions,
    check_file,
    onnx_metadata,
    opset_of,
    save_single_file,
)
from exporters.onnx_embed import card_dict, run_variant
from exporters.onnx_int8 import Int8Options
from exporters.validation import compare, eager_logits, require_fp32_match, validation_pixels
from toolkit.card import ModelCard
from toolkit.errors import UnavailableError
from toolkit.fileio import atomic_path, atomic_write_text
from toolkit.preprocess import prepare_batch

WEB_DIR = "web"
FILES = {"fp32": f"{WEB_DIR}/model.onnx", "int8": f"{WEB_DIR}/model.int8.onnx"}
CARD_FILE = "card.json"
OUTPUT = "probabilities"
INT8_TARGET = "cpu"  # uint8 activations / int8 weights: what onnxruntime-web's wasm kernels run
ASSETS = Path(__file__).with_name("web_assets")
PAGE_FILES = ("index.html", "app.js", "classifier.js", "style.css")
ORT_DIR = "ort"
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
ORT_ENV = "RTOOL_ONNXRUNTIME_WEB"
NPM_INSTALL = f"npm ci --prefix {ASSETS} --ignore-scripts --no-audit --no-fund"


def pinned_version() -> str:
    """The onnxruntime-web version web_assets/package.json pins (its lock file fixes the rest)."""
    return json.loads((ASSETS / "package.json").read_text(encoding="utf-8"))["dependencies"]["onnxruntime-web"]


def onnxruntime_web() -> tuple[Path | None, str]:
    """(the installed onnxruntime-web package folder, "") or (None, why it cannot be used, with the command to run)."""
    folder = Path(os.environ.get(ORT_ENV) or ASSETS / "node_modules" / "onnxruntime-web")
    pin = pinned_version()
    try:
        installed = json.loads((folder / "package.json").read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None, f"onnxruntime-web {pin} is not installed (run: {NPM_INSTALL})"
    if installed != pin:
        return None, f"{folder} holds onnxruntime-web {installed}, rtool pins {pin} (run: {NPM_INSTALL})"
    missing = [name for name in ORT_FILES if not (folder / "dist" / name).is_file()]
    if missing:
        return None, f"{folder} lacks dist/{missing[0]}; reinstall it (run: {NPM_INSTALL})"
    return folder, ""


def available() -> tuple[bool, str]:
    folder, why = onnxruntime_web()
    return folder is not None, why


def web_graph(inner: onnx.ModelProto, card: ModelCard) -> onnx.ModelProto:
    """``inner`` (float32 NCHW ``input`` -> ``logits``) behind the card's preprocessing and ahead of a softmax.

    The new ``input`` takes uint8 (N, H, W, C) pixels; the added nodes compute
    ``(float32(p) / 255 - mean) / std`` in the order ``toolkit.preprocess.normalize``
    does, so the inner graph sees the very floats rtool's Python path feeds it.
    """
    spec = card.input
    proto = onnx.ModelProto()
    proto.CopyFrom(inner)
    graph = proto.graph
    normalized, prefix = "rtool_web_normalized", "rtool_web_"
    for node in graph.node:
        node.input[:] = [normalized if name == INPUT_NAME else name for name in node.input]
    batch = next(i for i in graph.input if i.name == INPUT_NAME).type.tensor_type.shape.dim[0]
    constants = {
        "scale": np.array(255.0, dtype=np.float32),
        "mean": np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1),
        "std": np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1),
    }
    graph.initializer.extend(numpy_helper.from_array(value, prefix + name) for name, value in constants.items())
    steps = [
        helper.make_node("Transpose", [INPUT_NAME], [prefix + "nchw"], perm=[0, 3, 1, 2], name=prefix + "layout"),
        helper.make_node("Cast", [prefix + "nchw"], [prefix + "float"], to=TensorProto.FLOAT, name=prefix + "cast"),
        helper.make_node("Div", [prefix + "float", prefix + "scale"], [prefix + "unit"], name=prefix + "scale"),
        helper.make_node("Sub", [prefix + "unit", prefix + "mean"], [prefix + "centred"], name=prefix + "mean"),
        helper.make_node("Div", [prefix + "centred", prefix + "std"], [normalized], name=prefix + "std"),
    ]
    softmax = helper.make_node("Softmax", [OUTPUT_NAME], [OUTPUT], axis=1, name=prefix + "softmax")
    nodes = [*steps, *graph.node, softmax]
    del graph.node[:]
    graph.node.extend(nodes)
    pixels = helper.make_tensor_value_info(
        INPUT_NAME, TensorProto.UINT8, [None, spec.height, spec.width, spec.channels]
    )
    pixels.type.tensor_type.shape.dim[0].CopyFrom(batch)
    probabilities = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [None, card.num_classes])
    probabilities.type.tensor_type.shape.dim[0].CopyFrom(batch)
    for field, value in ((graph.input, pixels), (graph.output, probabilities)):
        del field[:]
        field.append(value)
    stamped = onnx_metadata(card_dict(card, softmax=True))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in stamped]
    del proto.metadata_props[:]
    helper.set_model_props(proto, {**dict(kept), **stamped})
    return proto


def write_page(folder: Path, card: ModelCard, models: dict[str, str], ort_folder: Path) -> list[Path]:
    """The page, card.json and onnxruntime-web's wasm files in ``folder``; the paths written."""
    (folder / ORT_DIR).mkdir(parents=True, exist_ok=True)
    written = []
    for name in PAGE_FILES:
        written.append(Path(shutil.copyfile(ASSETS / "page" / name, folder / name)))
    for name in ORT_FILES:
        written.append(Path(shutil.copyfile(ort_folder / "dist" / name, folder / ORT_DIR / name)))
    document = {"card": card_dict(card, softmax=True), "models": models, "onnxruntime_web": pinned_version()}
    atomic_write_text(folder / CARD_FILE, json.dumps(document, indent=2, sort_keys=True) + "\n")
    return [*written, folder / CARD_FILE]


def page_artifacts(paths: list[Path], precision: str) -> list[Artifact]:
    """Manifest entries for the page's files: recorded with their sha256, run by no rtool runtime."""
    role = {CARD_FILE: "model card and model list", **dict.fromkeys(PAGE_FILES, "page")}
    return [
        Artifact(
            format="web",
            precision=precision,
            path=path,
            runtime="static",
            settings={"role": role.get(path.name, f"onnxruntime-web {pinned_version()} (wasm backend)")},
        )
        for path in paths
    ]


@register_exporter(
    "web",
    precisions=("fp32", "int8"),
    runtime="browser",
    files=FILES,
    options=(OnnxOptions, Int8Options),
    available=available,
    owns=(
        rf"{WEB_DIR}/({'|'.join(re.escape(name) for name in (*PAGE_FILES, CARD_FILE))})",
        rf"{WEB_DIR}/{ORT_DIR}/({'|'.join(re.escape(name) for name in ORT_FILES)})",
    ),
)
def export(
    model: torch.nn.Module,
    card: ModelCard,
    out_dir: Path,
    *,
    precision: str,
    target: str | None,
    context: ExportContext,
) -> list[Artifact]:
    """Write the model at ``precision`` into OUT/web/, with the page and onnxruntime-web on the first call of a run."""
    ort_folder, why = onnxruntime_web()
    if ort_folder is None:
        raise UnavailableError(f"cannot export web here: {why}")
    inner, settings = onnx_graph(model, card, precision, context, INT8_TARGET if precision == "int8" else None)
    proto = web_graph(inner, card)
    folder = Path(out_dir) / WEB_DIR
    folder.mkdir(exist_ok=True)
    path = Path(out_dir) / FILES[precision]
    pixels, source = validation_pixels(card, precision, context)
    expected = torch.softmax(torch.from_numpy(eager_logits(model, prepare_batch(pixels, card.input))), dim=1).numpy()
    with atomic_path(path) as tmp:
        save_single_file(proto, tmp)
        check_file(tmp, path.name)
        stats = compare(expected, run_variant(tmp, np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))), source)
        if precision == "fp32":
            require_fp32_match(path.name, stats, expected)
    models: dict[str, str] = context.cached(("web", "models"), dict)
    models[precision] = path.name
    page = write_page(folder, card, dict(sorted(models.items())), ort_folder)  # card.json lists this run's models
    settings = {
        **settings,
        "opset": opset_of(proto),
        "input": INPUT_NAME,
        "input_dtype": "uint8",
        "input_layout": "NHWC",
        "input_shape": ["N", card.input.height, card.input.width, card.input.channels],
        "output": OUTPUT,
        "embedded": ["preprocessing", "softmax"],
        "onnxruntime_web": pinned_version(),
        "backend": "wasm, one thread",
    }
    artifact = Artifact("web", precision, path, "browser", settings=settings, validation=stats)
    return [artifact, *(page_artifacts(page, precision) if len(models) == 1 else [])]  # the page: listed once
