"""Runtimes, one module each, behind one small interface (Polygraphy-style runners).

    with open_runtime("onnxruntime", "export/model.onnx") as rt:
        logits = rt.infer(batch)          # float32 (N, C, H, W) -> float32 (N, classes)

A module subclasses ``Runtime``, declares what it runs (its name, the file
endings it opens, the exporter formats whose files it runs, its place in
report tables, its devices), implements ``load`` and ``_run`` and registers it
with ``@register_runtime``; modules are found by scanning this package, and
parity, bench, infer and eval take their lists from here. ``infer`` checks every batch against the ModelCard
(shape, dtype, NaN/Inf) before ``_run`` sees it. ``available(name)`` says
(False, reason) where a runtime cannot run here, so callers list it with the
reason instead of crashing deep inside. ``notes`` holds one-line remarks a
caller should show (e.g. a provider fallback).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from toolkit.card import ModelCard
from toolkit.devices import parse_device
from toolkit.errors import BadInputError, UnavailableError
from toolkit.plugins import load_registry


class Runtime:
    """Load an artifact, run float32 NCHW batches, return float32 logits."""

    name: str = ""
    suffixes: tuple[str, ...] = ()  # file endings this runtime opens, e.g. (".onnx",)
    formats: tuple[str, ...] = ()  # exporter formats whose files it runs ("checkpoint": model.pt)
    order: int = 100  # its place in parity and bench tables (lower first)
    devices: tuple[str, ...] = ("cpu",)  # where it can run: "cpu", "cuda"

    def __init__(self, **options: Any) -> None:
        check_threads(options.get("threads"))
        self.options = options
        self.card: ModelCard | None = None
        self.device: str = "cpu"  # what really runs it, e.g. "CPUExecutionProvider", "cuda:0"
        self.max_batch: int | None = None  # largest batch one call may take (engine profiles)
        self.notes: list[str] = []  # one-line remarks for the user (fallbacks, conversions)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return True, ""

    def load(self, artifact_path: str | Path, device: str = "auto") -> None:
        raise NotImplementedError

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, C, H, W) as the card says -> float32 (N, classes) logits."""
        checked = self.check_batch(batch)
        if len(checked) == 0:
            return np.zeros((0, self.card.num_classes if self.card else 0), dtype=np.float32)
        return np.ascontiguousarray(self._run(checked), dtype=np.float32)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def check_batch(self, batch: Any) -> np.ndarray:
        """The batch as C-contiguous float32, or a BadInputError saying what is wrong with it."""
        if not isinstance(batch, np.ndarray):
            raise BadInputError(f"{self.name}: expected a numpy array, got {type(batch).__name__}")
        if not np.issubdtype(batch.dtype, np.floating):
            raise BadInputError(
                f"{self.name}: expected float input, got {batch.dtype} "
                f"(turn pixels into model input with toolkit.preprocess.prepare_batch)"
            )
        if self.card is not None:
            expected = self.card.input.shape
            if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
                raise BadInputError(
                    f"{self.name}: batch has shape {tuple(batch.shape)}; the model takes "
                    f"(N, {', '.join(map(str, expected))}) (see toolkit.preprocess.prepare_batch)"
                )
        elif batch.ndim != 4:
            raise BadInputError(f"{self.name}: expected an (N, C, H, W) batch, got shape {tuple(batch.shape)}")
        if self.max_batch and len(batch) > self.max_batch:
            raise BadInputError(
                f"{self.name}: batch of {len(batch)} exceeds this model's limit of "
                f"{self.max_batch}; use runtimes.infer_in_batches"
            )
        if not np.isfinite(batch).all():
            bad = int(np.size(batch) - np.count_nonzero(np.isfinite(batch)))
            raise BadInputError(f"{self.name}: input holds {bad} NaN/Inf values; check the images or preprocessing")
        return np.ascontiguousarray(batch, dtype=np.float32)

    def expect_file(self, artifact_path: str | Path) -> Path:
        """The artifact as a Path, if it exists and has an ending this runtime opens."""
        path = Path(artifact_path)
        if not path.is_file():
            raise BadInputError(f"model file {path} does not exist")
        if self.suffixes and not path.name.endswith(self.suffixes):
            try:
                hint = f"; it opens with --runtime {runtime_for_file(path)}"
            except BadInputError:
                hint = ""
            raise BadInputError(f"{path.name} is not a {self.name} file (expected {' or '.join(self.suffixes)}){hint}")
        return path

    def close(self) -> None:
        """Release sessions and device memory; safe to call twice."""

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_REGISTRY: dict[str, type[Runtime]] = {}


