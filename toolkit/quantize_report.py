"""``rtool quantize-report``: the error each INT8 layer adds, and which layers to keep in float.

SOURCE is a checkpoint or an export folder (its ``model.pt``, quantized with
the settings its manifest records for the target unless flags say
otherwise). The model is quantized exactly as ``rtool export`` would, then
every weighted layer is measured alone against float on held-out test images
(``exporters.int8_sensitivity``), and the same search ``--max-accuracy-drop``
runs at export says which layers to keep in float: none when the full INT8
file already passes int8's parity thresholds with the budget. Output: a table
in the terminal, a JSON document and a PNG (layers in network order, the
ones to keep in float highlighted).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import BadInputError
from toolkit.fileio import atomic_write_text, ensure_writable_dir
from toolkit.manifest import read_manifest

REPORT_DIR = "quantize-report"
REPORT_FILES = ("sensitivity.json", "sensitivity.png")
WORST_SHOWN = 3  # the most harmful layers are marked even when none needs to stay in float


@dataclass
class QuantizeReport:
    source: str
    target: str
    settings: dict[str, Any]  # how the file was quantized (calibration, weights)
    held_out: str  # the images the drop is judged on
    thresholds: str  # what the file must keep: int8's parity thresholds with the budget
    full: dict[str, Any]  # the full INT8 file's figures on the held-out images
    layers: list[dict[str, Any]]  # one per weighted layer, in network order
    keep_float: list[str]  # the search's answer (module names), most sensitive first
    met: bool
    tries: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _manifest_options(folder: Path, target: str) -> dict[str, Any]:
    """The INT8 options an export folder's file of ``target`` was made with (empty when it has none)."""
    for entry in read_manifest(folder)["artifacts"]:
        if isinstance(entry, dict) and entry.get("precision") == "int8" and entry.get("target") == target:
            settings = entry.get("settings") or {}
            calibration = settings.get("calibration") or {}
            return {
                "calib_method": calibration.get("method"),
                "calib_size": calibration.get("images"),
                "per_channel": "per tensor" not in str(settings.get("weights", "")),
                "max_accuracy_drop": (settings.get("fallback") or {}).get("max_accuracy_drop"),
            }
    return {}


def resolve(source: str | Path, target: str) -> tuple[Path, dict[str, Any]]:
    """(the checkpoint to quantize, the options an export folder recorded for ``target``)."""
    from exporters import CHECKPOINT_FILE

    path = Path(source)
    if path.is_dir():
        checkpoint = path / CHECKPOINT_FILE
        if not checkpoint.is_file():
            raise BadInputError(f"{path} holds no {CHECKPOINT_FILE}; pass a checkpoint or an rtool export folder")
        return checkpoint, _manifest_options(path, target)
    if not path.is_file():
        raise BadInputError(f"{path} does not exist; pass a checkpoint (.pt) or an export folder")
    return path, {}


def quantize_report(
    source: str | Path, target: str = "cpu", data_dir: str | None = None, **option_values: Any
) -> QuantizeReport:
    """Measure every layer of ``source``'s INT8 file for ``target``; see the module docstring.

    ``option_values``: Int8Options and GateOptions fields (None: the export folder's, else the defaults).
    """
    from exporters import ExportContext
    from exporters.onnx import fp32_graph
    from exporters.onnx_int8 import TARGETS, Int8Options, fallback_plan, int8_limits, int8_settings, quantizer
    from exporters.pipeline import export_options
    from exporters.validation import held_out
    from toolkit.checkpoint import load_model

    if target not in TARGETS:
        raise BadInputError(f"unknown target '{target}'; choose one of: {', '.join(TARGETS)}")
    checkpoint, recorded = resolve(source, target)
    values = {**recorded, **{k: v for k, v in option_values.items() if v is not None}}
    context = ExportContext(options=export_options(values), data_dir=data_dir)
    model, card = load_model(checkpoint)
    held = held_out(model, card, context)
    q = quantizer(fp32_graph(model, card, context), card, target, context)
    full = q.build()
    budget = context.option(Int8Options).max_accuracy_drop
    rows, plan = fallback_plan(q, held, budget, full, rank_always=True)
    worst = {row.node for row in rows if row.node in plan.excluded}
    return QuantizeReport(
        source=str(source),
        target=target,
        settings={k: v for k, v in int8_settings(q).items() if k in ("calibration", "activations", "weights")},
        held_out=str(held[2]),
        thresholds=int8_limits(budget).describe(),
        full=plan.steps[0].figures,
        layers=[{**asdict(row), "keep_float": row.node in worst} for row in rows],
        keep_float=q.names(plan.excluded) if plan.met else [],
        met=plan.met,
        tries=[{"float_layers": s.float_layers, "passed": s.passed, "failed": s.broken} for s in plan.steps],
    )


def write_report(report: QuantizeReport, out: Path) -> dict[str, Path]:
    """``sensitivity.json`` and ``sensitivity.png`` into ``out`` (each written atomically)."""
    import json

    from toolkit.plots import sensitivity_plot

    out = ensure_writable_dir(out)
    files = {"json": out / REPORT_FILES[0], "plot": out / REPORT_FILES[1]}
    sensitivity_plot(report.layers, files["plot"], title=f"{report.source}: INT8 ({report.target}) per layer")
    report.files = {k: str(v) for k, v in files.items()}
    atomic_write_text(files["json"], json.dumps(report.to_dict(), indent=2) + "\n")
    return files


def default_out(source: str | Path) -> Path:
    """quantize-report/ inside an export folder, or beside a checkpoint."""
    path = Path(source)
    return (path if path.is_dir() else path.parent) / REPORT_DIR


def print_report(report: QuantizeReport, console: Any = None) -> None:
    """The per-layer table (worst highlighted), the full INT8 figures and the advice."""
    from rich import box
    from rich.table import Table

    from toolkit.console import make_console

    console = console or make_console(highlight=False)
    table = Table(title=f"INT8 ({report.target}) sensitivity of {report.source}", box=box.SIMPLE_HEAD)
    for column in ("#", "layer", "op", "output SQNR", "logits SQNR", "in full INT8", "rank"):
        table.add_column(column, justify="left" if column in ("layer", "op") else "right", no_wrap=True)
    for row in report.layers:
        style = "bold red" if row["keep_float"] else "yellow" if row["rank"] <= WORST_SHOWN else ""
        table.add_row(
            str(row["index"]),
            row["name"],
            row["op"],
            f"{row['output_sqnr']:.1f} dB",
            f"{row['logits_sqnr']:.1f} dB",
            f"{row['full_int8_sqnr']:.1f} dB",
            str(row["rank"]),
            style=style,
        )
    console.print(table)
    full = report.full
    console.print(
        f"full INT8 on {report.held_out}: agreement {100 * full['top1_agreement']:.2f}%, "
        f"accuracy {full.get('accuracy_delta', float('nan')):+.2f} points; must keep {report.thresholds}",
        markup=False,
    )
    if not report.met:
        console.print("[bold red]cannot be met even with every weighted layer in float[/]")
    elif report.keep_float:
        console.print(
            f"keep in float: {', '.join(report.keep_float)} ({len(report.layers) - len(report.keep_float)} of "
            f"{len(report.layers)} layers stay INT8)",
            markup=False,
        )
    else:
        console.print("keep in float: none (the full INT8 file passes)", markup=False)
