"""A Triton Inference Server model repository: ``rtool export SOURCE --format triton``.

    OUT/triton/                      <- tritonserver --model-repository=OUT/triton
      MODEL/config.pbtxt             platform, max_batch_size, dynamic batching, inputs/outputs
      MODEL/labels.txt               class names, one a line (Triton's classification extension)
      MODEL/1/model.onnx             platform onnxruntime_onnx (default)
      MODEL/1/model.plan             platform tensorrt_plan (--triton-backend tensorrt)

MODEL is the card's model name (``--triton-model-name``), with ``_fp16`` /
``_int8`` appended for those precisions, so one repository serves them all
side by side; exporting again replaces only the models it writes. The
model file comes from the ``onnx`` (or ``tensorrt``) exporter, so it is the
same graph every other rtool check ran; with ``--embed-preprocessing`` /
``--embed-softmax`` it is that FP32 variant (uint8 NHWC input). config.pbtxt
is written from the graph's real signature (names, element types, dims),
never restated by hand. Field names follow Triton's ModelConfig protobuf
(model_config.proto).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporters import Artifact, ExportContext, get_exporter, register_exporter
from exporters.onnx import onnx_graph
from exporters.onnx_common import OnnxOptions
from exporters.onnx_embed import EmbedOptions, export_embedded
from exporters.onnx_int8 import Int8Options
from exporters.tensorrt import TensorRTOptions, major_version, onnx_source
from toolkit.card import ModelCard
from toolkit.errors import BadInputError, UnavailableError
from toolkit.flags import setting

REPOSITORY_DIR = "triton"
LABELS_FILE = "labels.txt"
VERSION_DIR = "1"
DEFAULT_MAX_BATCH = 32
DEFAULT_QUEUE_DELAY_US = 100
BACKENDS = {  # --triton-backend -> (rtool format that makes the file, Triton platform, file name Triton loads)
    "onnxruntime": ("onnx", "onnxruntime_onnx", "model.onnx"),
    "tensorrt": ("tensorrt", "tensorrt_plan", "model.plan"),
}
# ONNX TensorProto element types -> Triton data types (model_config.proto, enum DataType).
TRITON_TYPES = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    16: "TYPE_BF16",
}
MODEL_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
MAX_BATCH_SIZE = 2**31 - 1  # max_batch_size is an int32 in model_config.proto


@dataclass(frozen=True)
class TritonOptions:
    """How the Triton model repository is laid out."""

    triton_model_name: str | None = setting(
        None, "Triton model name (default: the card's, e.g. resnet20).", pattern=MODEL_NAME
    )
    triton_max_batch: int = setting(
        DEFAULT_MAX_BATCH, "Triton max_batch_size with dynamic batching (0 = no batching).", low=0, high=MAX_BATCH_SIZE
    )
    triton_backend: str = setting(
        "onnxruntime",
        "Triton backend: onnxruntime serves model.onnx, tensorrt a model.plan engine.",
        choices=tuple(BACKENDS),
    )


@dataclass(frozen=True)
class TensorSignature:
    """One graph input or output as Triton sees it; -1 marks a dimension of any size."""

    name: str
    data_type: str
    shape: tuple[int, ...]


def onnx_signature(source: str | Path | Any) -> tuple[list[TensorSignature], list[TensorSignature]]:
    """(inputs, outputs) of an ONNX file (or an in-memory ``onnx.ModelProto``), read from the graph itself."""
    import onnx

    model = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source), load_external_data=False)
    path = Path(str(source)) if not isinstance(source, onnx.ModelProto) else Path("the ONNX graph")
    initializers = {init.name for init in model.graph.initializer}

    def describe(value: Any) -> TensorSignature:
        tensor = value.type.tensor_type
        if tensor.elem_type not in TRITON_TYPES:
            raise BadInputError(
                f"{Path(path).name}: tensor '{value.name}' has ONNX element type "
                f"{tensor.elem_type}, which Triton cannot serve"
            )
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        return TensorSignature(value.name, TRITON_TYPES[tensor.elem_type], dims)

    inputs = [describe(v) for v in model.graph.input if v.name not in initializers]
    outputs = [describe(v) for v in model.graph.output]
    return inputs, outputs


def batch_dimension_is_dynamic(tensors: list[TensorSignature]) -> bool:
    """Triton batches along the first dimension only if every tensor has a free one there."""
    return all(len(t.shape) >= 2 and t.shape[0] == -1 for t in tensors)


def triton_config(
    model_name: str,
    platform: str,
    inputs: list[TensorSignature],
    outputs: list[TensorSignature],
    *,
    max_batch_size: int,
    input_format: str | None = None,
    label_filename: str | None = None,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
) -> str:
    """config.pbtxt text (protobuf text format of Triton's ModelConfig).

    With ``max_batch_size`` > 0 the first (batch) dimension is left out of
    ``dims``, as Triton requires, and the dynamic batcher is turned on.
    """
    batching = max_batch_size > 0
    if batching and not batch_dimension_is_dynamic(inputs + outputs):
        raise BadInputError(
            f"{model_name}: the graph has a fixed batch dimension, so Triton cannot batch it; use --triton-max-batch 0"
        )

    def dims(t: TensorSignature) -> str:
        shape = t.shape[1:] if batching else t.shape
        return "[ " + ", ".join(str(d) for d in shape) + " ]"

    lines = [f'name: "{model_name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch_size}", "input ["]
    for i, t in enumerate(inputs):
        lines += ["  {", f'    name: "{t.name}"', f"    data_type: {t.data_type}"]
        if input_format:
            lines.append(f"    format: {input_format}")
        lines += [f"    dims: {dims(t)}", "  }" + ("," if i < len(inputs) - 1 else "")]
    lines.append("]")
    lines.append("output [")
    for i, t in enumerate(outputs):
        lines += ["  {", f'    name: "{t.name}"', f"    data_type: {t.data_type}", f"    dims: {dims(t)}"]
        if label_filename and i == 0:
            lines.append(f'    label_filename: "{label_filename}"')
        lines.append("  }" + ("," if i < len(outputs) - 1 else ""))
    lines.append("]")
    if batching:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {queue_delay_us}", "}"]
    return "\n".join(lines) + "\n"


def image_format(card: ModelCard, inputs: list[TensorSignature], max_batch_size: int) -> str | None:
    """FORMAT_NCHW / FORMAT_NHWC for an image input whose dims match the card, else None."""
    if len(inputs) != 1:
        return None
    spec = card.input
    shape = inputs[0].shape[1:] if max_batch_size > 0 else inputs[0].shape
    if shape == (spec.channels, spec.height, spec.width):
        return "FORMAT_NCHW"
    if shape == (spec.height, spec.width, spec.channels):
        return "FORMAT_NHWC"
    return None


def write_repository(
    folder: Path,
    model_name: str,
    model_file: Path,
    platform: str,
    file_name: str,
    card: ModelCard,
    signature: Any,
    max_batch_size: int,
) -> Path:
    """Write FOLDER/MODEL/{config.pbtxt, labels.txt, 1/FILE} (FOLDER is the pipeline's staging copy)."""
    if not re.fullmatch(MODEL_NAME, model_name):
        raise BadInputError(f"'{model_name}' is not a usable Triton model name (letters, digits, _ . -)")
    if not 0 <= max_batch_size <= MAX_BATCH_SIZE:
        raise BadInputError(f"--triton-max-batch must be 0 (no batching) to {MAX_BATCH_SIZE}")
    inputs, outputs = onnx_signature(signature)
    config = triton_config(
        model_name,
        platform,
        inputs,
        outputs,
        max_batch_size=max_batch_size,
        input_format=image_format(card, inputs, max_batch_size),
        label_filename=LABELS_FILE,
    )
    model_dir = folder / model_name
    (model_dir / VERSION_DIR).mkdir(parents=True)
    shutil.copyfile(model_file, model_dir / VERSION_DIR / file_name)
    (model_dir / LABELS_FILE).write_text("".join(f"{name}\n" for name in card.class_names), encoding="utf-8")
    (model_dir / "config.pbtxt").write_text(config, encoding="utf-8")
    return model_dir


def tensorrt_source_graph(model: Any, card: ModelCard, precision: str, context: ExportContext) -> Any:
    """The ONNX graph the TensorRT exporter builds its engine from (shared through the run's cache)."""
    import tensorrt as trt

    source_precision, target, _ = onnx_source(major_version(trt.__version__), precision)
    return onnx_graph(model, card, source_precision, context, target)[0]


def build_model_file(
    model: Any, card: ModelCard, build: Path, precision: str, backend: str, context: ExportContext
) -> Artifact:
    """The file Triton serves, made by the onnx (or tensorrt) exporter: the very file rtool checked."""
    source_format = BACKENDS[backend][0]
    entry = get_exporter(source_format)
    ok, reason = entry.available()
    if not ok:
        raise UnavailableError(f"--triton-backend {backend} needs {source_format}, which cannot run here: {reason}")
    if precision not in entry.precisions:
        raise BadInputError(f"--triton-backend {backend} serves {', '.join(entry.precisions)} files, not {precision}")
    if context.option(EmbedOptions).embed_preprocessing and backend == "onnxruntime" and precision == "fp32":
        return export_embedded(model, card, build, context)  # the FP32 model serves the raw-pixel variant
    built = entry.export(model, card, build, precision=precision, target=None, context=context)
    return built[0] if isinstance(built, list) else built


@register_exporter(
    "triton",
    precisions=("fp32", "fp16", "int8"),
    runtime="triton",
    in_all=False,
    files={"fp32": "triton/", "fp16": "triton/", "int8": "triton/"},
    options=(OnnxOptions, Int8Options, EmbedOptions, TensorRTOptions, TritonOptions),
    owns=(r"triton/[A-Za-z0-9_.-]+/[0-9]+/model\.(onnx|plan)",),
)
def export(
    model: Any, card: ModelCard, out_dir: Path, *, precision: str, target: str | None, context: ExportContext
) -> Artifact:
    """Build the model file with the ONNX (or TensorRT) exporter and lay it out as a Triton repository."""
    options = context.option(TritonOptions)
    backend = options.triton_backend
    _, platform, file_name = BACKENDS[backend]
    model_name = (options.triton_model_name or card.model) + ("" if precision == "fp32" else f"_{precision}")
    max_batch = options.triton_max_batch
    folder = Path(out_dir) / REPOSITORY_DIR
    with tempfile.TemporaryDirectory(prefix=".triton-build-", dir=out_dir) as build:
        built = build_model_file(model, card, Path(build), precision, backend, context)
        signature: Any = built.path
        if backend == "tensorrt":  # the engine's I/O is its source graph's; its profile caps the batch
            signature = tensorrt_source_graph(model, card, precision, context)
            max_batch = min(max_batch, int(built.settings["batch_range"][2]))
        model_dir = write_repository(folder, model_name, built.path, platform, file_name, card, signature, max_batch)
    return Artifact(
        format="triton",
        precision=precision,
        path=model_dir / VERSION_DIR / file_name,
        runtime="triton",
        target=built.target,
        settings={
            **built.settings,
            "backend": backend,
            "platform": platform,
            "model_name": model_name,
            "max_batch_size": max_batch,
            "repository": REPOSITORY_DIR,
            "config": f"{REPOSITORY_DIR}/{model_name}/config.pbtxt",
        },
        validation=dict(built.validation),
    )
