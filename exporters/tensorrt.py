"""TensorRT engines (``model.fp16.engine``, ``model.int8.engine``), built from the ONNX graph.

TensorRT 10 is weakly typed: the FP16 engine comes from the FP32 ONNX with
``BuilderFlag.FP16``, the INT8 engine from the Q/DQ ONNX (target tensorrt)
with ``BuilderFlag.INT8``. TensorRT 11 removed those flags and builds every
network strongly typed, so precision comes from the graph itself: FP16 from
the FP16 ONNX, INT8 from the Q/DQ ONNX. ``onnx_source`` holds that rule.

The batch range becomes one optimization profile, the workspace a memory pool
limit, and a timing cache file (one per TensorRT version and GPU model) makes
rebuilds fast; a cache TensorRT cannot use is replaced with a warning. An
engine is tuned for the TensorRT version and the GPU model it was built on, so
its manifest entry is stamped with both and the runtime refuses any other.
Engines keep their layer details (ProfilingVerbosity.DETAILED) so the engine
inspector can prove an INT8 engine really runs its convolutions in INT8.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from exporters import (
    DEFAULT_BATCH_RANGE,
    Artifact,
    ExportContext,
    artifact_filename,
    parse_batch_range,
    register_exporter,
)
from exporters.onnx import onnx_graph
from exporters.onnx_common import INPUT_NAME, OUTPUT_NAME, OnnxOptions
from exporters.onnx_int8 import Int8Options
from exporters.validation import compare, validation_data
from toolkit.card import ModelCard
from toolkit.errors import BadInputError, CheckFailedError, UnavailableError
from toolkit.fileio import atomic_path, atomic_write_bytes, cache_dir, slug
from toolkit.flags import setting

INSTALL_HINT = "pip install 'rtool[tensorrt]'"
FILES = {"fp16": "model.fp16.engine", "int8": "model.int8.engine"}


@dataclass(frozen=True)
class TensorRTOptions:
    """How engines are built."""

    batch_range: str = setting(DEFAULT_BATCH_RANGE, "TensorRT optimization profile MIN:OPT:MAX.")
    workspace: float = setting(4.0, "TensorRT builder workspace in GB.", low=0.01, high=1024)
    timing_cache: str | None = setting(
        None,
        "TensorRT timing cache file, reused across builds "
        "(default: ~/.cache/rtool/, one per TensorRT version and GPU model).",
    )

    def validate(self) -> None:
        parse_batch_range(self.batch_range)


def available() -> tuple[bool, str]:
    """(True, "") where engines can be built: TensorRT importable and a CUDA GPU usable."""
    missing = []
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        missing.append(f"TensorRT is not installed ({INSTALL_HINT})")
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is usable here (TensorRT builds an engine on the GPU it will run on)")
    return not missing, "; ".join(missing)


def major_version(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise UnavailableError(f"cannot read the TensorRT version '{version}'") from None


def onnx_source(trt_major: int, precision: str) -> tuple[str, str | None, list[str]]:
    """(ONNX precision, INT8 target, builder flags) of the source of an engine of ``precision``, by TensorRT major."""
    if precision not in ("fp16", "int8"):
        raise BadInputError(f"TensorRT engines are built in fp16 or int8, not {precision}")
    if trt_major < 10:
        raise UnavailableError(
            f"TensorRT {trt_major}.x is too old; rtool builds with TensorRT 10 or 11 ({INSTALL_HINT})"
        )
    if trt_major == 10:  # weakly typed: a builder flag allows the lower precision
        return ("fp32", None, ["FP16"]) if precision == "fp16" else ("int8", "tensorrt", ["INT8"])
    return ("fp16", None, []) if precision == "fp16" else ("int8", "tensorrt", [])  # strongly typed


def default_timing_cache(trt_version: str, gpu_name: str, compute_capability: str) -> Path:
    """One timing cache per TensorRT version and GPU model: timings from another GPU are not this one's."""
    name = f"tensorrt-{trt_version}-{slug(gpu_name)}-sm{compute_capability.replace('.', '')}.timing-cache"
    return cache_dir() / name


def _create_cache(config: Any, data: bytes) -> Any:
    try:
        return config.create_timing_cache(data)
    except Exception:  # TensorRT's own error types for bytes it cannot parse
        return None


