"""Checks on model files that may come from elsewhere, made before a library opens them for real.

ONNX files may point at "external data" files by path; a hostile one points
outside its folder (``../``, an absolute path, a symbolic link) so that
loading it reads any file on the machine. It may also claim absurd sizes (a
tensor of 10^12 elements, an input dimension of 2^40) that make a runtime
allocate terabytes. torch.export archives (``.pt2``) hold pickles, and
``torch.export.load`` falls back to full unpickling — running any code the
file names — when a part does not load as plain tensors. These checks read
only the file's structure (never external data, never unpickling) and
refuse such files with one line. PyTorch's own zip archives are checked
the same way: torch.save never compresses a record, so a compressed one
(which could inflate to gigabytes) or records claiming more bytes than the
file holds are refused from the zip directory alone.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterator

from toolkit.errors import BadInputError, UnsafeFileError
from toolkit.jsonsafe import load_json_text

# What zipfile raises for a damaged archive: a bad CRC, a garbled name or header, a broken deflate stream.
DAMAGED_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError)
MAX_TENSOR_ELEMENTS = 1 << 31  # 8 GB of float32: far above any ResNet weight or image batch
MAX_STATIC_DIM = 1 << 20  # one fixed dimension of a graph input or output
SMALL_CONSTANT = 16  # constants read to find the size a ConstantOfShape asks for


def _refuse_location(path: Path, tensor: str, location: str) -> str:
    """Why an external-data location is not a plain relative path inside the model's folder ('' if it is)."""
    if not location:
        return "an empty location"
    if (
        PurePosixPath(location).is_absolute()
        or PureWindowsPath(location).is_absolute()
        or PureWindowsPath(location).drive
        or location.startswith(("/", "\\"))
    ):
        return f"the absolute path '{location}'"
    if ".." in PurePosixPath(location.replace("\\", "/")).parts:
        return f"'{location}', which climbs out with '..'"
    folder = path.resolve().parent
    if not (folder / location).resolve().is_relative_to(folder):
        return f"'{location}', a symbolic link that leaves the folder"
    return ""


