"""Parity and bench results as a terminal table, Markdown, JSON and PNG; the demo's report page.

Every function takes finished results (ParityReport, BenchReport) and only
formats them, so the figures printed, written and plotted are the same numbers.
Files are written atomically.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.markup import escape

from toolkit.bench import BenchReport
from toolkit.console import make_console
from toolkit.fileio import atomic_path, atomic_write_text
from toolkit.parity import ParityReport, ParityRow

PARITY_COLUMNS = ("runtime", "precision", "artifact", "device", "status", "accuracy", "Δ acc (pts)", "agreement",
                  "max abs diff", "mean abs diff", "latency (ms/batch)", "reason")
BENCH_COLUMNS = ("runtime", "precision", "batch", "p50 ms", "p90 ms", "p99 ms", "images/s")


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}%"


def _num(value: float | None, fmt: str = ".3g") -> str:
    return "" if value is None else format(value, fmt)


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def _precision_label(runtime: str, precision: str, target: str | None) -> str:
    return f"{precision} ({target})" if target and precision == "int8" else precision


def parity_cells(report: ParityReport) -> list[list[str]]:
    """Table rows as text: the eager reference first, then every compared row."""
    ref = report.reference
    cells = [[ref["runtime"], ref["precision"], ref["artifact"], ref["device"], "reference", _pct(ref["accuracy"]),
              "", "", "", "", _num(ref["latency_ms"], ".1f"), ""]]
    for row in report.rows:
        cells.append([row.runtime, _precision_label(row.runtime, row.precision, row.target), row.artifact or "",
                      row.device or "", row.status, _pct(row.accuracy), _signed(row.accuracy_delta),
                      _pct(row.agreement), _num(row.max_abs_diff), _num(row.mean_abs_diff),
                      _num(row.latency_ms, ".1f"), row.reason])
    return cells


def thresholds_line(report: ParityReport) -> str:
    return "; ".join(f"{p}: {t.describe()}" for p, t in report.thresholds.items())


def parity_summary(report: ParityReport) -> str:
    ref = report.reference
    counts = {status: sum(1 for r in report.rows if r.status == status) for status in ("ok", "failed", "unavailable")}
    verdict = "PASSED" if report.passed else "FAILED"
    found = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    return f"parity {verdict}: {found} (against eager fp32 on {ref['images']} {ref['dataset']} test images)"


def _short_device(device: str | None) -> str:
    """'CPUExecutionProvider' -> 'CPU EP', for narrow terminals (files keep the full name)."""
    return (device or "").replace("ExecutionProvider", " EP")


def print_parity(report: ParityReport, console: Any = None) -> None:
    """A table that fits 80 columns (files, devices and reasons below it; every field is in the JSON/Markdown)."""
    from rich import box
    from rich.table import Table

    console = console or make_console()
    ref = report.reference
    table = Table(title=f"parity: {report.export_dir}, {ref['images']} {ref['dataset']} test images",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for column in ("runtime", "precision", "status", "accuracy", "Δ pts", "agree", "max Δ", "ms/batch"):
        text = column in ("runtime", "precision", "status")
        table.add_column(column, justify="left" if text else "right", no_wrap=True)
    style = {"ok": "green", "failed": "bold red", "unavailable": "yellow", "reference": "cyan"}
    rows = [None, *report.rows]
    for row, cells in zip(rows, parity_cells(report)):
        table.add_row(cells[0], cells[1].replace(" (tensorrt)", " (trt)"), f"[{style[cells[4]]}]{cells[4]}[/]",
                      cells[5], cells[6], cells[7], "" if row is None else _num(row.max_abs_diff, ".2g"), cells[10])
    console.print(table)
    files = ", ".join(f"{row.artifact} on {_short_device(row.device)}" for row in report.rows if row.device)
    console.print(f"  files: {ref['artifact']} on {ref['device']} (reference), {files}", markup=False,
                  highlight=False)
    for reason in dict.fromkeys(f"{row.label}: {row.reason}" for row in report.rows if row.reason):
        console.print(f"  {reason}", markup=False, highlight=False)
    console.print(f"thresholds: {thresholds_line(report)}", highlight=False)
    console.print(("[green]" if report.passed else "[bold red]") + parity_summary(report) + "[/]", highlight=False)


def _markdown_table(header: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def parity_markdown(report: ParityReport, heading: str = "## Parity") -> str:
    return "\n\n".join([
        heading,
        f"Reference: eager FP32 (`{report.reference['artifact']}`) on {report.reference['images']} "
        f"`{report.reference['dataset']}` test images, batches of {report.reference['batch_size']}; every runtime "
        f"gets the same preprocessed images in the same order.",
        _markdown_table(PARITY_COLUMNS, parity_cells(report)),
        f"Thresholds: {thresholds_line(report)}.",
        f"**{parity_summary(report)}**",
    ]) + "\n"


def bench_cells(report: BenchReport) -> list[list[str]]:
    return [[r.runtime, _precision_label(r.runtime, r.precision, r.target), str(r.batch), f"{r.p50_ms:.2f}",
             f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.throughput:.1f}"] for r in report.rows]


def bench_settings_line(report: BenchReport) -> str:
    s = report.settings
    return (f"{report.model} {'x'.join(map(str, report.input_shape))}, {s['threads']} threads, {s['warmup']} warm-up "
            f"and {s['iters']} timed calls per runtime and batch size, interleaved; device {s['device']} "
            f"({s['machine']['cpu']}, {s['machine']['physical_cores']} physical cores, int8 dot product: "
            f"{s['machine'].get('int8_dot_product', 'unknown')})")


def print_bench(report: BenchReport, console: Any = None) -> None:
    from rich.table import Table

    from rich import box

    console = console or make_console()
    table = Table(title=f"bench: {report.source}", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True)
    for column in BENCH_COLUMNS:
        table.add_column(column, justify="left" if column in ("runtime", "precision") else "right", no_wrap=True)
    for cells in bench_cells(report):
        table.add_row(*cells)
    console.print(table)
    console.print(bench_settings_line(report), highlight=False)
    for item in report.unavailable:
        console.print(f"[yellow]{item['runtime']} {item['precision']} unavailable:[/] {escape(item['reason'])}",
                      highlight=False)
    for name, ratio in report.ratios(1).items():
        console.print(f"p50 at batch 1: {name} = {ratio:.2f}x", highlight=False)


def bench_markdown(report: BenchReport, heading: str = "## Benchmark") -> str:
    parts = [heading, bench_settings_line(report) + ".", _markdown_table(BENCH_COLUMNS, bench_cells(report))]
    ratios = report.ratios(1)
    if ratios:
        parts.append("p50 ratios at batch 1: " + "; ".join(f"{k} = {v:.2f}x" for k, v in ratios.items()) + ".")
    if report.unavailable:
        parts.append("Not timed here: " + "; ".join(f"{u['runtime']} {u['precision']} ({u['reason']})"
                                                    for u in report.unavailable) + ".")
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


def write_parity_files(report: ParityReport, json_file: str | None = None, markdown_file: str | None = None,
                       plot_file: str | None = None) -> list[Path]:
    """The requested outputs of a parity run; returns the files written."""
    written = [_emit_json(json_file, report.to_dict()) if json_file else None,
               write_text(markdown_file, parity_markdown(report)) if markdown_file else None,
               parity_plot(report, plot_file) if plot_file else None]
    return [p for p in written if p is not None]


def write_bench_files(report: BenchReport, json_file: str | None = None,
                      markdown_file: str | None = None) -> list[Path]:
    written = [_emit_json(json_file, report.to_dict()) if json_file else None,
               write_text(markdown_file, bench_markdown(report)) if markdown_file else None]
    return [p for p in written if p is not None]


def parity_plot(report: ParityReport, path: str | Path) -> Path:
    """Accuracy (left, eager as a dashed line) and mean latency per batch (right) for each measured row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured: list[ParityRow] = [r for r in report.rows if r.accuracy is not None]
    ref = report.reference
    labels = ["eager fp32"] + [r.label for r in measured]
    accuracy = [ref["accuracy"]] + [r.accuracy for r in measured]
    latency = [ref["latency_ms"]] + [r.latency_ms for r in measured]
    colors = ["#4c72b0"] + ["#c44e52" if r.status == "failed" else "#55a868" for r in measured]
    fig, (acc_ax, lat_ax) = plt.subplots(1, 2, figsize=(11, 0.45 * len(labels) + 1.8))
    positions = range(len(labels))
    acc_ax.barh(positions, accuracy, color=colors)
    acc_ax.axvline(ref["accuracy"], color="black", linestyle="--", linewidth=1)
    low = min(accuracy)
    acc_ax.set_xlim(max(0.0, low - max(1.0, (100 - low) * 0.5)), 100)
    acc_ax.set(xlabel="test accuracy (%)", title=f"accuracy on {ref['images']} {ref['dataset']} images")
    lat_ax.barh(positions, latency, color=colors)
    lat_ax.set(xlabel=f"mean latency per batch of {ref['batch_size']} (ms)", title="latency")
    for ax in (acc_ax, lat_ax):
        ax.set_yticks(list(positions), labels)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    lat_ax.tick_params(labelleft=False)
    for i, value in enumerate(accuracy):
        acc_ax.text(value, i, f" {value:.2f}", va="center", fontsize=8)
    for i, value in enumerate(latency):
        lat_ax.text(value, i, f" {value:.1f}", va="center", fontsize=8)
    verdict = "passed" if report.passed else "FAILED"
    fig.suptitle(f"parity {verdict} (green ok, red failed, blue the eager reference)")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


