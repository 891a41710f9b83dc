"""Parity and bench results as a terminal table, Markdown, JSON and PNG; the demo's report page.

Every function takes finished results (ParityReport, BenchReport) and only
formats them, so the figures printed, written and plotted are the same numbers.
Files are written atomically.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

from rich.markup import escape

from runtimes import artifact_variant
from toolkit.bench import BenchReport
from toolkit.console import make_console
from toolkit.fileio import atomic_write_text
from toolkit.markdown import markdown_code, markdown_shell_block, markdown_table, markdown_text
from toolkit.parity import ParityReport, ParityRow

PARITY_COLUMNS = (
    "runtime",
    "precision",
    "artifact",
    "device",
    "status",
    "accuracy",
    "Δ acc (pts)",
    "agreement",
    "max abs diff",
    "mean abs diff",
    "latency (ms/batch)",
    "reason",
)
BENCH_COLUMNS = ("runtime", "precision", "batch", "p50 ms", "p90 ms", "p99 ms", "images/s")


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}%"


def _num(value: float | None, fmt: str = ".3g") -> str:
    return "" if value is None else format(value, fmt)


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def _precision_label(runtime: str, precision: str, target: str | None, fmt: str | None = None) -> str:
    variant = artifact_variant(runtime, precision, target, fmt)
    return f"{precision} ({variant})" if variant else precision


def _size_text(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def parity_cells(report: ParityReport) -> list[list[str]]:
    """Table rows as text: the eager reference first, then every compared row."""
    ref = report.reference
    cells = [
        [
            ref["runtime"] + (f" @{ref['machine']}" if ref.get("machine") else ""),
            ref["precision"],
            ref["artifact"],
            ref["device"],
            "reference",
            _pct(ref["accuracy"]),
            "",
            "",
            "",
            "",
            _num(ref["latency_ms"], ".1f"),
            "",
        ]
    ]
    for row in report.rows:
        cells.append(
            [
                row.runtime + (f" @{row.machine}" if row.machine else ""),
                _precision_label(row.runtime, row.precision, row.target, row.format),
                row.artifact or "",
                row.device or "",
                row.status,
                _pct(row.accuracy),
                _signed(row.accuracy_delta),
                _pct(row.agreement),
                _num(row.max_abs_diff),
                _num(row.mean_abs_diff),
                _num(row.latency_ms, ".1f"),
                row.reason,
            ]
        )
    return cells


def float_layer_lines(report: ParityReport) -> list[str]:
    """One line per INT8 file that keeps layers in float (written by --max-accuracy-drop)."""
    files = {row.artifact: row.float_layers for row in report.rows if row.float_layers and row.artifact}
    return [f"{name} keeps in float: {', '.join(layers)}" for name, layers in files.items()]


def thresholds_line(report: ParityReport) -> str:
    return "; ".join(f"{p}: {t.describe()}" for p, t in report.thresholds.items())


def parity_summary(report: ParityReport) -> str:
    ref = report.reference
    counts = {status: sum(1 for r in report.rows if r.status == status) for status in ("ok", "failed", "unavailable")}
    verdict = "PASSED" if report.passed else "FAILED"
    found = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    return f"parity {verdict}: {found} (against eager fp32 on {ref['images']} {ref['dataset']} test images)"


def machines_line(report: ParityReport) -> str:
    """'' or, for a report that joins two machines' rows (--load-outputs), which machine each tag names."""
    return "; ".join(f"@{tag} = {machine}" for tag, machine in report.machines.items())


def _short_device(device: str | None) -> str:
    """'CPUExecutionProvider' -> 'CPU EP', for narrow terminals (files keep the full name)."""
    return (device or "").replace("ExecutionProvider", " EP")