def register_runtime(cls: type[Runtime]) -> type[Runtime]:
    """Register a Runtime subclass under its ``name``; a name taken twice is refused."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name].__qualname__ != cls.__qualname__:
        raise ValueError(
            f"runtime '{cls.name}' is registered twice ({_REGISTRY[cls.name].__module__} and "
            f"{cls.__module__}); pick another name"
        )
    _REGISTRY[cls.name] = cls
    return cls


def load_all() -> None:
    """Import every module of this package once, so each runtime registers itself (and plugins theirs)."""
    load_registry(__name__, __path__)


def list_runtimes() -> list[str]:
    """Every registered runtime, in table order."""
    load_all()
    return [cls.name for cls in sorted(_REGISTRY.values(), key=lambda c: (c.order, c.name))]


def runtimes_for_format(fmt: str) -> list[str]:
    """The registered runtimes that run files of an exporter format, in table order."""
    return [name for name in list_runtimes() if fmt in _REGISTRY[name].formats]


def get_runtime_class(name: str) -> type[Runtime]:
    load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BadInputError(f"unknown runtime '{name}'; choose one of: {', '.join(list_runtimes())}") from None


def available(name: str) -> tuple[bool, str]:
    """(True, "") if ``name`` can run on this machine, else (False, one-line reason)."""
    return get_runtime_class(name).available()


def runtime_for_file(path: str | Path) -> str:
    """The runtime that opens a file, by its ending (model.onnx -> onnxruntime)."""
    load_all()
    name = Path(path).name
    for runtime_name, cls in _REGISTRY.items():
        if any(name.endswith(s) for s in cls.suffixes):
            return runtime_name
    raise BadInputError(
        f"no runtime opens '{name}'; expected one of: {', '.join(s for c in _REGISTRY.values() for s in c.suffixes)}"
    )


def artifact_variant(runtime: str, precision: str, target: str | None = None, fmt: str | None = None) -> str:
    """What tells a file apart from the runtime's other files of one precision: the format, when the runtime
    runs several ('ort' beside 'onnx'), and the INT8 target ('cpu', 'tensorrt'); '' when nothing needs to."""
    load_all()
    parts = []
    if fmt and fmt in _REGISTRY.get(runtime, Runtime).formats[1:]:
        parts.append(fmt)
    if target and precision == "int8":
        parts.append(target)
    return ", ".join(parts)


def artifact_label(runtime: str, precision: str, target: str | None = None, fmt: str | None = None) -> str:
    """How reports name a file's row: 'onnxruntime int8 (cpu)', 'onnxruntime fp32 (ort)'."""
    variant = artifact_variant(runtime, precision, target, fmt)
    return f"{runtime} {precision}" + (f" ({variant})" if variant else "")


PROBABILITY_FLOOR = float(np.finfo(np.float32).tiny)  # the smallest probability a float32 model output can state


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """What a runtime returns for a model that ends in a softmax: log(p), floored at float32's smallest normal.

    That equals the logits up to a constant per row; parity compares it with the eager model's ``log_softmax``.
    """
    return np.log(np.maximum(probabilities, PROBABILITY_FLOOR)).astype(np.float32)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 log-probabilities of ``logits`` (computed in float64), floored as ``log_probabilities`` floors them."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    out = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return np.maximum(out, np.log(PROBABILITY_FLOOR)).astype(np.float32)


def run_torch_module(module: Any, batch: np.ndarray, device: str, kind: str) -> np.ndarray:
    """Logits of a loaded TorchScript or torch.export module; its interpreter's errors become one BadInputError.

    A graph or weights damaged in the file fail here rather than at load, so they are the file's fault, not rtool's.
    """
    import torch

    try:
        with torch.inference_mode():
            return module(torch.from_numpy(batch).to(device)).float().cpu().numpy()
    except RuntimeError as e:
        raise BadInputError(
            f"{kind} failed to run this model ({error_summary(e)}); the file may be corrupt, re-export it"
        ) from None


