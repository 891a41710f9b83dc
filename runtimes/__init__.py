"""Runtimes, one module each, behind one small interface (Polygraphy-style runners).

    with open_runtime("onnxruntime", "export/model.onnx") as rt:
        logits = rt.infer(batch)          # float32 (N, C, H, W) -> float32 (N, classes)

A module subclasses ``Runtime`` and registers it with ``@register_runtime``.
``available(name)`` says (False, reason) where a runtime cannot run here, so
callers list it with the reason instead of crashing deep inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from toolkit.card import ModelCard
from toolkit.errors import BadInputError, UnavailableError


class Runtime:
    """Load an artifact, run float32 NCHW batches, return float32 logits."""

    name: str = ""
    suffixes: tuple[str, ...] = ()  # file endings this runtime opens, e.g. (".onnx",)

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.card: ModelCard | None = None
        self.device: str = "cpu"  # what really runs it, e.g. "CPUExecutionProvider", "cuda:0"
        self.max_batch: int | None = None  # largest batch one call may take (engine profiles)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return True, ""

    def load(self, artifact_path: str | Path, device: str = "auto") -> None:
        raise NotImplementedError

    def infer(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release sessions and device memory; safe to call twice."""

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_REGISTRY: dict[str, type[Runtime]] = {}


def register_runtime(cls: type[Runtime]) -> type[Runtime]:
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    import importlib

    for module in ("eager", "torchscript", "pt2", "onnxruntime", "tensorrt"):
        try:
            importlib.import_module(f"runtimes.{module}_runtime")
        except ModuleNotFoundError as e:
            if e.name != f"runtimes.{module}_runtime":
                raise


def list_runtimes() -> list[str]:
    _load_all()
    return list(_REGISTRY)


def get_runtime_class(name: str) -> type[Runtime]:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BadInputError(f"unknown runtime '{name}'; choose one of: {', '.join(_REGISTRY)}") from None


def available(name: str) -> tuple[bool, str]:
    """(True, "") if ``name`` can run on this machine, else (False, one-line reason)."""
    return get_runtime_class(name).available()


def runtime_for_file(path: str | Path) -> str:
    """The runtime that opens a file, by its ending (model.onnx -> onnxruntime)."""
    _load_all()
    name = Path(path).name
    for runtime_name, cls in _REGISTRY.items():
        if any(name.endswith(s) for s in cls.suffixes):
            return runtime_name
    raise BadInputError(f"no runtime opens '{name}'; expected one of: "
                        f"{', '.join(s for c in _REGISTRY.values() for s in c.suffixes)}")


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


def infer_in_batches(runtime: Runtime, batch: np.ndarray, batch_size: int | None = None,
                     progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Run a large batch in pieces no larger than the runtime's limit (or ``batch_size``)."""
    step = min(x for x in (batch_size, runtime.max_batch, len(batch) or 1) if x)
    outputs = []
    for start in range(0, len(batch), step):
        outputs.append(runtime.infer(batch[start:start + step]))
        if progress:
            progress(min(step, len(batch) - start))
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)
