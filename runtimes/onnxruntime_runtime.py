"""ONNX Runtime (.onnx FP32/FP16/INT8, and its own .ort format) with execution providers chosen from what really
works here.

onnxruntime-gpu lists the TensorRT and CUDA providers wherever it is
installed, even on machines with no GPU; asking for one there prints a long
error log and silently falls back to the CPU. So each provider is checked
first (a GPU through the driver, TensorRT's library loadable), only usable
ones are asked for, and the session's real providers are compared with the
request: any fallback becomes one line in ``notes``.

On a GPU the choice follows the graph (``auto_providers``): TensorRT for FP16
and the TensorRT form of INT8, CUDA (TF32 off) for FP32, the CPU provider for
the CPU form of INT8. GPU providers get their options: ``device_id`` from
``--device cuda:N``; TensorRT one optimization profile over the batch range
and engine/timing caches under ~/.cache/rtool, keyed by the file's sha256, the
onnxruntime and TensorRT versions and the GPU model, so an engine is built
once, not per session and per new batch size. onnxruntime-gpu 1.31.1's
TensorRT provider links ``libnvinfer.so.10``: it needs TensorRT 10, whatever
TensorRT the native runtime uses (``ort_tensorrt_major`` reads it from the
provider library).

Files exported with ``--embed-preprocessing`` take uint8 (N, H, W, C) pixels;
the runtime still takes the usual float32 batch and turns it back into the
exact pixels (the normalisation is invertible to well under a grey level).
Files with ``--embed-softmax`` output probabilities; their logarithm is
returned, which equals the logits up to a constant per row.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from exporters import parse_batch_range
from runtimes import (
    Runtime,
    cuda_device_name,
    cuda_gpus,
    cuda_index,
    error_summary,
    log_probabilities,
    parse_device,
    physical_cores,
    register_runtime,
)
from runtimes.cards import card_beside, card_from_json, check_card_fits_input
from toolkit.card import ONNX_METADATA_KEY
from toolkit.errors import BadInputError, UnavailableError
from toolkit.fileio import ensure_writable_dir
from toolkit.safety import check_onnx_file, check_ort_file

PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
ALIASES = {"tensorrt": PREFERENCE[0], "trt": PREFERENCE[0], "cuda": PREFERENCE[1], "cpu": PREFERENCE[2]}
ERROR_SEVERITY, FATAL_SEVERITY = 3, 4


def provider_name(text: str) -> str:
    """'cuda' / 'CUDA' / 'CUDAExecutionProvider' -> 'CUDAExecutionProvider'."""
    if text in PREFERENCE:
        return text
    try:
        return ALIASES[text.lower()]
    except KeyError:
        raise BadInputError(f"unknown provider '{text}'; choose one of: auto, tensorrt, cuda, cpu") from None


@functools.lru_cache(maxsize=1)
def ort_tensorrt_major() -> int | None:
    """The TensorRT major version this onnxruntime build's TensorRT provider is linked against (its
    ``libnvinfer.so.N`` dependency), None where the build has no TensorRT provider library."""
    import onnxruntime

    library = Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_tensorrt.so"
    try:
        found = re.search(rb"libnvinfer\.so\.(\d+)", library.read_bytes())
    except OSError:
        return None
    return int(found.group(1)) if found else None


def _tensorrt_library() -> str:
    """'' if the TensorRT library ONNX Runtime's provider needs loads in this process, else why not."""
    try:
        import tensorrt  # the pip wheel loads libnvinfer from tensorrt_libs

        installed = str(tensorrt.__version__)
    except ImportError:
        installed = ""
    major = ort_tensorrt_major()
    for soname in [f"libnvinfer.so.{major}"] if major else ["libnvinfer.so.10", "libnvinfer.so.11"]:
        try:
            ctypes.CDLL(soname)
            return ""
        except OSError:
            continue
    if installed and major and not installed.startswith(f"{major}."):
        return (
            f"ONNX Runtime's TensorRT provider needs TensorRT {major} (libnvinfer.so.{major}) but TensorRT "
            f"{installed} is installed (pip install 'rtool[tensorrt]' installs a matching one)"
        )
    return "TensorRT is not installed (pip install 'rtool[tensorrt]')"