def error_summary(error: BaseException, limit: int = 140) -> str:
    """The first sentence of a library's error message, short enough for a one-line report."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
    sentence = text.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."


def cuda_index(device: str) -> int:
    """The CUDA device a 'cuda' / 'cuda:N' / 'auto' request means; UnavailableError if this machine lacks it."""
    _, index = parse_device(device)
    count, why = cuda_gpus()
    if index >= max(count, 1):
        raise UnavailableError(
            f"--device {device} asked for, but {why or f'this machine has {count} CUDA GPU(s) (0..{count - 1})'}"
        )
    return index


def resolve_device(device: str, threads: int | None = None) -> str:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> the torch device to use; UnavailableError if CUDA is asked for but absent.

    ``threads`` sets torch's CPU threads too: every PyTorch runtime takes the same option. On CUDA, TF32 is
    switched off: these runtimes are FP32 references, and TF32 convolutions differ from FP32 by about 1e-3.
    """
    import torch

    kind, _ = parse_device(device)
    if threads:
        torch.set_num_threads(int(threads))
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise UnavailableError(
            f"--device {device} asked for, but {cuda_gpus()[1] or 'CUDA is not usable'}; use --device cpu"
        )
    index = cuda_index(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return f"cuda:{index}"


def cuda_gpus() -> tuple[int, str]:
    """(number of CUDA GPUs, "" or why there are none), asked of the driver without loading any framework.

    A package that lists a CUDA provider or build is not proof of a GPU; the
    driver is (libcuda's cuInit + cuDeviceGetCount).
    """
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no CUDA GPU: no NVIDIA driver found"
    if libcuda.cuInit(0) != 0:
        return 0, "no CUDA GPU: the NVIDIA driver found no usable device"
    count = ctypes.c_int(0)
    if libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return 0, "no CUDA GPU"
    return count.value, ""


def cuda_device_name(index: int = 0) -> str:
    """The driver's name of CUDA device ``index`` ('NVIDIA H100 80GB HBM3'), without loading any framework."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no GPU"
    device, name = ctypes.c_int(0), ctypes.create_string_buffer(256)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGet(ctypes.byref(device), int(index)) != 0:
        return "no GPU"
    if libcuda.cuDeviceGetName(name, len(name), device) != 0:
        return "unknown GPU"
    return name.value.decode(errors="replace")


def available_memory() -> int:
    """Bytes of memory free for new work (MemAvailable), 0 where the system does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def check_threads(threads: int | None) -> int | None:
    """``threads`` if this machine can run that many (a count far above its CPUs only thrashes), else one line."""
    if threads is None:
        return None
    cpus = os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 4 * cpus:
        raise BadInputError(f"--threads must be 1..{4 * cpus} on this machine ({cpus} CPUs), got {threads}")
    return threads


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads counted once): the best intra-op thread count."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def open_runtime(name: str, artifact_path: str | Path, device: str = "auto", **options: Any) -> Runtime:
    """Check availability, construct and load; raises UnavailableError with the reason."""
    cls = get_runtime_class(name)
    ok, reason = cls.available()
    if not ok:
        raise UnavailableError(f"runtime '{name}' is not available here: {reason}")
    runtime = cls(**options)
    try:
        runtime.load(artifact_path, device)
    except BaseException:
        runtime.close()
        raise
    return runtime


def infer_in_batches(
    runtime: Runtime, batch: np.ndarray, batch_size: int | None = None, progress: Callable[[int], None] | None = None
) -> np.ndarray:
    """Run a large batch in pieces no larger than the runtime's limit (or ``batch_size``)."""
    step = min(x for x in (batch_size, runtime.max_batch, len(batch) or 1) if x)
    outputs = []
    for start in range(0, len(batch), step):
        outputs.append(runtime.infer(batch[start : start + step]))
        if progress:
            progress(min(step, len(batch) - start))
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)