def load_timing_cache(config: Any, path: Path) -> tuple[Any, str]:
    """(the timing cache now set on ``config``, a warning or '').

    A file TensorRT cannot read (corrupt, truncated) or will not use (another
    TensorRT version or GPU) is not fatal: the build starts from an empty cache,
    says so in one line, and the file is replaced after the build.
    """
    data = path.read_bytes() if path.is_file() else b""
    cache = _create_cache(config, data) if data else None
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache, ""
    warning = ""
    if data:
        why = "unreadable (corrupt or truncated)" if cache is None else "from another TensorRT version or GPU"
        warning = f"timing cache {path} is {why}: building without it; it is replaced after this build"
    cache = _create_cache(config, b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise CheckFailedError("TensorRT could not start an empty timing cache (see the TensorRT log above)")
    return cache, warning


def save_timing_cache(config: Any, path: Path) -> str:
    """Write the builder's timing cache; '' or a warning (a cache that cannot be written only slows the next build)."""
    try:
        atomic_write_bytes(path, bytes(memoryview(config.get_timing_cache().serialize())))
    except (OSError, BadInputError) as e:
        return f"could not write the timing cache {path} ({e}); the next build starts without it"
    return ""


def engine_stamp() -> dict[str, str]:
    """What an engine is bound to: TensorRT version, GPU name, compute capability."""
    import tensorrt as trt

    major, minor = torch.cuda.get_device_capability(0)
    return {
        "tensorrt_version": trt.__version__,
        "gpu_name": torch.cuda.get_device_name(0),
        "compute_capability": f"{major}.{minor}",
    }


def build_engine(
    onnx_bytes: bytes,
    *,
    input_shape: tuple[int, int, int],
    flags: list[str],
    batch_range: tuple[int, int, int],
    workspace_gb: float,
    timing_cache: Path,
    warn: Callable[[str], None] = lambda message: None,
) -> bytes:
    """Serialized engine from an ONNX graph (TensorRT 10 and 11 Python API).

    Layer details are kept in the engine (ProfilingVerbosity.DETAILED), so the
    engine inspector can show which precision each layer really runs in.
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is implied since 10; strong typing is implied in 11
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckFailedError(f"TensorRT could not parse the ONNX graph: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    low, opt, high = ((n, *input_shape) for n in batch_range)
    profile.set_shape(INPUT_NAME, low, opt, high)
    config.add_optimization_profile(profile)
    _, problem = load_timing_cache(config, timing_cache)
    if problem:
        warn(problem)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CheckFailedError("TensorRT failed to build the engine (see the TensorRT log above)")
    problem = save_timing_cache(config, timing_cache)
    if problem:
        warn(problem)
    return bytes(memoryview(serialized))


def run_engine(engine_bytes: bytes, batch: np.ndarray, batch_range: tuple[int, int, int]) -> np.ndarray:
    """Logits from a serialized engine on the GPU (name-based I/O, ``execute_async_v3``), in batches its profile
    takes: at most its largest, and a short last one repeated up to its smallest (the extra rows dropped)."""
    low, _, high = batch_range
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    context = engine.create_execution_context()
    half_in = engine.get_tensor_dtype(INPUT_NAME) == trt.DataType.HALF
    out_dtype = torch.float16 if engine.get_tensor_dtype(OUTPUT_NAME) == trt.DataType.HALF else torch.float32
    stream = torch.cuda.Stream()
    outputs = []
    for start in range(0, len(batch), high):
        chunk = batch[start : start + high]
        rows = len(chunk)
        if rows < low:
            chunk = np.resize(chunk, (low, *chunk.shape[1:]))
        x = torch.from_numpy(np.ascontiguousarray(chunk)).cuda()
        x = x.half() if half_in else x
        context.set_input_shape(INPUT_NAME, tuple(x.shape))
        out = torch.empty(tuple(context.get_tensor_shape(OUTPUT_NAME)), dtype=out_dtype, device="cuda")
        context.set_tensor_address(INPUT_NAME, x.data_ptr())
        context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise CheckFailedError("TensorRT could not run the engine it built")
        stream.synchronize()
        outputs.append(out.float().cpu().numpy()[:rows])
    return np.concatenate(outputs)


@register_exporter(
    "tensorrt",
    precisions=("fp16", "int8"),
    runtime="tensorrt",
    files=FILES,
    available=available,
    options=(OnnxOptions, Int8Options, TensorRTOptions),
)
def export(
    model: torch.nn.Module,
    card: ModelCard,
    out_dir: Path,
    *,
    precision: str,
    target: str | None,
    context: ExportContext,
) -> Artifact:
    ok, reason = available()
    if not ok:
        raise UnavailableError(f"cannot build TensorRT engines here: {reason}")
    import tensorrt as trt

    source_precision, target, flags = onnx_source(major_version(trt.__version__), precision)
    graph, onnx_settings = onnx_graph(model, card, source_precision, context, target)
    options = context.option(TensorRTOptions)
    batch_range = parse_batch_range(options.batch_range)
    workspace = options.workspace
    stamp = engine_stamp()
    cache_file = Path(
        options.timing_cache
        or default_timing_cache(stamp["tensorrt_version"], stamp["gpu_name"], stamp["compute_capability"])
    )
    engine = build_engine(
        graph.SerializeToString(),
        input_shape=card.input.shape,
        flags=flags,
        batch_range=batch_range,
        workspace_gb=workspace,
        timing_cache=cache_file,
        warn=context.notes.append,
    )
    # The engine is gated like every file: on its precision's images (held-out ones for fp16/int8).
    batch, expected, source = validation_data(model, card, precision, context)
    stats = compare(expected, run_engine(engine, batch, batch_range), source)
    path = Path(out_dir) / FILES[precision]
    with atomic_path(path) as tmp:
        tmp.write_bytes(engine)
    settings = {
        **stamp,
        "onnx_source": artifact_filename("onnx", source_precision, target),
        "opset": onnx_settings["opset"],
        "builder_flags": flags,
        "strongly_typed": not flags,
        "batch_range": list(batch_range),
        "workspace_gb": workspace,
        "timing_cache": str(cache_file),
    }
    return Artifact(
        format="tensorrt", precision=precision, path=path, runtime="tensorrt", settings=settings, validation=stats
    )