def provider_status() -> dict[str, str]:
    """Each provider -> '' if usable on this machine, else a short reason. Prints nothing."""
    import onnxruntime as ort

    built = set(ort.get_available_providers())
    gpus, no_gpu = cuda_gpus()
    status = {}
    for name in PREFERENCE:
        if name not in built:
            status[name] = f"this onnxruntime build has no {name}"
        elif name == "CPUExecutionProvider":
            status[name] = ""
        elif not gpus:
            status[name] = no_gpu
        elif name == "TensorrtExecutionProvider":
            status[name] = _tensorrt_library()
        else:
            status[name] = ""
    return status


def graph_kind(model: Any) -> tuple[str, str | None]:
    """(precision, INT8 target) of an ONNX graph: Q/DQ with uint8 zero points is the CPU form (U8S8), with
    int8 only the TensorRT form (S8S8); FP16 weights make an FP16 graph; anything else is FP32."""
    from onnx import TensorProto

    initializers = {t.name: t.data_type for t in model.graph.initializer}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    if quantize:
        points = [initializers.get(n.input[2]) for n in quantize if len(n.input) > 2]
        return "int8", "cpu" if TensorProto.UINT8 in points else "tensorrt"
    if TensorProto.FLOAT16 in initializers.values():
        return "fp16", None
    return "fp32", None


def auto_providers(status: dict[str, str], kind: tuple[str, str | None] | None, device: str) -> list[str]:
    """The usable providers for a graph of ``kind`` on ``device`` (auto | cuda[:N]), best first.

    TensorRT is asked for FP16 and for the TensorRT form of INT8 (that is what it
    is for); FP32 graphs go to CUDA with TF32 off, because TensorRT builds FP32
    layers in TF32 (about 1e-3 from FP32) and ONNX Runtime exposes no switch for
    it; the CPU form of INT8 (uint8 zero points, which TensorRT refuses) stays on
    the CPU provider it was made for unless CUDA is asked for by name.
    """
    usable = [p for p in PREFERENCE if not status[p]]
    if device.startswith("cuda") and usable == [PREFERENCE[2]]:
        raise UnavailableError(f"--device {device} asked for, but {status[PREFERENCE[1]]}; use --device cpu")
    wanted = list(PREFERENCE)
    if kind == ("fp32", None):
        wanted = [PREFERENCE[1], PREFERENCE[2]]
    elif kind == ("int8", "cpu"):
        wanted = [PREFERENCE[1], PREFERENCE[2]] if device.startswith("cuda") else [PREFERENCE[2]]
    return [p for p in wanted if p in usable] or [PREFERENCE[2]]


def choose_providers(
    requested: str | None = None, device: str = "auto", kind: tuple[str, str | None] | None = None
) -> tuple[list[str], list[str]]:
    """(providers to ask for, in order, always ending with CPU; one-line notes about requests that cannot be met).

    ``kind`` is the graph's (precision, INT8 target) (see graph_kind); None: any graph.
    """
    device_kind, _ = parse_device(device)
    status = provider_status()
    if requested in (None, "", "auto"):
        return ([PREFERENCE[2]] if device_kind == "cpu" else auto_providers(status, kind, device)), []
    wanted = provider_name(requested)
    if status[wanted]:
        return [PREFERENCE[2]], [f"{wanted} unusable here ({status[wanted]}): using CPUExecutionProvider"]
    return list(dict.fromkeys([wanted, PREFERENCE[2]])), []


def provider_settings(
    providers: list[str],
    *,
    device_id: int,
    kind: tuple[str, str | None],
    input_name: str,
    shape: tuple[int, ...] | None,
    batch_range: tuple[int, int, int],
    cache: Path,
) -> list[tuple[str, dict[str, Any]]]:
    """Each provider with its options: the CUDA device, and for TensorRT one optimization profile over
    ``batch_range`` plus engine and timing caches under ``cache`` (so a session does not rebuild its engine
    for every process and every new batch size)."""
    tensorrt: dict[str, Any] = {
        "device_id": device_id,
        "trt_fp16_enable": kind[0] == "fp16",
        "trt_int8_enable": kind[0] == "int8",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache / "engines"),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache / "timing"),
    }
    if shape:  # a graph whose image size is fixed: one profile over the batch range
        dims = "x".join(map(str, shape))
        for key, n in zip(("min", "opt", "max"), batch_range):
            tensorrt[f"trt_profile_{key}_shapes"] = f"{input_name}:{n}x{dims}"
    options: dict[str, dict[str, Any]] = {
        PREFERENCE[0]: tensorrt,
        PREFERENCE[1]: {"device_id": device_id, "use_tf32": 0},
        PREFERENCE[2]: {},
    }
    return [(name, options[name]) for name in providers]


