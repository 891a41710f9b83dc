"""TensorRT engines (.engine): deserialize, check the build stamp, run on a CUDA stream (TensorRT 10 and 11).

An engine only runs on the TensorRT version and GPU model it was built for,
and it is executable code: so it is opened only from an export folder whose
manifest vouches for its bytes (sha256) and records its stamp (TensorRT
version, GPU, compute capability). A mismatch is refused with the reason
before TensorRT sees the file. Inference uses the name-based tensor API
common to TensorRT 10 and 11: ``set_input_shape`` within the optimization
profile, ``set_tensor_address`` on torch CUDA buffers, ``execute_async_v3``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from runtimes import Runtime, cuda_gpus, cuda_index, parse_device, register_runtime
from runtimes.cards import card_beside, manifest_entry
from toolkit.errors import BadInputError, UnavailableError
from toolkit.manifest import verify_sha256

INSTALL_HINT = "TensorRT is not installed (pip install 'rtool[tensorrt]')"

# Where an engine's stamp may sit in its manifest entry ("settings" first, then "validation").
STAMP_KEYS = {
    "tensorrt_version": ("tensorrt_version", "tensorrt", "trt_version"),
    "gpu_name": ("gpu_name", "gpu", "device_name"),
    "compute_capability": ("compute_capability", "sm", "gpu_compute_capability"),
}
STAMP_LABELS = {
    "tensorrt_version": "TensorRT version",
    "gpu_name": "GPU name",
    "compute_capability": "compute capability",
}


def engine_stamp(entry: dict[str, Any]) -> dict[str, str]:
    """The build stamp recorded for an engine: TensorRT version, GPU name, compute capability (as strings)."""
    stamp = {}
    for field, keys in STAMP_KEYS.items():
        for section in ("settings", "validation"):
            values = entry.get(section) or {}
            found = next((values[k] for k in keys if values.get(k) not in (None, "")), None)
            if found is not None:
                stamp[field] = ".".join(map(str, found)) if isinstance(found, (list, tuple)) else str(found)
                break
    return stamp


def stamp_problem(stamp: dict[str, str], tensorrt_version: str, gpu_name: str, compute_capability: str) -> str:
    """'' if an engine with ``stamp`` may run here, else the one-line reason it may not.

    TensorRT itself only warns (below rtool's log level) when an engine built on
    another GPU model of the same compute capability is loaded, and then runs
    kernels tuned for that other GPU: so the GPU name must match too.
    """
    missing = [STAMP_LABELS[field] for field in STAMP_KEYS if field not in stamp]
    if missing:
        return f"its manifest records no {' / '.join(missing)}; rebuild it with `rtool export --format tensorrt`"
    if stamp["tensorrt_version"] != tensorrt_version:
        return (
            f"it was built with TensorRT {stamp['tensorrt_version']} but this is TensorRT {tensorrt_version}; "
            f"rebuild the engine here with `rtool export --format tensorrt`"
        )
    if stamp["gpu_name"] != gpu_name or stamp["compute_capability"] != compute_capability:
        return (
            f"it was built on {stamp['gpu_name']} (compute capability {stamp['compute_capability']}) but this GPU "
            f"is {gpu_name} ({compute_capability}); TensorRT tunes an engine for one GPU model: rebuild it here "
            f"with `rtool export --format tensorrt`"
        )
    return ""


PRECISION_WORDS = (  # how the engine inspector names tensor types ("Row major linear FP16 format", "Float", ...)
    ("int8", "int8"),
    ("fp8", "fp8"),
    ("bf16", "bf16"),
    ("fp16", "fp16"),
    ("half", "fp16"),
    ("fp32", "fp32"),
    ("float", "fp32"),
    ("int32", "int32"),
)


def tensor_precision(text: str) -> str:
    """The precision in an inspector's "Format/Datatype" text ('Thirty-two wide channel ... Int8 format' -> 'int8')."""
    low = str(text).lower()
    return next((name for word, name in PRECISION_WORDS if word in low), "unknown")


def summarize_layers(info: str) -> dict[str, Any]:
    """What precision an engine's layers really run in, from the engine inspector's JSON.

    A convolution counts as INT8 when one of its inputs is an Int8 tensor (TensorRT fused the Q/DQ
    pair into an INT8 kernel); an FP32 or FP16 fallback shows as a float input.
    """
    try:
        layers = json.loads(info)["Layers"]
    except (ValueError, KeyError, TypeError):
        layers = None
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise BadInputError(
            "the engine holds no layer details (built without ProfilingVerbosity.DETAILED); rebuild it with "
            "`rtool export --format tensorrt`"
        )
    convolutions = [
        layer
        for layer in layers
        if layer.get("ParameterType") == "Convolution" or "Convolution" in str(layer.get("LayerType", ""))
    ]

    def input_precisions(layer: dict[str, Any]) -> list[str]:
        return [tensor_precision(t.get("Format/Datatype", "")) for t in layer.get("Inputs", []) if isinstance(t, dict)]

    int8 = [layer for layer in convolutions if "int8" in input_precisions(layer)]
    counts: dict[str, int] = {}
    for layer in layers:
        first = (input_precisions(layer) or ["unknown"])[0]
        counts[first] = counts.get(first, 0) + 1
    return {
        "layers": len(layers),
        "convolutions": len(convolutions),
        "int8_convolutions": len(int8),
        "not_int8": [str(layer.get("Name", "?"))[:120] for layer in convolutions if layer not in int8],
        "input_precisions": counts,
    }


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT8: torch.int8,
        trt.DataType.BOOL: torch.bool,
    }
    if dtype not in table:
        raise BadInputError(f"engine tensor type {dtype} is not supported by rtool's TensorRT runtime")
    return table[dtype]