def check_external_data(path: Path, tensor: Any) -> None:
    """Refuse an external-data reference that leaves the model's folder; check its byte range fits the file."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    why = _refuse_location(path, tensor.name, location)
    if why:
        raise UnsafeFileError(
            f"refused {path.name}: tensor '{tensor.name}' takes its data from {why}; an ONNX "
            f"file may only use data files inside its own folder"
        )
    data_file = path.resolve().parent / location
    if not data_file.is_file():
        raise BadInputError(
            f"{path.name}: tensor '{tensor.name}' needs the data file {location}, which is missing "
            f"beside it; copy it along or re-export as one file"
        )
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
    except ValueError:
        raise BadInputError(
            f"{path.name}: tensor '{tensor.name}' has a malformed external-data offset/length"
        ) from None
    size = data_file.stat().st_size
    if offset < 0 or offset > size or (length >= 0 and offset + length > size):
        raise BadInputError(
            f"{path.name}: tensor '{tensor.name}' asks for bytes beyond the end of {location} "
            f"({size} bytes); the files are truncated or do not belong together"
        )


def _tensors(graph: Any, where: str = "graph") -> Iterator[tuple[Any, str]]:
    """Every TensorProto in a graph: initializers, Constant/attribute tensors, and those of subgraphs."""
    for tensor in graph.initializer:
        yield tensor, where
    for sparse in graph.sparse_initializer:
        yield sparse.values, where
        yield sparse.indices, where
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t, f"node {node.name or node.op_type}"
            yield from ((t, f"node {node.name or node.op_type}") for t in attr.tensors)
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values, f"node {node.name or node.op_type}"
            if attr.HasField("g"):
                yield from _tensors(attr.g, f"subgraph of {node.op_type}")
            for sub in attr.graphs:
                yield from _tensors(sub, f"subgraph of {node.op_type}")


def _elements(dims: Any) -> int:
    return math.prod(int(d) for d in dims)


def _check_tensor(path: Path, tensor: Any, where: str) -> None:
    if any(int(d) < 0 for d in tensor.dims):
        raise BadInputError(
            f"{path.name}: tensor '{tensor.name}' ({where}) has a negative dimension; the file is corrupt"
        )
    count = _elements(tensor.dims)
    if count > MAX_TENSOR_ELEMENTS:
        raise BadInputError(
            f"{path.name}: tensor '{tensor.name}' ({where}) claims {count:,} elements (limit "
            f"{MAX_TENSOR_ELEMENTS:,}); the file is corrupt or hostile"
        )


def _check_value_infos(path: Path, values: Any, kind: str) -> None:
    for value in values:
        if not value.type.HasField("tensor_type"):
            continue
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim if d.HasField("dim_value")]
        if any(d > MAX_STATIC_DIM for d in dims) or _elements(dims) > MAX_TENSOR_ELEMENTS:
            raise BadInputError(
                f"{path.name}: {kind} '{value.name}' has the absurd shape {dims} (a dimension "
                f"above {MAX_STATIC_DIM:,}); the file is corrupt or hostile"
            )


def _check_constant_of_shape(path: Path, graph: Any) -> None:
    """A ConstantOfShape whose shape is a constant must not ask for more than the tensor limit."""
    from onnx import numpy_helper

    small = {t.name: t for t in graph.initializer if _elements(t.dims) <= SMALL_CONSTANT}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t") and _elements(attr.t.dims) <= SMALL_CONSTANT:
                    small[node.output[0]] = attr.t
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or not node.input or node.input[0] not in small:
            continue
        shape_tensor = small[node.input[0]]
        if shape_tensor.data_location == shape_tensor.EXTERNAL:
            continue
        try:
            shape = [int(v) for v in numpy_helper.to_array(shape_tensor).reshape(-1)]
        except (ValueError, TypeError):
            continue
        if any(d < 0 for d in shape) or _elements(shape) > MAX_TENSOR_ELEMENTS:
            raise BadInputError(
                f"{path.name}: node {node.name or 'ConstantOfShape'} would build a tensor of shape "
                f"{shape} (limit {MAX_TENSOR_ELEMENTS:,} elements); the file is corrupt or hostile"
            )


def check_onnx_file(path: str | Path) -> Any:
    """The parsed ONNX ModelProto (external data not loaded) once the file passed every check.

    Refused: unparsable or empty files (BadInputError), external data outside
    the model's folder (UnsafeFileError, before any of it is read), tensors,
    inputs and outputs of absurd size (BadInputError).
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"model file {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError, onnx's own errors: all mean "not an ONNX file"
        reason = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:120]
        raise BadInputError(f"{path.name} is not a loadable ONNX model (truncated or corrupt: {reason})") from None
    if not model.graph.node or not model.graph.output:
        raise BadInputError(f"{path.name} is not a loadable ONNX model (it holds no graph; truncated or corrupt)")
    for tensor, where in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            check_external_data(path, tensor)
        _check_tensor(path, tensor, where)
    initializers = {t.name for t in model.graph.initializer}
    _check_value_infos(path, [v for v in model.graph.input if v.name not in initializers], "input")
    _check_value_infos(path, model.graph.output, "output")
    _check_constant_of_shape(path, model.graph)
    return model


# ---------------------------------------------------------------- ONNX Runtime format (.ort)

ORT_IDENTIFIER = b"ORTM"  # the flatbuffer file identifier of ONNX Runtime's InferenceSession schema
MAX_ORT_BYTES = 2 << 30  # flatbuffers address 2 GB at most


def _ort_graph(data: bytes) -> Any:
    """The Graph table of an ORT-format buffer, read with ONNX Runtime's own generated flatbuffer classes."""
    import onnxruntime.tools.ort_format_model  # noqa: F401  (puts ort_flatbuffers_py on the path)
    from ort_flatbuffers_py.fbs.InferenceSession import InferenceSession

    model = InferenceSession.GetRootAs(data, 0).Model()
    return model.Graph() if model is not None else None


def _ort_dims(value_info: Any) -> list[int]:
    """Fixed dimensions of a tensor NodeArg (named dimensions left out)."""
    from ort_flatbuffers_py.fbs.DimensionValueType import DimensionValueType
    from ort_flatbuffers_py.fbs.TensorTypeAndShape import TensorTypeAndShape

    type_info = value_info.Type()
    table = type_info.Value() if type_info is not None else None
    if table is None:
        return []
    tensor = TensorTypeAndShape()
    tensor.Init(table.Bytes, table.Pos)
    shape = tensor.Shape()
    values = [shape.Dim(j).Value() for j in range(shape.DimLength())] if shape is not None else []
    return [v.DimValue() for v in values if v is not None and v.DimType() == DimensionValueType.VALUE]


