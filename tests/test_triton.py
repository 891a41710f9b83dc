"""`rtool export --format triton`: a model repository whose config.pbtxt matches the real graph.

config.pbtxt is parsed with protobuf's strict text-format parser against the
fields of Triton's ModelConfig (numbers and types as in Triton's
model_config.proto), so a misspelt field or enum value fails here as it would
in tritonserver. Serving it needs Triton itself, which these machines do not
have; docs/embedding.md says how.
"""

from __future__ import annotations

import hashlib
import json

import onnx
import onnxruntime as ort
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from onnx import TensorProto, helper

from exporters import ExportContext, get_exporter
from exporters.triton import TritonOptions, onnx_signature, triton_config, write_repository
from exporters.triton import export as export_triton
from runtimes.onnx_app import Predictor
from toolkit.card import ONNX_METADATA_KEY
from toolkit.checkpoint import load_model
from toolkit.errors import BadInputError, UnavailableError

ORT_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(uint8)": "TYPE_UINT8", "tensor(float16)": "TYPE_FP16"}
DATA_TYPES = [
    "TYPE_INVALID",
    "TYPE_BOOL",
    "TYPE_UINT8",
    "TYPE_UINT16",
    "TYPE_UINT32",
    "TYPE_UINT64",
    "TYPE_INT8",
    "TYPE_INT16",
    "TYPE_INT32",
    "TYPE_INT64",
    "TYPE_FP16",
    "TYPE_FP32",
    "TYPE_FP64",
    "TYPE_STRING",
    "TYPE_BF16",
]


def model_config_class() -> type:
    """Triton's inference.ModelConfig, limited to the fields rtool writes."""
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="rtool_model_config.proto", package="inference", syntax="proto3")
    data_type = proto.enum_type.add(name="DataType")
    for number, name in enumerate(DATA_TYPES):
        data_type.value.add(name=name, number=number)

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> descriptor_pb2.DescriptorProto:
        m = proto.message_type.add(name=name)
        for field, number, kind, label, type_name in fields:
            extra = {"type_name": type_name} if type_name else {}
            m.field.add(name=field, number=number, type=kind, label=label, **extra)
        return m

    one, many = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    model_input = message(
        "ModelInput",
        [
            ("name", 1, F.TYPE_STRING, one, ""),
            ("data_type", 2, F.TYPE_ENUM, one, ".inference.DataType"),
            ("format", 3, F.TYPE_ENUM, one, ".inference.ModelInput.Format"),
            ("dims", 4, F.TYPE_INT64, many, ""),
        ],
    )
    input_format = model_input.enum_type.add(name="Format")
    for number, name in enumerate(["FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"]):
        input_format.value.add(name=name, number=number)
    message(
        "ModelOutput",
        [
            ("name", 1, F.TYPE_STRING, one, ""),
            ("data_type", 2, F.TYPE_ENUM, one, ".inference.DataType"),
            ("dims", 3, F.TYPE_INT64, many, ""),
            ("label_filename", 4, F.TYPE_STRING, one, ""),
        ],
    )
    message(
        "ModelDynamicBatching",
        [
            ("preferred_batch_size", 1, F.TYPE_INT32, many, ""),
            ("max_queue_delay_microseconds", 2, F.TYPE_UINT64, one, ""),
        ],
    )
    message(
        "ModelConfig",
        [
            ("name", 1, F.TYPE_STRING, one, ""),
            ("platform", 2, F.TYPE_STRING, one, ""),
            ("max_batch_size", 4, F.TYPE_INT32, one, ""),
            ("input", 5, F.TYPE_MESSAGE, many, ".inference.ModelInput"),
            ("output", 6, F.TYPE_MESSAGE, many, ".inference.ModelOutput"),
            ("dynamic_batching", 11, F.TYPE_MESSAGE, one, ".inference.ModelDynamicBatching"),
            ("backend", 17, F.TYPE_STRING, one, ""),
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


ModelConfig = model_config_class()


def parse_config(text: str):
    return text_format.Parse(text, ModelConfig())


def format_name(config, value: int) -> str:
    formats = config.DESCRIPTOR.fields_by_name["input"].message_type.enum_types_by_name["Format"]
    return formats.values_by_number[value].name


def assert_config_matches_graph(config, model_file) -> None:
    """Names, element types and dims in config.pbtxt are the graph's own (batch dimension left out)."""
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    for declared, real in [(config.input, session.get_inputs()), (config.output, session.get_outputs())]:
        assert [d.name for d in declared] == [r.name for r in real]
        assert [DATA_TYPES[d.data_type] for d in declared] == [ORT_TO_TRITON[r.type] for r in real]
        assert [list(d.dims) for d in declared] == [r.shape[1:] for r in real]
        assert all(isinstance(r.shape[0], str) for r in real)  # a free batch axis, so Triton may batch


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "model,source,dtype,layout",
    [
        ("digits", "model.raw-softmax.onnx", "TYPE_UINT8", "FORMAT_NHWC"),
        ("digits_fp16", "model.fp16.onnx", "TYPE_FP32", "FORMAT_NCHW"),
    ],
)
def test_repository_config_matches_the_model(embed_export_dir, untrained_checkpoint, model, source, dtype, layout):
    folder = embed_export_dir / "triton" / model
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "1",
        "1/model.onnx",
        "config.pbtxt",
        "labels.txt",
    ]
    config = parse_config((folder / "config.pbtxt").read_text())
    assert (config.name, config.platform, config.max_batch_size) == (model, "onnxruntime_onnx", 16)
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 100
    assert_config_matches_graph(config, folder / "1" / "model.onnx")
    assert DATA_TYPES[config.input[0].data_type] == dtype
    assert format_name(config, config.input[0].format) == layout
    assert config.output[0].label_filename == "labels.txt"
    _, card = load_model(untrained_checkpoint)
    assert (folder / "labels.txt").read_text().splitlines() == card.class_names
    assert sha256(folder / "1" / "model.onnx") == sha256(embed_export_dir / source)  # the very file rtool checked