def tensorrt_cache(path: Path, device_id: int) -> Path:
    """Where ONNX Runtime keeps TensorRT engines for ``path``: one folder per onnxruntime version, TensorRT
    version, GPU model and file content (sha256), so a changed file, library or GPU never reuses an engine."""
    import onnxruntime

    from toolkit.fileio import cache_dir, slug
    from toolkit.manifest import sha256_file

    machine = f"ort{onnxruntime.__version__}-trt{ort_tensorrt_major()}-{slug(cuda_device_name(device_id))}"
    return cache_dir("onnxruntime-tensorrt", machine, sha256_file(path)[:16])


def session_options(
    threads: int | None = None, optimized_model_path: str | Path | None = None, simulate_qdq: bool = False
) -> Any:
    """Full graph optimization, sequential execution, one inter-op thread, intra-op = physical cores, and worker
    threads that stop spinning when a call returns.

    ONNX Runtime's intra-op workers otherwise spin on after every ``run`` (measured here: 52-55 ms of CPU
    burnt in the half second after one ResNet-18 INT8 call, none with ``session.force_spinning_stop``). That
    time is taken from whatever runs next: in ``rtool bench``, the next runtime's timed calls (on 2 cores
    its ResNet-18 INT8 row took 5.6-7.0 ms where a bare session alone took 4.2-4.4 ms); in an app, its own work.
    They still spin between the operators of a call, where it saves wake-ups.

    ``simulate_qdq`` keeps Q/DQ pairs as they are (no int8 kernels): the graph
    then computes in float exactly what its quantization defines, whatever the
    CPU. That is how a TensorRT-target INT8 file is checked where TensorRT is
    missing; x86 int8 kernels without VNNI saturate on its symmetric form.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if simulate_qdq:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(threads) if threads else physical_cores()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = ERROR_SEVERITY
    if optimized_model_path:
        options.optimized_model_filepath = str(optimized_model_path)
    return options


def pixels_from_input(batch: np.ndarray, spec: Any) -> np.ndarray:
    """The inverse of toolkit.preprocess.normalize: float32 (N, C, H, W) -> uint8 (N, H, W, C) pixels."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
    pixels = np.clip(np.rint((batch * std + mean) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))


