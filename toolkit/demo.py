"""``rtool demo``: the whole life cycle on the embedded data, in one command and a few minutes.

Train resnet20 on mnist5k with the training defaults, export every format and
precision buildable here, check parity of every runtime against the eager
model, time them, draw predicted-vs-actual images, and write one Markdown
report that links every figure. The demo owns its output folder: running it
again replaces what the previous demo wrote there (and nothing else).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from toolkit.console import make_console
from toolkit.errors import BadInputError, CheckFailedError
from toolkit.fileio import atomic_write_text, ensure_writable_dir

MARKER = "demo.json"  # says "this folder is a demo's" and, when done, what it found
REPORT_FILES = ("report.md", "parity.json", "parity.md", "parity.png", "bench.json", "bench.md", "predictions.png")
OWNED = ("train", "export", *REPORT_FILES)
GRID_IMAGES = 32  # evenly spaced test images in the predictions grid (plus up to GRID_WRONG mistakes)
GRID_WRONG = 8
GRID_RUNTIME = ("onnxruntime", "int8")  # the most transformed file a CPU deployment would ship


@dataclass
class DemoConfig:
    out: Path = Path("runs/demo")
    model: str = "resnet20"
    dataset: str = "mnist5k"
    epochs: int | None = None  # None: the training default
    train_limit: int | None = None
    test_limit: int | None = None  # parity images (None: the whole test split)
    bench_batch_sizes: tuple[int, ...] = (1, 32)
    bench_warmup: int = 5
    bench_iters: int = 30
    overwrite: bool = False
    quiet: bool = False


@dataclass
class DemoResult:
    out: Path
    report: Path
    passed: bool
    failure: str
    timings: dict[str, float] = field(default_factory=dict)


def claim_folder(out: Path, overwrite: bool) -> None:
    """Make ``out`` the demo's folder, clearing the report files an earlier demo wrote; refuse someone else's.

    Nothing else is removed here: in ``train/`` training replaces only its own
    run files, and in ``export/`` an export removes only files its manifest
    proves rtool wrote, so files a user keeps in either stay where they are.
    """
    if out.is_file():
        raise BadInputError(f"--out {out} is a file; give a folder")
    ours = (out / MARKER).is_file()
    if out.is_dir() and any(out.iterdir()) and not ours and not overwrite:
        raise BadInputError(
            f"{out} holds files that no rtool demo wrote; choose another --out, or pass --overwrite "
            f"to let the demo replace its own files there ({', '.join(OWNED[:3])}, ...)"
        )
    ensure_writable_dir(out)
    for name in REPORT_FILES:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            raise BadInputError(
                f"{target} is a folder where the demo writes a file; move it away or choose another --out"
            )
        target.unlink(missing_ok=True)
    atomic_write_text(out / MARKER, json.dumps({"status": "running"}) + "\n")


def prediction_grid(export_dir: Path, dataset: str, out: Path) -> tuple[Path, str]:
    """A grid of evenly spaced test images plus some mistakes, predicted by ONNX Runtime INT8 (or FP32)."""
    from toolkit.data import load_dataset
    from toolkit.infer import run_infer, save_grid

    runtime, precision = GRID_RUNTIME
    manifest = json.loads((export_dir / "manifest.json").read_text())
    if not any(a.get("runtime") == runtime and a.get("precision") == precision for a in manifest["artifacts"]):
        precision = "fp32"
    total = len(load_dataset(dataset).test)
    result = run_infer(export_dir, runtime=runtime, precision=precision, dataset=dataset, first=total)
    spaced = set(np.linspace(0, total - 1, min(GRID_IMAGES, total)).round().astype(int).tolist())
    wrong = [i for i, p in enumerate(result.predictions) if p.correct is False][:GRID_WRONG]
    keep = sorted(spaced | set(wrong))
    shown = dataclasses.replace(result, predictions=[result.predictions[i] for i in keep], pixels=result.pixels[keep])
    added = len(keep) - len(spaced)
    save_grid(shown, out, selection=f"sample of {len(spaced)} evenly spaced test images + {added} mistakes")
    caption = (
        f"{runtime} {precision} on {total} {dataset} test images: {result.correct}/{result.labelled} correct "
        f"({100 * result.accuracy:.2f}%). The grid shows {len(spaced)} evenly spaced test images and "
        f"{len(wrong)} of the mistakes (red)."
    )
    return out, caption


def reproduce_commands(config: DemoConfig, out: Path) -> list[list[str]]:
    """The demo's steps as separate rtool commands (argument lists; the report quotes them for a shell)."""
    extra = []
    if config.epochs is not None:
        extra += ["--epochs", str(config.epochs)]
    if config.train_limit is not None:
        extra += ["--train-limit", str(config.train_limit)]
    export = str(out / "export")
    return [
        ["rtool", "train", "--out", str(out / "train"), *extra],
        ["rtool", "export", str(out / "train" / "best.pt"), "--format", "all", "--out", export],
        ["rtool", "parity", export],
        ["rtool", "bench", export, "--batch-sizes", ",".join(map(str, config.bench_batch_sizes))],
        [
            "rtool",
            "infer",
            export,
            "--precision",
            "int8",
            "--dataset",
            config.dataset,
            "--first",
            "32",
            "--save-grid",
            "grid.png",
        ],
    ]