@contextlib.contextmanager
def progress_bars(enabled: bool = True, console: Any = None) -> Iterator[Callable[[str, int, int], None]]:
    """A ``(label, advance, total)`` callback that keeps one rich progress bar per label."""
    if not enabled:
        yield lambda label, advance, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bars:
        tasks: dict[str, Any] = {}

        def update(label: str, advance: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bars.add_task(label, total=total)
            bars.update(tasks[label], advance=advance)

        yield update


def demo_markdown(*, title: str, intro: str, training: dict[str, Any], curves: str | None,
                  parity: ParityReport, parity_plot_file: str | None, bench: BenchReport | None,
                  grid: str | None, grid_caption: str, exports: list[dict[str, Any]], timings: dict[str, float],
                  commands: list[str]) -> str:
    """The demo's report page; image paths are relative to the page."""
    parts = [f"# {title}", intro]
    parts.append("## Training\n\n" + "\n".join(f"- {k}: {v}" for k, v in training.items()))
    if curves:
        parts.append(f"![training curves]({curves})")
    rows = [[e["file"], e["format"], _precision_label(e.get("runtime", ""), e["precision"], e.get("target")),
             e.get("runtime", ""), f"{e['size'] / 1e6:.2f} MB" if e["size"] >= 1e5 else f"{e['size'] / 1e3:.1f} kB"]
            for e in exports]
    parts.append("## Exported files\n\n" + _markdown_table(("file", "format", "precision", "runtime", "size"), rows))
    parts.append(parity_markdown(parity).rstrip())
    if parity_plot_file:
        parts.append(f"![parity: accuracy and latency per runtime]({parity_plot_file})")
    if bench is not None:
        parts.append(bench_markdown(bench).rstrip())
    if grid:
        parts.append(f"## Predictions\n\n{grid_caption}\n\n![predicted vs actual]({grid})")
    parts.append("## Time\n\n" + "\n".join(f"- {k}: {v:.1f} s" for k, v in timings.items()))
    parts.append("## Reproduce\n\n```\n" + "\n".join(commands) + "\n```")
    return "\n\n".join(parts) + "\n"
