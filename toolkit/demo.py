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
REPORT_FILES = (
    "report.md",
    "parity.json",
    "parity.md",
    "parity.png",
    "browser.png",
    "bench.json",
    "bench.md",
    "predictions.png",
)
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
    gate_images: int | None = None  # held-out images each FP16/INT8 file is gated on at export (None: the default)
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


def browser_screenshot(export_dir: Path, dataset: str, out: Path) -> tuple[Path | None, str]:
    """(PNG of the exported page classifying the first test image in headless Chromium, caption); (None, why not)."""
    from runtimes import available, open_runtime
    from runtimes.cards import resolve_artifact
    from toolkit.data import load_dataset
    from toolkit.preprocess import prepare_batch

    ok, why = available("browser")
    if not ok:
        return None, f"The browser runtime is unavailable here: {why}."
    try:
        path = resolve_artifact(export_dir, runtime="browser", precision="fp32")
    except BadInputError as e:
        return None, f"No web page to show: {e}."
    data = load_dataset(dataset)
    pixels, label = data.test.images[0].numpy(), data.class_names[int(data.test.labels[0])]
    with open_runtime("browser", path, "cpu") as runtime:
        runtime.infer(prepare_batch(pixels[None], runtime.card.input))  # warm-up: the first run sets up kernels
        shown = runtime.show(pixels, out)
    top = shown["top"][0]
    caption = (
        f"{path.parent.name}/{path.name} in headless {runtime.device}, classifying the first {dataset} test "
        f"image (label {label}) as the page classifies a chosen image: top class {top['name']} "
        f"({100 * top['probability']:.1f}%), {shown['ms']:.1f} ms in the model."
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


@dataclass
class DemoSteps:
    """The demo's six steps, each timed, printing to one console."""

    config: DemoConfig
    console: Any
    out: Path
    timings: dict[str, float] = field(default_factory=dict)

    def step(self, number: int, text: str) -> float:
        self.console.print(f"[bold cyan][{number}/6][/] {text}")
        return time.perf_counter()

    def train(self) -> Any:
        from toolkit.train import TrainConfig, run_training

        began = self.step(1, f"training {self.config.model} on {self.config.dataset}")
        options: dict[str, Any] = {
            "model": self.config.model,
            "dataset": self.config.dataset,
            "out": str(self.out / "train"),
            "overwrite": True,
            "quiet": self.config.quiet,
            "train_limit": self.config.train_limit,
        }
        if self.config.epochs is not None:
            options["epochs"] = self.config.epochs
        trained = run_training(TrainConfig(**options))
        if trained.interrupted or trained.best_path is None:
            raise BadInputError("training stopped before an epoch finished; run the demo again")
        self.timings["train"] = time.perf_counter() - began
        return trained

    def export(self, checkpoint: Path) -> Any:
        from exporters.pipeline import export_model

        began = self.step(2, "exporting every format and precision")
        print_line = lambda message: self.console.print(f"    {message}", markup=False)  # noqa: E731
        exported = export_model(
            checkpoint,
            "all",
            None,
            self.out / "export",
            progress=None if self.config.quiet else print_line,
            gate_images=self.config.gate_images,
        )
        for note in exported.notes:
            self.console.print(f"    [yellow]note:[/] {escape(note)}")
        for skipped in exported.skipped:
            print_line(f"skipped {skipped['format']} {skipped['precision']}: {skipped['reason']}")
        self.timings["export"] = time.perf_counter() - began
        return exported

    def parity(self) -> Any:
        from toolkit import report as reporting
        from toolkit.parity import run_parity

        began = self.step(3, "parity of every runtime against the eager model")
        with reporting.progress_bars(not self.config.quiet, self.console) as bars:
            parity = run_parity(self.out / "export", limit=self.config.test_limit, progress=bars)
        reporting.print_parity(parity, self.console)
        reporting.write_json(self.out / "parity.json", parity.to_dict())
        reporting.write_text(self.out / "parity.md", reporting.parity_markdown(parity))
        reporting.parity_plot(parity, self.out / "parity.png")
        self.timings["parity"] = time.perf_counter() - began
        return parity

    def browser(self) -> tuple[Path | None, str]:
        """The web page classifying a test image in headless Chromium, for the report (part of step 3)."""
        began = time.perf_counter()
        shot, caption = browser_screenshot(self.out / "export", self.config.dataset, self.out / "browser.png")
        self.console.print(f"    {caption}", markup=False)
        self.timings["browser screenshot"] = time.perf_counter() - began
        return shot, caption

    def bench(self) -> Any:
        from toolkit import report as reporting
        from toolkit.bench import bench_export_dir
        from toolkit.bench_config import BenchSettings

        sizes = ",".join(map(str, self.config.bench_batch_sizes))
        settings = BenchSettings(batch_sizes=sizes, warmup=self.config.bench_warmup, iters=self.config.bench_iters)
        began = self.step(4, f"benchmark at batch sizes {sizes.replace(',', ', ')}")
        with reporting.progress_bars(not self.config.quiet, self.console) as bars:
            bench = bench_export_dir(self.out / "export", settings, progress=bars)
        reporting.print_bench(bench, self.console)
        reporting.write_json(self.out / "bench.json", bench.to_dict())
        reporting.write_text(self.out / "bench.md", reporting.bench_markdown(bench))
        self.timings["bench"] = time.perf_counter() - began
        return bench

    def grid(self) -> tuple[Path, str]:
        began = self.step(5, "predicted vs actual images")
        grid, caption = prediction_grid(self.out / "export", self.config.dataset, self.out / "predictions.png")
        self.console.print(f"    {caption}", markup=False)
        self.timings["predictions"] = time.perf_counter() - began
        return grid, caption


def write_report(
    steps: DemoSteps,
    trained: Any,
    exported: Any,
    parity: Any,
    bench: Any,
    grid: tuple[Path, str],
    browser: tuple[Path | None, str],
) -> Path:
    """report.md: every figure of this run, with the commands that reproduce it step by step."""
    from toolkit import report as reporting

    config, out = steps.config, steps.out
    training = {
        "model": config.model,
        "data set": config.dataset,
        "epochs": len(trained.history),
        "best val accuracy": f"{100 * trained.best_acc:.2f}% (epoch {trained.best_epoch}; chose best.pt)",
        "test accuracy of best.pt": f"{100 * (trained.test or {}).get('test_acc', 0):.2f}% (scored once)",
        "training time": f"{trained.train_seconds:.1f} s",
        "checkpoint": "train/best.pt",
    }
    text = reporting.demo_markdown(
        title=f"rtool demo: {config.model} on {config.dataset}",
        intro=(
            "One command trained the model, exported it to every format and precision this machine can "
            "build, checked that every runtime predicts what the eager model predicts, and timed them. "
            "Every figure below was measured in this run."
        ),
        training=training,
        curves="train/curves.png" if (out / "train" / "curves.png").is_file() else None,
        parity=parity,
        parity_plot_file="parity.png",
        browser=(browser[0].name if browser[0] else None, browser[1]),
        bench=bench,
        grid=grid[0].name,
        grid_caption=grid[1],
        exports=json.loads(exported.manifest_path.read_text())["artifacts"],
        timings=steps.timings,
        commands=reproduce_commands(config, out),
    )
    return reporting.write_text(out / "report.md", text)


def run_demo(config: DemoConfig, console: Any = None) -> DemoResult:
    """Train, export, parity, bench, grid and report; see the module docstring."""
    out = Path(config.out)
    claim_folder(out, config.overwrite)
    steps = DemoSteps(config, console or make_console(highlight=False), out)
    started = time.perf_counter()
    trained = steps.train()
    exported = steps.export(trained.best_path)
    parity = steps.parity()
    browser = steps.browser()
    bench = steps.bench()
    grid = steps.grid()
    steps.step(6, "report")
    steps.timings["total"] = time.perf_counter() - started
    report_path = write_report(steps, trained, exported, parity, bench, grid, browser)
    summary = {
        "status": "done",
        "passed": parity.passed,
        "report": "report.md",
        "timings": steps.timings,
        "best_val_accuracy": trained.best_acc,
        "test_accuracy": (trained.test or {}).get("test_acc"),
        "failure": parity.failure_summary(),
    }
    atomic_write_text(out / MARKER, json.dumps(summary, indent=2) + "\n")
    steps.console.print(f"report: {report_path} ({steps.timings['total']:.0f} s in all)", markup=False)
    result = DemoResult(out, report_path, parity.passed, parity.failure_summary(), steps.timings)
    if not parity.passed:
        raise CheckFailedError(f"parity failed (report written to {report_path}): {result.failure}")
    return result
