"""ONNX Runtime (.onnx, FP32/FP16/INT8) with execution providers chosen from what really works here.

onnxruntime-gpu lists the TensorRT and CUDA providers wherever it is
installed, even on machines with no GPU; asking for one there prints a long
error log and silently falls back to the CPU. So each provider is checked
first (a GPU through the driver, TensorRT's library loadable), only usable
ones are asked for, and the session's real providers are compared with the
request: any fallback becomes one line in ``notes``.

Files exported with ``--embed-preprocessing`` take uint8 (N, H, W, C) pixels;
the runtime still takes the usual float32 batch and turns it back into the
exact pixels (the normalisation is invertible to well under a grey level).
Files with ``--embed-softmax`` output probabilities; their logarithm is
returned, which equals the logits up to a constant per row.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np

from runtimes import Runtime, cuda_gpus, error_summary, physical_cores, register_runtime
from runtimes.cards import card_beside, card_from_json, check_card_fits_input
from toolkit.card import ONNX_METADATA_KEY
from toolkit.errors import BadInputError, UnavailableError
from toolkit.safety import check_onnx_file

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


def _tensorrt_library() -> str:
    """'' if TensorRT's runtime library loads in this process, else why not."""
    try:
        import tensorrt  # noqa: F401  (the pip wheel loads libnvinfer from tensorrt_libs)
    except ImportError:
        pass
    for soname in ("libnvinfer.so.10", "libnvinfer.so.11"):
        try:
            ctypes.CDLL(soname)
            return ""
        except OSError:
            continue
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


def choose_providers(requested: str | None = None, device: str = "auto") -> tuple[list[str], list[str]]:
    """(providers to ask for, in order, always ending with CPU; one-line notes about requests that cannot be met)."""
    status = provider_status()
    if requested in (None, "", "auto"):
        if device == "cpu":
            return [PREFERENCE[2]], []
        usable = [p for p in PREFERENCE if not status[p]]
        if device.startswith("cuda") and usable == [PREFERENCE[2]]:
            raise UnavailableError(f"--device {device} asked for, but {status[PREFERENCE[1]]}; use --device cpu")
        return usable, []
    wanted = provider_name(requested)
    if status[wanted]:
        return [PREFERENCE[2]], [f"{wanted} unusable here ({status[wanted]}): using CPUExecutionProvider"]
    return list(dict.fromkeys([wanted, PREFERENCE[2]])), []


def session_options(
    threads: int | None = None, optimized_model_path: str | Path | None = None, simulate_qdq: bool = False
) -> Any:
    """Full graph optimization, sequential execution, one inter-op thread, intra-op = physical cores.

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
    """Options: ``provider`` (auto|tensorrt|cuda|cpu), ``threads``, ``optimized_model_path``, ``simulate_qdq``."""

    name = "onnxruntime"
    suffixes = (".onnx",)
    formats = ("onnx",)
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
        check_onnx_file(path)  # external data outside its folder, absurd sizes: refused before ONNX Runtime reads it
        providers, self.notes = choose_providers(self.options.get("provider"), device)
        options = session_options(
            self.options.get("threads"),
            self.options.get("optimized_model_path"),
            bool(self.options.get("simulate_qdq")),
        )
        quiet = os.environ.get("RTOOL_DEBUG") is None and providers != [PREFERENCE[2]]
        # A GPU provider that passed the checks can still fail to load (e.g. a missing cuDNN); ONNX Runtime
        # then logs a multi-line error at ERROR severity. It is reported below in one line instead.
        ort.set_default_logger_severity(FATAL_SEVERITY if quiet else ERROR_SEVERITY)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
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
        self.run_options = ort.RunOptions()
        if os.environ.get("RTOOL_DEBUG") is None:  # a failing node is logged in many lines; _run says it in one
            self.run_options.log_severity_level = FATAL_SEVERITY

    def _run(self, batch: np.ndarray) -> np.ndarray:
        feed = pixels_from_input(batch, self.card.input) if self.raw_pixels else batch
        try:
            out = self.session.run(None, {self.input_name: feed}, self.run_options)[0]
        except Exception as e:  # onnxruntime's own error classes: the file, not rtool, failed
            raise BadInputError(
                f"ONNX Runtime failed to run this model ({error_summary(e)}); the file may be corrupt, re-export it"
            ) from None
        if self.card.output == "probabilities":
            return np.log(np.maximum(out, np.finfo(np.float32).tiny))
        return out

    def close(self) -> None:
        self.session = None