def print_parity(report: ParityReport, console: Any = None) -> None:
    """A table that fits 80 columns (files, devices and reasons below it; every field is in the JSON/Markdown)."""
    from rich import box
    from rich.table import Table

    console = console or make_console()
    ref = report.reference
    table = Table(
        title=f"parity: {report.export_dir}, {ref['images']} {ref['dataset']} test images",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for column in ("runtime", "precision", "status", "accuracy", "Δ pts", "agree", "max Δ", "ms/batch"):
        text = column in ("runtime", "precision", "status")
        table.add_column(column, justify="left" if text else "right", no_wrap=True)
    style = {"ok": "green", "failed": "bold red", "unavailable": "yellow", "reference": "cyan"}
    rows = [None, *report.rows]
    for row, cells in zip(rows, parity_cells(report)):
        table.add_row(
            cells[0],
            cells[1].replace(" (tensorrt)", " (trt)"),
            f"[{style[cells[4]]}]{cells[4]}[/]",
            cells[5],
            cells[6],
            cells[7],
            "" if row is None else _num(row.max_abs_diff, ".2g"),
            cells[10],
        )
    console.print(table)
    files = ", ".join(f"{row.artifact} on {_short_device(row.device)}" for row in report.rows if row.device)
    console.print(f"  files: {ref['artifact']} on {ref['device']} (reference), {files}", markup=False, highlight=False)
    for reason in dict.fromkeys(f"{row.label}: {row.reason}" for row in report.rows if row.reason):
        console.print(f"  {reason}", markup=False, highlight=False)
    for line in float_layer_lines(report):
        console.print(f"  {line}", markup=False, highlight=False)
    if report.machines:
        console.print(f"  machines: {machines_line(report)}", markup=False, highlight=False)
    console.print(f"thresholds: {thresholds_line(report)}", highlight=False)
    console.print(("[green]" if report.passed else "[bold red]") + parity_summary(report) + "[/]", highlight=False)


def batch_words(reference: dict[str, Any]) -> str:
    """How the test images were batched: 'one batch of 60', 'batches of 100', 'batches of 100 (the last of 50)'."""
    images, size = int(reference["images"]), int(reference["batch_size"])
    if images <= size:
        return f"one batch of {images}"
    rest = images % size
    return f"batches of {size}" + (f" (the last of {rest})" if rest else "")


def parity_markdown(report: ParityReport, heading: str = "## Parity") -> str:
    ref = report.reference
    return (
        "\n\n".join(
            [
                heading,
                f"Reference: eager FP32 ({markdown_code(ref['artifact'])}) on {ref['images']} "
                f"{markdown_code(ref['dataset'])} test images, in {batch_words(ref)}; every runtime gets the same "
                f"preprocessed images in the same order.",
                markdown_table(PARITY_COLUMNS, parity_cells(report)),
                *[f"{markdown_text(line)}." for line in float_layer_lines(report)],
                *([f"Machines: {markdown_text(machines_line(report))}."] if report.machines else []),
                f"Thresholds: {markdown_text(thresholds_line(report))}.",
                f"**{markdown_text(parity_summary(report))}**",
            ]
        )
        + "\n"
    )


def bench_cells(report: BenchReport) -> list[list[str]]:
    return [
        [
            r.runtime,
            _precision_label(r.runtime, r.precision, r.target, r.format),
            str(r.batch),
            f"{r.p50_ms:.2f}",
            f"{r.p90_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.throughput:.1f}",
        ]
        for r in report.rows
    ]


def bench_settings_line(report: BenchReport) -> str:
    s = report.settings
    return (
        f"{report.model} {'x'.join(map(str, report.input_shape))}, {s['threads']} threads, {s['warmup']} warm-up "
        f"and {s['iters']} timed calls per runtime and batch size, interleaved; device {s['device']} "
        f"({s['machine']['cpu']}, {s['machine']['physical_cores']} physical cores, int8 dot product: "
        f"{s['machine'].get('int8_dot_product', 'unknown')})"
    )


def print_bench(report: BenchReport, console: Any = None) -> None:
    from rich import box
    from rich.table import Table

    console = console or make_console()
    table = Table(
        title=f"bench: {report.source}", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True
    )
    for column in BENCH_COLUMNS:
        table.add_column(column, justify="left" if column in ("runtime", "precision") else "right", no_wrap=True)
    for cells in bench_cells(report):
        table.add_row(*cells)
    console.print(table)
    console.print(bench_settings_line(report), highlight=False)
    for item in report.unavailable:
        console.print(
            f"[yellow]{item['runtime']} {item['precision']} unavailable:[/] {escape(item['reason'])}", highlight=False
        )
    for name, ratio in report.ratios(1).items():
        console.print(f"p50 at batch 1: {name} = {ratio:.2f}x", highlight=False)
    for line in fastest_lines(report):
        console.print(line, markup=False, highlight=False)


def fastest_lines(report: BenchReport, batch: int = 1) -> list[str]:
    """'fastest int8 at batch 1: openvino int8, p50 1.43 ms = 0.08x eager fp32', one per precision."""
    lines = []
    for precision, best in report.fastest(batch).items():
        versus = f" = {best['vs_eager']:.2f}x eager fp32" if best["vs_eager"] is not None else ""
        lines.append(f"fastest {precision} at batch {batch}: {best['label']}, p50 {best['p50_ms']:.2f} ms{versus}")
    return lines


def bench_markdown(report: BenchReport, heading: str = "## Benchmark") -> str:
    parts = [
        heading,
        markdown_text(bench_settings_line(report)) + ".",
        markdown_table(BENCH_COLUMNS, bench_cells(report)),
    ]
    ratios = report.ratios(1)
    if ratios:
        parts.append(
            "p50 ratios at batch 1: " + "; ".join(f"{markdown_text(k)} = {v:.2f}x" for k, v in ratios.items()) + "."
        )
    if report.fastest(1):
        parts.append("\n".join(f"- {markdown_text(line)}" for line in fastest_lines(report)))
    if report.unavailable:
        parts.append(
            "Not timed here: "
            + "; ".join(markdown_text(f"{u['runtime']} {u['precision']} ({u['reason']})") for u in report.unavailable)
            + "."
        )
    return "\n\n".join(parts) + "\n"


def write_json(path: str | Path, document: dict[str, Any]) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n")
    return path


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    atomic_write_text(path, text)
    return path


def _emit_json(target: str, document: dict[str, Any]) -> Path | None:
    """Write to a file, or print to stdout for '-'."""
    if target == "-":
        print(json.dumps(document, indent=2, allow_nan=False))
        return None
    return write_json(target, document)


def write_parity_files(
    report: ParityReport, json_file: str | None = None, markdown_file: str | None = None, plot_file: str | None = None
) -> list[Path]:
    """The requested outputs of a parity run; returns the files written."""
    written = [
        _emit_json(json_file, report.to_dict()) if json_file else None,
        write_text(markdown_file, parity_markdown(report)) if markdown_file else None,
        parity_plot(report, plot_file) if plot_file else None,
    ]
    return [p for p in written if p is not None]


def write_bench_files(
    report: BenchReport, json_file: str | None = None, markdown_file: str | None = None
) -> list[Path]:
    written = [
        _emit_json(json_file, report.to_dict()) if json_file else None,
        write_text(markdown_file, bench_markdown(report)) if markdown_file else None,
    ]
    return [p for p in written if p is not None]


REFERENCE_COLOR, PASSED_COLOR, FAILED_COLOR, OTHER_CHECK_COLOR = "#4c72b0", "#55a868", "#c44e52", "#dd8452"
AXIS_STEPS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)  # round numbers a zoomed percent axis may start at
FAILURE_NOTES = 6  # failed rows named under the parity plot


