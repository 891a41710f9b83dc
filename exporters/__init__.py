"""Export formats, one module each, registered by name.

Each format module defines ``export(model, card, out_dir, *, precision, **opts) -> Artifact``
and registers it with ``@register_exporter("name", precisions=(...))``. The
orchestration (checkpoint in, every requested format out, ``manifest.json``)
lives in ``exporters.pipeline``; adding a format touches one module and its test.

File names say what they are (see ``artifact_filename``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from toolkit.errors import BadInputError


@dataclass
class Artifact:
    """One exported file and what is known about it."""

    format: str  # "torchscript" | "pt2" | "onnx" | "tensorrt" | "checkpoint" | ...
    precision: str  # "fp32" | "fp16" | "int8"
    path: Path
    runtime: str  # the runtime that runs it: "eager", "torchscript", "pt2", "onnxruntime", "tensorrt"
    target: str | None = None  # for int8 ONNX: "cpu" or "tensorrt"
    settings: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)


class ExportFn(Protocol):
    def __call__(self, model: Any, card: Any, out_dir: Path, *, precision: str, **opts: Any) -> Artifact: ...


@dataclass(frozen=True)
class ExporterEntry:
    name: str
    export: ExportFn
    precisions: tuple[str, ...]
    available: Callable[[], tuple[bool, str]]


_REGISTRY: dict[str, ExporterEntry] = {}
PRECISIONS = ("fp32", "fp16", "int8")


def _always() -> tuple[bool, str]:
    return True, ""


def register_exporter(name: str, precisions: tuple[str, ...],
                      available: Callable[[], tuple[bool, str]] = _always) -> Callable[[ExportFn], ExportFn]:
    """Register a format; ``available()`` says (False, reason) where it cannot be built here."""
    def wrap(fn: ExportFn) -> ExportFn:
        _REGISTRY[name] = ExporterEntry(name, fn, precisions, available)
        return fn
    return wrap


def _load_all() -> None:
    import importlib

    for module in ("torchscript", "pt2", "onnx", "tensorrt", "triton"):
        try:
            importlib.import_module(f"exporters.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"exporters.{module}":
                raise


def list_formats() -> list[str]:
    _load_all()
    return list(_REGISTRY)


def get_exporter(name: str) -> ExporterEntry:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BadInputError(f"unknown format '{name}'; choose one of: {', '.join(_REGISTRY)}, all") from None


def artifact_filename(fmt: str, precision: str, target: str | None = None) -> str:
    """model.ts, model.pt2, model.onnx, model.fp16.onnx, model.int8-cpu.onnx, model.int8-trt.onnx, model.fp16.engine, ..."""
    if fmt == "triton":
        return "triton/"  # a model repository folder, one model per precision (exporters/triton.py)
    suffix = {"torchscript": "ts", "pt2": "pt2", "onnx": "onnx", "tensorrt": "engine", "checkpoint": "pt"}.get(fmt, fmt)
    tag = "" if precision == "fp32" and fmt != "tensorrt" else f".{precision}"
    if precision == "int8" and fmt == "onnx":
        tag = f".int8-{'trt' if target == 'tensorrt' else 'cpu'}"
    return f"model{tag}.{suffix}"