def _check_ort_graph(path: Path, graph: Any) -> None:
    ends = {graph.Inputs(j) for j in range(graph.InputsLength())} | {
        graph.Outputs(j) for j in range(graph.OutputsLength())
    }
    for j in range(graph.NodeArgsLength()):
        value = graph.NodeArgs(j)
        dims = _ort_dims(value) if value.Name() in ends else []
        if any(d < 0 or d > MAX_STATIC_DIM for d in dims) or (dims and _elements(dims) > MAX_TENSOR_ELEMENTS):
            raise BadInputError(
                f"{path.name}: graph input/output '{value.Name().decode(errors='replace')}' has the absurd "
                f"shape {dims}; the file is corrupt or hostile"
            )
    for j in range(graph.InitializersLength()):
        tensor = graph.Initializers(j)
        if tensor.ExternalDataOffset() >= 0:
            raise UnsafeFileError(f"refused {path.name}: a weight lives in an external file; rtool writes one file")
        dims = [tensor.Dims(k) for k in range(tensor.DimsLength())]
        if any(d < 0 for d in dims) or _elements(dims) > MAX_TENSOR_ELEMENTS:
            raise BadInputError(f"{path.name}: a weight claims the shape {dims}; the file is corrupt or hostile")


def check_ort_file(path: str | Path) -> None:
    """Refuse what is not an ONNX Runtime format model (``.ort``, a flatbuffer, not protobuf) or is a hostile one.

    Checked from the buffer alone, before ONNX Runtime reads it: the ``ORTM``
    identifier, a graph that the schema's tables can be read from, graph
    inputs and outputs of sane size, and weights stored inside the file.
    ONNX Runtime verifies the flatbuffer's offsets itself when it loads it.
    """
    import struct

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"model file {path} does not exist")
    if path.stat().st_size > MAX_ORT_BYTES:
        raise BadInputError(f"{path.name} is larger than any ONNX Runtime format model can be; it is not one")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != ORT_IDENTIFIER:
        raise BadInputError(
            f"{path.name} is not an ONNX Runtime format model (no '{ORT_IDENTIFIER.decode()}' flatbuffer "
            f"identifier); re-export it with `rtool export --format ort`"
        )
    try:
        graph = _ort_graph(data)
        if graph is None or graph.NodesLength() == 0:
            raise BadInputError(f"{path.name} holds no graph (truncated or corrupt); re-export it")
        _check_ort_graph(path, graph)
    except (IndexError, struct.error, ValueError, TypeError, AttributeError):
        raise BadInputError(
            f"{path.name} is a damaged ONNX Runtime format model (its tables do not read: truncated or corrupt)"
        ) from None


# ---------------------------------------------------------------- PyTorch zip archives

COMPRESSION_NAMES = {zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}


def check_stored_records(path: Path, archive: zipfile.ZipFile) -> None:
    """Refuse a ``torch.save`` archive with a compressed record, or records that claim more bytes than the file.

    torch.save stores every record as is, so a compressed one was made by
    something else: a 4 MB file can inflate to gigabytes while torch reads it
    (a zip bomb). A stored record holds its bytes in the file, so records
    (even ones that share their bytes) cannot add up to more than the file
    size; torch would allocate what they claim before reading them. Only the
    zip directory is read here, never a record.
    """
    size = path.stat().st_size
    claimed = 0
    for info in archive.infolist():
        member = repr(info.filename[:80])  # a hostile name may hold newlines
        if info.compress_type != zipfile.ZIP_STORED:
            method = COMPRESSION_NAMES.get(info.compress_type, f"method {info.compress_type}")
            raise UnsafeFileError(
                f"refused {path.name}: its record {member} is compressed ({method}), which "
                f"torch.save never does, and it would inflate to {info.file_size:,} bytes; only "
                f"load files saved by torch.save"
            )
        if info.file_size != info.compress_size:
            raise BadInputError(
                f"{path.name}: its record {member} says it holds {info.file_size:,} bytes but "
                f"stores {info.compress_size:,}; it is corrupt or forged"
            )
        claimed += info.file_size
        if info.header_offset + info.file_size > size or claimed > size:
            raise BadInputError(
                f"{path.name}: its records claim {claimed:,} bytes, more than the file's {size:,} "
                f"({member}: {info.file_size:,}); it is truncated or forged"
            )


# ---------------------------------------------------------------- torch.export archives
#
# torch.export.load (torch/export/pt2_archive/_package.py) reads an archive by member name and by the
# ``*_config.json`` payload tables. It unpickles (runs code) in these places:
#   - a weights/constants config entry with ``use_pickle: true`` (torch.load, weights_only=False);
#   - a constants entry whose ``path_name`` starts with ``custom_obj_`` (torch._C._pickle_load_obj) or
#     ``opaque_obj_`` (pickle.loads), whatever ``use_pickle`` says, and ``os.path.join`` lets a path_name
#     with ``/`` or ``..`` point at any member;
#   - ``data/sample_inputs/*.pt`` (falls back to weights_only=False when the safe load fails);
#   - ``data/aotinductor/`` holds compiled shared libraries that are loaded and run.
# So rtool accepts only what a plain torch.export.save of a tensor-only program writes (an allowlist of
# member names, config entries that name plain tensor files), and reads every .pt member the safe way.