@register_runtime
class OnnxRuntimeRuntime(Runtime):
    """Options: ``provider`` (auto|tensorrt|cuda|cpu), ``threads``, ``optimized_model_path``, ``simulate_qdq``,
    ``batch_range`` (TensorRT provider's profile MIN:OPT:MAX, default exporters.DEFAULT_BATCH_RANGE)."""

    name = "onnxruntime"
    suffixes = (".onnx", ".ort")
    formats = ("onnx", "ort")
    order = 30
    devices = ("cpu", "cuda")

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False, "onnxruntime is not installed (pip install onnxruntime)"
        return True, ""

    def load(self, artifact_path: str | Path, device: str = "auto") -> None:
        import onnxruntime as ort

        path = self.expect_file(artifact_path)
        ort_format = path.name.endswith(".ort")
        model, kind, providers = self.checked_graph(path, device, ort_format)
        options = session_options(
            self.options.get("threads"),
            self.options.get("optimized_model_path"),
            bool(self.options.get("simulate_qdq")),
        )
        if ort_format:
            options.add_session_config_entry("session.load_model_format", "ORT")
        quiet = os.environ.get("RTOOL_DEBUG") is None and providers != [PREFERENCE[2]]
        # A GPU provider that passed the checks can still fail to load (e.g. a missing cuDNN); ONNX Runtime
        # then logs a multi-line error at ERROR severity. It is reported below in one line instead.
        ort.set_default_logger_severity(FATAL_SEVERITY if quiet else ERROR_SEVERITY)
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=self.provider_list(path, model, kind, providers, device)
            )
        except Exception as e:  # onnxruntime raises its own exception classes (InvalidProtobuf, Fail, ...)
            raise BadInputError(f"{path.name} is not a loadable ONNX model ({error_summary(e)})") from None
        finally:
            ort.set_default_logger_severity(ERROR_SEVERITY)
        got = self.session.get_providers()
        missing = [p for p in providers if p not in got]
        if missing and not self.notes:
            self.notes.append(
                f"{missing[0]} failed to start (set RTOOL_DEBUG=1 for ONNX Runtime's log): using {got[0]}"
            )
        self.device = got[0] + (" (Q/DQ simulated in float)" if self.options.get("simulate_qdq") else "")
        stored = self.session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
        self.card = card_from_json(stored, path) if stored else card_beside(path)
        if self.card is None:
            raise BadInputError(
                f"{path.name} carries no rtool model card (metadata '{ONNX_METADATA_KEY}'); "
                f"export it with `rtool export`"
            )
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise BadInputError(f"{path.name} takes {len(inputs)} inputs; rtool models take one image batch")
        self.input_name = inputs[0].name
        self.raw_pixels = inputs[0].type == "tensor(uint8)"
        check_card_fits_input(self.card, inputs[0].shape, self.raw_pixels, path)
        batch_dim = inputs[0].shape[0]
        self.max_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        if PREFERENCE[0] in got:  # TensorRT's engine takes the profile's batch range only
            self.max_batch = min(self.max_batch or self.tensorrt_batch[2], self.tensorrt_batch[2])
        self.run_options = ort.RunOptions()
        if os.environ.get("RTOOL_DEBUG") is None:  # a failing node is logged in many lines; _run says it in one
            self.run_options.log_severity_level = FATAL_SEVERITY

    def checked_graph(
        self, path: Path, device: str, ort_format: bool
    ) -> tuple[Any, tuple[str, str | None] | None, list[str]]:
        """(ONNX graph or None for a .ort, its (precision, INT8 target), providers), the file checked before ONNX
        Runtime reads it: external data outside its folder, absurd sizes. A .ort is a flatbuffer, not protobuf,
        with a check of its own; it was optimized at export for the CPU provider, which runs it."""
        if not ort_format:
            model = check_onnx_file(path)
            kind = graph_kind(model)
            providers, self.notes = choose_providers(self.options.get("provider"), device, kind)
            return model, kind, providers
        check_ort_file(path)
        requested = str(self.options.get("provider") or "auto").lower()
        self.notes = []
        if requested not in ("auto", "cpu") or device.startswith("cuda"):
            self.notes.append(
                f"{path.name} is ONNX Runtime's mobile format, optimized at export for the CPU provider: "
                f"using CPUExecutionProvider"
            )
        return None, None, [PREFERENCE[2]]

    def provider_list(
        self, path: Path, model: Any, kind: tuple[str, str | None], providers: list[str], device: str
    ) -> list[Any]:
        """``providers`` with their options (device_id from --device cuda:N, TensorRT's profile and caches)."""
        if providers == [PREFERENCE[2]]:
            return providers
        device_id = cuda_index(device)
        self.tensorrt_batch = parse_batch_range(self.options.get("batch_range"))
        initializers = {t.name for t in model.graph.initializer}
        graph_input = next((v for v in model.graph.input if v.name not in initializers), None)
        name, shape = "", None
        if graph_input is not None:  # a graph whose image size is fixed gets one profile over the batch range
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in graph_input.type.tensor_type.shape.dim]
            name, shape = graph_input.name, (tuple(dims[1:]) if len(dims) > 1 and all(dims[1:]) else None)
        cache = Path()
        if PREFERENCE[0] in providers:
            cache = tensorrt_cache(path, device_id)
            for folder in ("engines", "timing"):
                ensure_writable_dir(cache / folder, "cache folder")
        return provider_settings(
            providers,
            device_id=device_id,
            kind=kind,
            input_name=name,
            shape=shape,
            batch_range=self.tensorrt_batch,
            cache=cache,
        )

    def _run(self, batch: np.ndarray) -> np.ndarray:
        feed = pixels_from_input(batch, self.card.input) if self.raw_pixels else batch
        try:
            out = self.session.run(None, {self.input_name: feed}, self.run_options)[0]
        except Exception as e:  # onnxruntime's own error classes: the file, not rtool, failed
            raise BadInputError(
                f"ONNX Runtime failed to run this model ({error_summary(e)}); the file may be corrupt, re-export it"
            ) from None
        if self.card.output == "probabilities":
            return log_probabilities(out)
        return out

    def close(self) -> None:
        self.session = None