def run_demo(config: DemoConfig, console: Any = None) -> DemoResult:
    """Train, export, parity, bench, grid and report; see the module docstring."""
    from exporters.pipeline import export_model
    from toolkit import report as reporting
    from toolkit.bench import bench_export_dir
    from toolkit.parity import run_parity
    from toolkit.train import TrainConfig, run_training

    console = console or make_console(highlight=False)
    out = Path(config.out)
    claim_folder(out, config.overwrite)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def step(number: int, text: str) -> float:
        console.print(f"[bold cyan][{number}/6][/] {text}")
        return time.perf_counter()

    began = step(1, f"training {config.model} on {config.dataset}")
    train_options: dict[str, Any] = {
        "model": config.model,
        "dataset": config.dataset,
        "out": str(out / "train"),
        "overwrite": True,
        "quiet": config.quiet,
        "train_limit": config.train_limit,
    }
    if config.epochs is not None:
        train_options["epochs"] = config.epochs
    training_config = TrainConfig(**train_options)
    trained = run_training(training_config)
    if trained.interrupted or trained.best_path is None:
        raise BadInputError("training stopped before an epoch finished; run the demo again")
    timings["train"] = time.perf_counter() - began

    began = step(2, "exporting every format and precision")
    say = (lambda message: None) if config.quiet else (lambda message: console.print(f"    {message}", markup=False))
    exported = export_model(trained.best_path, "all", None, out / "export", progress=say)
    for note in exported.notes:
        console.print(f"    [yellow]note:[/] {escape(note)}")
    for skipped in exported.skipped:
        console.print(f"    skipped {skipped['format']} {skipped['precision']}: {skipped['reason']}", markup=False)
    timings["export"] = time.perf_counter() - began

    began = step(3, "parity of every runtime against the eager model")
    with reporting.progress_bars(not config.quiet, console) as bars:
        parity = run_parity(out / "export", limit=config.test_limit, progress=bars)
    reporting.print_parity(parity, console)
    reporting.write_json(out / "parity.json", parity.to_dict())
    reporting.write_text(out / "parity.md", reporting.parity_markdown(parity))
    reporting.parity_plot(parity, out / "parity.png")
    timings["parity"] = time.perf_counter() - began

    began = step(4, f"benchmark at batch sizes {', '.join(map(str, config.bench_batch_sizes))}")
    with reporting.progress_bars(not config.quiet, console) as bars:
        bench = bench_export_dir(
            out / "export",
            batch_sizes=config.bench_batch_sizes,
            warmup=config.bench_warmup,
            iters=config.bench_iters,
            progress=bars,
        )
    reporting.print_bench(bench, console)
    reporting.write_json(out / "bench.json", bench.to_dict())
    reporting.write_text(out / "bench.md", reporting.bench_markdown(bench))
    timings["bench"] = time.perf_counter() - began

    began = step(5, "predicted vs actual images")
    grid, caption = prediction_grid(out / "export", config.dataset, out / "predictions.png")
    console.print(f"    {caption}", markup=False)
    timings["predictions"] = time.perf_counter() - began

    step(6, "report")
    timings["total"] = time.perf_counter() - started
    curves = out / "train" / "curves.png"
    final = trained.final
    training = {
        "model": config.model,
        "data set": config.dataset,
        "epochs": training_config.epochs,
        "best test accuracy": f"{100 * trained.best_acc:.2f}% (epoch {trained.best_epoch})",
        "final test accuracy": f"{100 * final.get('test_acc', 0):.2f}%",
        "training time": f"{trained.train_seconds:.1f} s",
        "checkpoint": "train/best.pt",
    }
    manifest = json.loads(exported.manifest_path.read_text())
    text = reporting.demo_markdown(
        title=f"rtool demo: {config.model} on {config.dataset}",
        intro=(
            "One command trained the model, exported it to every format and precision this machine can "
            "build, checked that every runtime predicts what the eager model predicts, and timed them. "
            "Every figure below was measured in this run."
        ),
        training=training,
        curves="train/curves.png" if curves.is_file() else None,
        parity=parity,
        parity_plot_file="parity.png",
        bench=bench,
        grid=grid.name,
        grid_caption=caption,
        exports=manifest["artifacts"],
        timings=timings,
        commands=reproduce_commands(config, out),
    )
    report_path = reporting.write_text(out / "report.md", text)
    summary = {
        "status": "done",
        "passed": parity.passed,
        "report": "report.md",
        "timings": timings,
        "best_test_accuracy": trained.best_acc,
        "failure": parity.failure_summary(),
    }
    atomic_write_text(out / MARKER, json.dumps(summary, indent=2) + "\n")
    console.print(f"report: {report_path} ({timings['total']:.0f} s in all)", markup=False)
    result = DemoResult(out, report_path, parity.passed, parity.failure_summary(), timings)
    if not parity.passed:
        raise CheckFailedError(f"parity failed (report written to {report_path}): {result.failure}")
    return result