def zoomed_start(values: list[float]) -> float:
    """Where a percent axis that ends at 100 starts.

    0 when a value is below 50 (a broken row shows as broken). Otherwise a round number below the lowest value
    by at least that value's distance to 100, so every bar keeps a visible length and the bars rank the rows.
    """
    low = min(values)
    if low < 50:
        return 0.0
    raw = low - max(100.0 - low, 0.5)
    step = next((s for s in AXIS_STEPS if (100.0 - raw) / s <= 8), AXIS_STEPS[-1])
    return max(0.0, round(math.floor(raw / step + 1e-9) * step, 6))


def latency_label(reference: dict[str, Any]) -> str:
    """The latency axis's name, with the batch the images really came in (60 images make one batch of 60)."""
    images, size = int(reference["images"]), int(reference["batch_size"])
    if images <= size:
        return f"latency of one batch of {images} images (ms)"
    rest = images % size
    return f"mean latency per batch of {size} images (ms)" + (f"; the last held {rest}" if rest else "")


def _failed_check(row: ParityRow, check: str) -> bool:
    """Whether ``row`` broke the threshold named ``check`` ('agreement', 'accuracy drop', 'max abs diff')."""
    return any(item.startswith(check) for item in row.failed_thresholds)


def _check_colors(rows: list[ParityRow], check: str) -> list[str]:
    """Eager blue; then red where this check failed, orange where the row failed another check, else green."""
    return [REFERENCE_COLOR] + [
        FAILED_COLOR if _failed_check(r, check) else OTHER_CHECK_COLOR if r.status == "failed" else PASSED_COLOR
        for r in rows
    ]