PT2_FIXED_MEMBERS = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
PT2_MEMBER_PATTERNS = (
    re.compile(r"models/\w+\.json"),
    re.compile(r"data/(weights/\w+_weights|constants/\w+_constants)_config\.json"),
    re.compile(r"data/weights/weight_\d+"),
    re.compile(r"data/constants/tensor_\d+"),
    re.compile(r"data/sample_inputs/\w+\.pt"),
    re.compile(r"extra/[\w.-]+"),
)
PT2_TENSOR_PATH = {"weights": re.compile(r"weight_\d+"), "constants": re.compile(r"tensor_\d+")}


def _pt2_root(path: Path, names: list[str]) -> str:
    """The archive's one top folder (torch.export.save writes every member under it)."""
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or any("/" not in name for name in names):
        raise BadInputError(
            f"{path.name} is not a torch.export archive (its members are not under one folder); re-export it"
        )
    return roots.pop() + "/"


def _refuse_pt2(path: Path, what: str) -> UnsafeFileError:
    return UnsafeFileError(
        f"refused {path.name}: {what}, which torch.export.load would unpickle or run; "
        f"rtool opens .pt2 files of plain tensors only (re-export it with `rtool export`)"
    )


def _check_pt2_members(path: Path, members: list[str]) -> None:
    for name in members:
        if name not in PT2_FIXED_MEMBERS and not any(p.fullmatch(name) for p in PT2_MEMBER_PATTERNS):
            raise _refuse_pt2(path, f"it holds the part '{name}'")


def _check_pt2_config(path: Path, archive: zipfile.ZipFile, root: str, config_name: str, members: set[str]) -> None:
    """Every entry of a payload table must name a plain tensor file of its own folder, unpickled never."""
    kind = "weights" if config_name.startswith("data/weights/") else "constants"
    try:
        table = load_json_text(archive.read(root + config_name), f"{path.name}: {config_name}")
    except DAMAGED_ZIP_ERRORS:
        raise BadInputError(f"{path.name}: {config_name} is not readable; re-export it") from None
    config = table.get("config") if isinstance(table, dict) else None
    if not isinstance(config, dict):
        raise BadInputError(f"{path.name}: {config_name} holds no payload table; re-export it")
    for fqn, entry in config.items():
        if not isinstance(entry, dict):
            raise BadInputError(f"{path.name}: {config_name} entry '{fqn}' is not a table; re-export it")
        path_name = entry.get("path_name")
        if entry.get("use_pickle") is not False:
            raise _refuse_pt2(path, f"{config_name} marks '{fqn}' as pickled")
        if not isinstance(path_name, str) or not PT2_TENSOR_PATH[kind].fullmatch(path_name):
            raise _refuse_pt2(path, f"{config_name} points '{fqn}' at '{path_name}' (not a plain tensor file)")
        if f"data/{kind}/{path_name}" not in members:
            raise BadInputError(f"{path.name}: {config_name} names {path_name}, which is missing; re-export it")


def _check_pickled_parts(path: Path, archive: zipfile.ZipFile, root: str, members: list[str]) -> None:
    """Each ``.pt`` member loads with weights_only=True, so torch never reaches its full-unpickling fallback."""
    import torch

    for name in (n for n in members if n.endswith(".pt")):
        try:
            torch.load(io.BytesIO(archive.read(root + name)), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise _refuse_pt2(path, f"its part {name} needs more than plain tensors to load") from None
        except Exception as e:  # torch raises many kinds for a broken part; each means "corrupt"
            raise BadInputError(
                f"{path.name} is not a readable torch.export file ({name} is corrupt: "
                f"{e.__class__.__name__}); re-export it"
            ) from None


def check_pt2_archive(path: str | Path) -> None:
    """Refuse a ``.pt2`` file holding anything torch.export.load would unpickle or run (see above)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            check_stored_records(path, archive)  # torch.export.save stores every record as is
            names = [n for n in archive.namelist() if not n.endswith("/")]
            root = _pt2_root(path, names)
            members = [n[len(root) :] for n in names]
            _check_pt2_members(path, members)
            for config_name in (m for m in members if m.endswith("_config.json")):
                _check_pt2_config(path, archive, root, config_name, set(members))
            _check_pickled_parts(path, archive, root, members)
    except DAMAGED_ZIP_ERRORS as e:
        raise BadInputError(
            f"{path.name} is not a readable torch.export file ({e.__class__.__name__}: {str(e)[:120]}); re-export it"
        ) from None
