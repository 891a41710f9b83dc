"""Export formats, one module each, registered by name: the registry is the one list of formats.

A format module declares everything about its format where it registers it:

    @register_exporter("torchscript", precisions=("fp32",), runtime="torchscript",
                       files={"fp32": "model.ts"})
    def export(model, card, out_dir, *, precision, target, context) -> Artifact: ...

its precisions, the file (or folder) each precision writes, the runtime that
runs those files, whether ``--format all`` includes it, its INT8 targets, its
typed options (dataclasses; CLI flags and validation come from them, see
``toolkit.flags``), ``available() -> (ok, reason)`` and, where a precision
needs something of this machine (bf16 needs a CPU that computes it),
``precision_available(precision) -> (ok, reason)``. Modules are found by
scanning this package, so adding a format is one new module here (and its
test); export, parity, bench, infer and the CLI read every list from here.
docs/extending.md walks through it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from toolkit.errors import BadInputError
from toolkit.plugins import load_registry

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
MAX_BATCH = 4096  # the largest batch every exported file takes (its dynamic batch axis stops here)
CHECKPOINT_FILE = "model.pt"  # the eager reference every export folder holds (written by the pipeline)
DEFAULT_BATCH_RANGE = "1:8:64"  # the batch range of TensorRT optimization profiles (engines and ONNX Runtime's)
T = TypeVar("T")


def parse_batch_range(text: str | None) -> tuple[int, int, int]:
    """'MIN:OPT:MAX' -> (min, opt, max) with 1 <= min <= opt <= max; 'N' alone means N:N:N."""
    text = (text or DEFAULT_BATCH_RANGE).strip()
    parts = text.split(":")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise BadInputError(f"--batch-range '{text}' is not MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX (e.g. 1:8:64)")
    return values  # type: ignore[return-value]


@dataclass
class Artifact:
    """One exported file and what is known about it."""

    format: str  # a registered format name, or "checkpoint" for model.pt
    precision: str  # "fp32" | "fp16" | "bf16" | "int8"
    path: Path
    runtime: str  # the runtime that runs it (a registered runtime, or an app/server such as "triton")
    target: str | None = None  # for int8 ONNX: "cpu" or "tensorrt"
    settings: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    # files that belong to ``path`` and are useless without it (an OpenVINO IR's .bin weights): each is
    # recorded in the manifest entry with its sha256 and checked with the file before it runs
    companions: list[Path] = field(default_factory=list)


@dataclass
class ExportContext:
    """What one export run shares between formats: typed options, a cache of built graphs, notes, data."""

    options: dict[type, Any] = field(default_factory=dict)  # one instance per options class
    cache: dict[Any, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # warnings for the user (e.g. random calibration)
    data_dir: str | None = None  # where the card's data set lives (validation and calibration images)

    def option(self, cls: type[T]) -> T:
        """The run's options of ``cls`` (its defaults when the run set none)."""
        if cls not in self.options:
            self.options[cls] = cls()
        return self.options[cls]

    def cached(self, key: tuple, build: Callable[[], T]) -> T:
        """``build()`` once per run: formats share the FP32 graph, calibration, reference logits."""
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]


class ExportFn(Protocol):
    """Write the format's file(s) at ``precision`` into ``out_dir``, each checked against eager first."""

    def __call__(
        self, model: Any, card: Any, out_dir: Path, *, precision: str, target: str | None, context: ExportContext
    ) -> Artifact | list[Artifact]: ...


def _always() -> tuple[bool, str]:
    return True, ""


def _every_precision(precision: str) -> tuple[bool, str]:
    return True, ""


@dataclass(frozen=True)
class ExporterEntry:
    """Everything rtool knows about a format; see the module docstring."""

    name: str
    export: ExportFn
    precisions: tuple[str, ...]
    runtime: str  # the runtime that runs its files ("triton": a server, not run by rtool)
    files: dict[str, str]  # precision (or "precision-target") -> file name written into the export folder
    in_all: bool = True  # written by --format all
    targets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # precision -> INT8 targets, default first
    options: tuple[type, ...] = ()  # typed option dataclasses its export reads
    available: Callable[[], tuple[bool, str]] = _always
    owns: tuple[str, ...] = ()  # extra regexes of names it writes (folders, variants), for safe clean-up
    # (ok, reason) per precision, where one needs more of this machine than the format does (bf16 compute)
    precision_available: Callable[[str], tuple[bool, str]] = _every_precision

    def filename(self, precision: str, target: str | None = None) -> str:
        key = f"{precision}-{target}" if target else precision
        if key not in self.files:
            raise BadInputError(
                f"{self.name} writes no {precision}{f' ({target})' if target else ''} file; "
                f"it exports {', '.join(self.precisions)}"
            )
        return self.files[key]

    def owned_patterns(self) -> list[re.Pattern[str]]:
        """Names of files this format writes: only such files are ever removed from an export folder."""
        names = [re.escape(name) for name in self.files.values() if not name.endswith("/")]
        return [re.compile(p) for p in (*names, *self.owns)]


_REGISTRY: dict[str, ExporterEntry] = {}


def register_exporter(
    name: str, *, precisions: tuple[str, ...], runtime: str, files: dict[str, str], **declared: Any
) -> Callable[[ExportFn], ExportFn]:
    """Register a format (see ExporterEntry for what may be declared); a name taken twice is refused."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(f"format '{name}': unknown precision {unknown[0]}; rtool knows {', '.join(PRECISIONS)}")

    def wrap(fn: ExportFn) -> ExportFn:
        if name in _REGISTRY and _REGISTRY[name].export is not fn:
            raise ValueError(
                f"format '{name}' is registered twice ({_REGISTRY[name].export.__module__} and "
                f"{fn.__module__}); pick another name"
            )
        _REGISTRY[name] = ExporterEntry(name, fn, tuple(precisions), runtime, dict(files), **declared)
        return fn

    return wrap


def load_all() -> None:
    """Import every module of this package once, so each format registers itself (and plugins theirs)."""
    load_registry(__name__, __path__)


def exporters() -> list[ExporterEntry]:
    load_all()
    return list(_REGISTRY.values())


def get_exporter(name: str) -> ExporterEntry:
    load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BadInputError(f"unknown format '{name}'; choose one of: {', '.join(_REGISTRY)}, all") from None


def precisions_of_runtime(runtime: str) -> tuple[str, ...]:
    """The precisions rtool exports for the files ``runtime`` runs, the first format's default first; fp32 if none."""
    found = [p for entry in exporters() if entry.runtime == runtime for p in entry.precisions]
    return tuple(dict.fromkeys(found)) or ("fp32",)


def all_targets() -> tuple[str, ...]:
    """Every INT8 target any format declares (for --target), default first."""
    found: dict[str, None] = {}
    for entry in exporters():
        for targets in entry.targets.values():
            found.update(dict.fromkeys(targets))
    return tuple(found)


def option_classes() -> list[type]:
    """Every typed options class a registered format reads, each once, in registration order."""
    return list(dict.fromkeys(cls for entry in exporters() for cls in entry.options))


def owned_patterns() -> list[re.Pattern[str]]:
    """Names any format (or the pipeline's checkpoint copy) writes."""
    return [re.compile(re.escape(CHECKPOINT_FILE)), *(p for e in exporters() for p in e.owned_patterns())]


def artifact_filename(fmt: str, precision: str, target: str | None = None) -> str:
    """The file a format writes at a precision: model.ts, model.fp16.onnx, model.int8-cpu.onnx, ..."""
    if fmt == "checkpoint":
        return CHECKPOINT_FILE
    return get_exporter(fmt).filename(precision, target)