def _percent_panel(
    ax: Any, values: list[float | None], colors: list[str], limits: list[float | None], name: str
) -> None:
    """Horizontal bars from 0 on an axis zoomed to where the values are; the axis start is in its label."""
    shown = [v for v in values + limits if v is not None]
    start = zoomed_start(shown) if shown else 0.0  # nothing measured: only the eager reference
    for i, (value, color) in enumerate(zip(values, colors)):
        if value is None:
            ax.text(start, i, " reference", va="center", fontsize=8, color=REFERENCE_COLOR)
            continue
        ax.barh(i, value, color=color)
        ax.text(value, i, f" {value:.2f}", va="center", fontsize=8)
    for i, limit in enumerate(limits):
        if limit is not None:
            ax.plot([limit], [i], marker="|", markersize=16, markeredgewidth=2, color="black")
    ax.set_xlim(start, 100)
    ax.set_xlabel(f"{name} (%); axis starts at {start:g}%" if start > 0 else f"{name} (%)")


def _failure_notes(fig: Any, report: ParityReport) -> None:
    """Each failed row and why, under the panels (the colours say which bar; this says which check)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    failed = [f"{row.label}: {row.reason}" for row in report.rows if row.status == "failed"]
    if len(failed) > FAILURE_NOTES:
        failed = failed[:FAILURE_NOTES] + [f"... and {len(failed) - FAILURE_NOTES} more (see parity.md)"]
    handles = [
        Patch(color=c, label=t)
        for c, t in (
            (REFERENCE_COLOR, "eager reference"),
            (PASSED_COLOR, "passed"),
            (FAILED_COLOR, "this check failed"),
            (OTHER_CHECK_COLOR, "row failed another check"),
        )
    ]
    handles.append(
        Line2D([], [], marker="|", markersize=12, markeredgewidth=2, color="black", linestyle="", label="threshold")
    )
    fig.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles), fontsize=8, frameon=False
    )
    if failed:
        fig.text(0.01, -0.1, "failed: " + "\n".join(failed), va="top", fontsize=8, color=FAILED_COLOR)


def parity_plot(report: ParityReport, path: str | Path) -> Path:
    """Accuracy, top-1 agreement with eager and latency for each measured row, coloured by the check that failed.

    Thresholds are drawn as black ticks: eager accuracy minus the allowed drop, and the minimum agreement.
    """
    from toolkit.plots import plain_text, save_figure

    with plain_text():
        import matplotlib.pyplot as plt

        measured: list[ParityRow] = [r for r in report.rows if r.accuracy is not None]
        ref = report.reference
        limits = [report.thresholds.get(r.precision) for r in measured]
        labels = ["eager fp32"] + [r.label for r in measured]
        fig, (acc_ax, agree_ax, lat_ax) = plt.subplots(1, 3, figsize=(15, 0.45 * len(labels) + 1.8), sharey=True)
        _percent_panel(
            acc_ax,
            [ref["accuracy"]] + [r.accuracy for r in measured],
            _check_colors(measured, "accuracy drop"),
            [None]
            + [None if t is None or t.accuracy_drop is None else ref["accuracy"] - t.accuracy_drop for t in limits],
            "test accuracy",
        )
        acc_ax.axvline(ref["accuracy"], color="black", linestyle="--", linewidth=1)
        acc_ax.set_title(f"accuracy on {ref['images']} {ref['dataset']} test images")
        _percent_panel(
            agree_ax,
            [None] + [r.agreement for r in measured],
            _check_colors(measured, "agreement"),
            [None] + [None if t is None else t.agreement for t in limits],
            "top-1 agreement",
        )
        agree_ax.set_title("same top-1 class as eager")
        latency = [ref["latency_ms"]] + [r.latency_ms for r in measured]
        lat_ax.barh(range(len(labels)), latency, color=[REFERENCE_COLOR] + ["#8c8c8c"] * len(measured))
        for i, value in enumerate(latency):
            lat_ax.text(value, i, f" {value:.1f}", va="center", fontsize=8)
        lat_ax.set(xlabel=latency_label(ref), title="latency", xlim=(0, 1.15 * max(latency)))
        acc_ax.set_yticks(range(len(labels)), labels)
        acc_ax.invert_yaxis()
        for ax in (acc_ax, agree_ax, lat_ax):
            ax.grid(axis="x", alpha=0.3)
        fig.suptitle(f"parity {'passed' if report.passed else 'FAILED'} against eager fp32")
        fig.tight_layout()
        _failure_notes(fig, report)
        return save_figure(fig, path, dpi=100)


@contextlib.contextmanager
def progress_bars(enabled: bool = True, console: Any = None) -> Iterator[Callable[[str, int, int], None]]:
    """A ``(label, advance, total)`` callback that keeps one rich progress bar per label."""
    if not enabled:
        yield lambda label, advance, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bars:
        tasks: dict[str, Any] = {}

        def update(label: str, advance: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bars.add_task(label, total=total)
            bars.update(tasks[label], advance=advance)

        yield update


def _link(path: str) -> str:
    """A relative link target, percent-encoded so spaces, brackets and parentheses cannot end it."""
    return quote(path, safe="/")


def demo_markdown(
    *,
    title: str,
    intro: str,
    training: dict[str, Any],
    curves: str | None,
    parity: ParityReport,
    parity_plot_file: str | None,
    bench: BenchReport | None,
    browser: tuple[str | None, str] | None = None,
    grid: str | None,
    grid_caption: str,
    exports: list[dict[str, Any]],
    timings: dict[str, float],
    commands: list[list[str]],
) -> str:
    """The demo's report page; image paths are relative to the page.

    ``intro`` is rtool's own Markdown; every other text may hold user input (paths, names) and is escaped.
    ``commands`` are argument lists, quoted for a POSIX shell in the "Reproduce" block.
    """
    parts = [f"# {markdown_text(title)}", intro]
    parts.append(
        "## Training\n\n" + "\n".join(f"- {markdown_text(k)}: {markdown_text(v)}" for k, v in training.items())
    )
    if curves:
        parts.append(f"![training curves]({_link(curves)})")
    rows = [
        [
            " + ".join([e["file"], *(c["file"] for c in e.get("companions", []))]),
            e["format"],
            _precision_label(e.get("runtime", ""), e["precision"], e.get("target")),
            e.get("runtime", ""),
            _size_text(e["size"] + sum(c["size"] for c in e.get("companions", []))),
        ]
        for e in exports
    ]
    parts.append("## Exported files\n\n" + markdown_table(("file", "format", "precision", "runtime", "size"), rows))
    parts.append(parity_markdown(parity).rstrip())
    if parity_plot_file:
        parts.append(f"![parity: accuracy, agreement and latency per runtime]({_link(parity_plot_file)})")
    if browser is not None:
        shot, caption = browser
        image = f"\n\n![the exported web page in headless Chromium]({_link(shot)})" if shot else ""
        parts.append(f"## In the browser\n\n{markdown_text(caption)}{image}")
    if bench is not None:
        parts.append(bench_markdown(bench).rstrip())
    if grid:
        parts.append(f"## Predictions\n\n{markdown_text(grid_caption)}\n\n![predicted vs actual]({_link(grid)})")
    parts.append("## Time\n\n" + "\n".join(f"- {markdown_text(k)}: {v:.1f} s" for k, v in timings.items()))
    parts.append("## Reproduce\n\n" + markdown_shell_block(commands))
    return "\n\n".join(parts) + "\n"