def test_manifest_lists_each_triton_model(embed_export_dir):
    manifest = json.loads((embed_export_dir / "manifest.json").read_text())
    entries = {e["file"]: e for e in manifest["artifacts"] if e["format"] == "triton"}
    assert set(entries) == {"triton/digits/1/model.onnx", "triton/digits_fp16/1/model.onnx"}
    for name, entry in entries.items():
        assert entry["runtime"] == "triton" and entry["sha256"] == sha256(embed_export_dir / name)
        settings = entry["settings"]
        assert (settings["platform"], settings["backend"], settings["max_batch_size"]) == (
            "onnxruntime_onnx",
            "onnxruntime",
            16,
        )
        assert settings["config"] == f"triton/{settings['model_name']}/config.pbtxt"
    assert entries["triton/digits/1/model.onnx"]["settings"]["input_dtype"] == "uint8"


def test_served_file_is_self_describing(embed_export_dir, app_images):
    """What Triton loads is an rtool ONNX file: its card is inside and it predicts like the plain file."""
    served = embed_export_dir / "triton" / "digits" / "1" / "model.onnx"
    assert ONNX_METADATA_KEY in {p.key for p in onnx.load(str(served)).metadata_props}
    plain = Predictor(embed_export_dir / "model.onnx").predict(app_images, top_k=3)
    assert [[c for c, _ in image] for image in Predictor(served).predict(app_images, top_k=3)] == [
        [c for c, _ in image] for image in plain
    ]


def test_default_name_and_batch(inprocess_export_dir):
    folder = inprocess_export_dir / "triton" / "resnet20"
    config = parse_config((folder / "config.pbtxt").read_text())
    assert (config.name, config.max_batch_size, list(config.input[0].dims)) == ("resnet20", 32, [1, 28, 28])
    assert_config_matches_graph(config, folder / "1" / "model.onnx")
    assert {p.name for p in inprocess_export_dir.iterdir()} == {"triton", "model.raw.onnx"}  # no build leftovers


def test_tensorrt_plan_config_comes_from_the_engine_source_graph(embed_export_dir):
    inputs, outputs = onnx_signature(embed_export_dir / "model.fp16.onnx")
    text = triton_config(
        "digits_trt",
        "tensorrt_plan",
        inputs,
        outputs,
        max_batch_size=64,
        input_format="FORMAT_NCHW",
        label_filename="labels.txt",
    )
    config = parse_config(text)
    assert (config.platform, config.max_batch_size) == ("tensorrt_plan", 64)
    assert_config_matches_graph(config, embed_export_dir / "model.fp16.onnx")


def test_tensorrt_backend_says_why_it_cannot_build_here(untrained_checkpoint, tmp_path):
    ok, reason = get_exporter("tensorrt").available()
    if ok:
        pytest.skip("TensorRT is usable here; this checks the message where it is not")
    model, card = load_model(untrained_checkpoint)
    with pytest.raises(UnavailableError, match="--triton-backend tensorrt needs tensorrt, which cannot run here"):
        context = ExportContext(options={TritonOptions: TritonOptions(triton_backend="tensorrt")})
        export_triton(model, card, tmp_path, precision="fp16", target=None, context=context)
    assert not (tmp_path / "triton").exists()


def fixed_batch_graph(path):
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3, 8, 8])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


def test_fixed_batch_graph_is_served_without_batching(tmp_path):
    inputs, outputs = onnx_signature(fixed_batch_graph(tmp_path / "fixed.onnx"))
    with pytest.raises(BadInputError, match="fixed batch dimension"):
        triton_config("fixed", "onnxruntime_onnx", inputs, outputs, max_batch_size=8)
    config = parse_config(triton_config("fixed", "onnxruntime_onnx", inputs, outputs, max_batch_size=0))
    assert list(config.input[0].dims) == [4, 3, 8, 8] and not config.HasField("dynamic_batching")


def test_bad_names_and_batch_sizes_are_refused(embed_export_dir, untrained_checkpoint, tmp_path):
    _, card = load_model(untrained_checkpoint)
    model_file = embed_export_dir / "model.onnx"
    for name, batch, message in (("bad name!", 8, "not a usable Triton model name"), ("ok", -1, "must be 0")):
        with pytest.raises(BadInputError, match=message):
            write_repository(tmp_path, name, model_file, "onnxruntime_onnx", "model.onnx", card, model_file, batch)
    assert not any(tmp_path.iterdir())


def test_every_config_line_is_a_model_config_field(embed_export_dir):
    """A typo in a field or enum name fails the strict parser, as tritonserver would refuse it."""
    text = (embed_export_dir / "triton" / "digits" / "config.pbtxt").read_text()
    parse_config(text)
    for typo in (text.replace("max_batch_size", "max_batchsize"), text.replace("TYPE_UINT8", "TYPE_U8")):
        with pytest.raises(text_format.ParseError):
            parse_config(typo)
