"""ONNX Runtime's mobile format (``model.ort``, ``model.int8-cpu.ort``): the flatbuffer a minimal ONNX Runtime
build (Android, iOS, embedded) loads.

Converted by ONNX Runtime's own tool (``onnxruntime.tools.convert_onnx_models_to_ort``,
the "Fixed" optimization style) from rtool's FP32 ONNX graph and its
calibrated Q/DQ graph for CPUs: the graph optimizations are applied once,
here, and saved, so a minimal build needs no optimizer. The tool leaves out
the x86-only NCHWc layout, so the file runs on ARM too. The card stays in the
model's metadata. The operators the file needs (what a minimal build must
include) are recorded in the manifest. Every file is checked as a flatbuffer
(``toolkit.safety.check_ort_file``) and run in the installed ONNX Runtime
against eager before it is written.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from importlib import metadata
from pathlib import Path

import torch

from exporters import Artifact, ExportContext, register_exporter
from exporters.onnx import onnx_graph
from exporters.onnx_common import OnnxOptions, run_onnxruntime, save_single_file
from exporters.onnx_int8 import Int8Options
from exporters.validation import compare, require_fp32_match, validation_data
from toolkit.card import ModelCard
from toolkit.errors import CheckFailedError
from toolkit.fileio import atomic_path
from toolkit.safety import check_ort_file

FILES = {"fp32": "model.ort", "int8": "model.int8-cpu.ort"}


def available() -> tuple[bool, str]:
    try:
        import onnxruntime.tools.convert_onnx_models_to_ort  # noqa: F401
    except ImportError:
        return False, "onnxruntime (with its tools) is not installed (pip install onnxruntime)"
    return True, ""


def onnxruntime_build() -> str:
    """'onnxruntime-gpu 1.31.1' or 'onnxruntime 1.31.1': which ONNX Runtime package converted and checked it."""
    for dist in ("onnxruntime-gpu", "onnxruntime"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return f"{dist} {metadata.version(dist)}"
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def required_operators(config: Path) -> dict[str, list[str]]:
    """The converter's operator list ('ai.onnx;18;Add,Conv' lines) as {'ai.onnx:18': ['Add', 'Conv']}."""
    found: dict[str, list[str]] = {}
    for line in config.read_text().splitlines():
        parts = line.strip().split(";")
        if len(parts) == 3 and not line.startswith("#"):
            found[f"{parts[0]}:{parts[1]}"] = sorted(parts[2].split(","))
    return found


def convert(onnx_path: Path, work: Path) -> tuple[Path, dict[str, list[str]]]:
    """(the .ort file, the operators it needs), from ONNX Runtime's converter run quietly in ``work``."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    logger = logging.getLogger("ort_format_model.utils")
    level = logger.level
    logger.setLevel(logging.WARNING)  # it logs the config file it wrote at INFO
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            convert_onnx_models_to_ort(onnx_path, work / "ort", optimization_styles=[OptimizationStyle.Fixed])
    except Exception as e:  # the converter raises ONNX Runtime's own errors
        raise CheckFailedError(f"ONNX Runtime could not convert the graph to its format ({e})") from None
    finally:
        logger.setLevel(level)
    name = onnx_path.stem
    return work / "ort" / f"{name}.ort", required_operators(work / "ort" / f"{name}.required_operators.config")


@register_exporter(
    "ort",
    precisions=("fp32", "int8"),
    runtime="onnxruntime",
    files=FILES,
    options=(OnnxOptions, Int8Options),
    available=available,
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
    """The ``.ort`` at ``precision`` (INT8: from the CPU Q/DQ graph), checked against eager before it is written."""
    batch, expected, source = validation_data(model, card, precision, context)
    proto, settings = onnx_graph(model, card, precision, context, "cpu" if precision == "int8" else None)
    path = Path(out_dir) / FILES[precision]
    with tempfile.TemporaryDirectory(prefix=".rtool-ort-", dir=out_dir) as work:
        onnx_path = Path(work) / "model.onnx"
        save_single_file(proto, onnx_path)
        converted, operators = convert(onnx_path, Path(work))
        with atomic_path(path) as tmp:
            tmp.write_bytes(converted.read_bytes())
            check_ort_file(tmp)
            stats = compare(expected, run_onnxruntime(tmp, batch, precision, ort_format=True), source)
            if precision == "fp32":
                require_fp32_match(path.name, stats, expected)
    settings.update(
        converter="onnxruntime.tools.convert_onnx_models_to_ort (style Fixed, optimization level all, no NCHWc)",
        checked_with=onnxruntime_build(),
        required_operators=operators,
    )
    return Artifact(
        format="ort", precision=precision, path=path, runtime="onnxruntime", settings=settings, validation=stats
    )