@register_runtime
class TensorRTRuntime(Runtime):
    name = "tensorrt"
    suffixes = (".engine",)
    formats = ("tensorrt",)
    order = 40
    devices = ("cuda",)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        reasons = []
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            reasons.append(INSTALL_HINT)
        gpus, no_gpu = cuda_gpus()
        if not gpus:
            reasons.append(no_gpu)
        elif not reasons:
            import torch

            if not torch.cuda.is_available():
                reasons.append("PyTorch here cannot use the CUDA GPU (a CPU-only torch build?)")
        return (not reasons, "; ".join(reasons))

    def load(self, artifact_path: str | Path, device: str = "auto") -> None:
        import tensorrt as trt
        import torch

        path = self.expect_file(artifact_path)
        if parse_device(device)[0] == "cpu":
            raise UnavailableError("TensorRT runs on a CUDA GPU only; use --device auto, cuda or cuda:N")
        found = manifest_entry(path)
        if found is None:
            raise BadInputError(
                f"{path.name}: no manifest.json beside it lists this engine, so its TensorRT "
                f"version and GPU cannot be checked; rebuild it with `rtool export --format tensorrt`"
            )
        verify_sha256(path, found[1])  # an engine is executable code: run only the bytes the export wrote
        self.device = f"cuda:{cuda_index(device)}"
        torch.cuda.set_device(self.device)
        props = torch.cuda.get_device_properties(self.device)
        problem = stamp_problem(engine_stamp(found[1]), trt.__version__, props.name, f"{props.major}.{props.minor}")
        if problem:
            raise UnavailableError(f"refusing {path.name}: {problem}")
        self.card = card_beside(path)

        self._logger = trt.Logger(trt.Logger.ERROR)
        self._trt_runtime = trt.Runtime(self._logger)
        self.engine = self._trt_runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BadInputError(f"TensorRT could not deserialize {path.name}; the file may be corrupt, rebuild it")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BadInputError(
                f"{path.name} has {len(inputs)} inputs / {len(outputs)} outputs; rtool engines have one each"
            )
        self.input_name, self.output_name = inputs[0], outputs[0]
        static = tuple(self.engine.get_tensor_shape(self.input_name))
        if static[0] > 0:  # built without a dynamic batch: the profile is the fixed shape
            low = high = opt = static
        else:
            low, opt, high = (tuple(shape) for shape in self.engine.get_tensor_profile_shape(self.input_name, 0))
        self.min_batch, self.max_batch = int(low[0]), int(high[0])
        self.opt_shape = tuple(int(n) for n in opt)

        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.device)
        in_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        self.out_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.output_name))
        self.input_buffer = torch.empty(high, dtype=in_dtype, device=self.device)
        self.device = f"{self.device} ({props.name}, TensorRT {trt.__version__})"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        n = len(batch)
        rows = max(n, self.min_batch)  # a profile that starts above the batch: pad, then drop the padding
        with torch.cuda.stream(self.stream):
            x = self.input_buffer[:rows]
            x[:n].copy_(torch.from_numpy(batch), non_blocking=False)
            if rows > n:
                x[n:].zero_()
            if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
                raise BadInputError(
                    f"batch of {n} is outside the engine's profile ({self.min_batch}..{self.max_batch})"
                )
            out = torch.empty(
                tuple(self.context.get_tensor_shape(self.output_name)),
                dtype=self.out_dtype,
                device=self.input_buffer.device,
            )
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            result = out[:n].float().cpu()
        self.stream.synchronize()
        return result.numpy()

    def layer_report(self) -> dict[str, Any]:
        """The precision each layer runs in (engine inspector, at the profile's OPT shape); see summarize_layers."""
        import tensorrt as trt

        self.context.set_input_shape(self.input_name, self.opt_shape)  # formats show only for concrete shapes
        inspector = self.engine.create_engine_inspector()
        if hasattr(inspector, "execution_context"):  # TensorRT 10.x and 11
            inspector.execution_context = self.context
        else:  # earlier 10.x bindings named it `context`
            inspector.context = self.context
        return summarize_layers(inspector.get_engine_information(trt.LayerInformationFormat.JSON))

    def close(self) -> None:
        # Contexts before engines before the runtime: TensorRT's required destruction order.
        for attr in ("context", "engine", "_trt_runtime", "input_buffer"):
            if hasattr(self, attr):
                setattr(self, attr, None)
