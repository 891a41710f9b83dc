"""The ``rtool`` command line: parse, call one function, print.

Every command's logic lives in a module that tests call directly. Errors the
user can fix arrive here as RtoolError and leave as one line and an exit code
(0 ok, 1 a check failed, 2 bad input).
"""

from __future__ import annotations

import json
import warnings

import click

from exporters import PRECISIONS
from toolkit import __version__
from toolkit.bench_config import BenchSettings
from toolkit.card import MAX_CLASSES
from toolkit.console import make_console
from toolkit.devices import DeviceSettings
from toolkit.errors import BadInputError, CheckFailedError
from toolkit.flags import click_options, from_values, given_on_command_line, run_command
from toolkit.study.config import DegradationConfig
from toolkit.train.config import LaunchConfig, TrainConfig

MAX_SHAPE_DIM = 1 << 20  # far above any image side or batch; beyond it sizes overflow, not describe a model
EPILOG_MODELS = """\b
Examples:
  rtool models
  rtool models --json
"""


class FormatOptionsCommand(click.Command):
    """A command whose format options and list of formats come from the exporter registry.

    They are read when the command parses or shows its help, not when rtool
    starts, so `rtool models` does not import every exporter.
    """

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not getattr(self, "formats_added", False):
            from exporters import exporters
            from exporters.pipeline import export_option_classes
            from toolkit.flags import click_params

            self.formats_added = True
            self.params.extend(click_params(export_option_classes()))
            rows = [
                f"  {e.name:<12} {','.join(e.precisions):<20} runs on {e.runtime}"
                f"{'' if e.in_all else ' (by name only, not in all)'}"
                for e in exporters()
            ]
            self.epilog = (self.epilog or "") + "\n\b\nFormats:\n" + "\n".join(rows)
        return super().get_params(ctx)


def warn_no_verify(export_dir: str) -> None:
    """--no-verify turns off a safety check: say so on every run, where a log keeps it."""
    click.echo(
        f"rtool: warning: --no-verify: files in {export_dir} are NOT checked against the sha256 in its "
        f"manifest.json; a changed or swapped file runs as is",
        err=True,
    )


def check_output_files(*flags: tuple[str, str | None]) -> None:
    """Refuse an output file whose folder cannot be written before the long work, not after it."""
    from pathlib import Path

    from toolkit.fileio import check_writable_dir

    for flag, name in flags:
        if name and name != "-":
            if Path(name).is_dir():
                raise BadInputError(f"{flag} {name} is a folder; give the name of a file to write")
            check_writable_dir(Path(name).parent, flag)


def parse_shape(text: str) -> tuple[int, ...]:
    """'1x3x224x224' -> (1, 3, 224, 224); every dimension a positive integer."""
    try:
        dims = tuple(int(p) for p in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a shape like 1x3x224x224") from None
    if not dims or any(d < 1 for d in dims):
        raise click.BadParameter(f"'{text}': every dimension must be a positive integer")
    if any(d > MAX_SHAPE_DIM for d in dims):
        raise click.BadParameter(f"'{text}': every dimension must be at most {MAX_SHAPE_DIM:,}")
    return dims


# export and bench: the input size of a model given by name (an export or checkpoint has its card's)
model_input_size_option = click.option(
    "--input-size",
    "--input-shape",
    "input_shape",
    default=None,
    help="With a model name: N, HxW or CxHxW (default: the model's own).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="rtool")
def cli() -> None:
    """rtool: train ResNet classifiers, export them to every runtime, and prove they agree.

    \b
    Quick start:
      rtool demo                      train, export, parity, bench, report (embedded MNIST)
      rtool train --out runs/r20      train resnet20 on the embedded data
      rtool export runs/r20/best.pt --format onnx
      rtool infer runs/r20/export --runtime onnxruntime --dataset mnist5k --first 16
    """


@cli.command(epilog=EPILOG_MODELS)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def models(as_json: bool) -> None:
    """List the registered models with parameters and GFLOPs at their default input.

    GFLOPs counts multiply-accumulates of convolutions and linear layers, the
    convention torchvision and timm use (ResNet-18 at 224x224: 1.81).
    """
    from toolkit.models.catalog import model_table

    rows = model_table()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="rtool models")
    for col in ("name", "family", "default input", "params (M)", "GFLOPs", "description"):
        table.add_column(col, justify="right" if col in ("params (M)", "GFLOPs") else "left")
    for r in rows:
        table.add_row(
            r["name"],
            r["family"],
            r["default_input"],
            f"{r['params'] / 1e6:.2f}",
            f"{r['gflops']:.3f}",
            r["description"],
        )
    make_console().print(table)


@cli.command(
    epilog="""\b
Examples:
  rtool summary resnet18 --input-size 1x224x224
  rtool summary resnet20 --input-size 32 --num-classes 100
  rtool summary resnet50 --input-size 8x3x224x224      a batch of 8
  rtool summary runs/r20/best.pt              the model card: classes, input, preprocessing, metrics
  rtool summary runs/r20/export --json
"""
)
@click.argument("model")
@click.option(
    "--input-size",
    "--input",
    "input_shape",
    default=None,
    help="N, HxW, CxHxW or NxCxHxW (default: the model's own, batch 1).",
)
@click.option(
    "--num-classes", type=click.IntRange(min=1), default=None, help="Classifier outputs (default: the model's own)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def summary(model: str, input_shape: str | None, num_classes: int | None, as_json: bool) -> None:
    """Walk MODEL layer by layer: output shape and parameters of each layer.

    MODEL is a model name (see `rtool models`), or a checkpoint, exported file
    or export folder: then its model card comes first (classes, input,
    preprocessing, training, metrics) and the walk runs on the card's input.
    """
    from toolkit.describe import looks_like_file

    if looks_like_file(model):
        if input_shape or num_classes:
            raise BadInputError(f"--input-size and --num-classes are for model names; the card of {model} sets both")
        return summarize_file(model, as_json)
    shape = parse_shape(input_shape) if input_shape else None
    if shape is not None and len(shape) > 4:
        raise click.BadParameter("--input-size takes N, HxW, CxHxW or NxCxHxW")
    from toolkit.models.catalog import model_summary  # after the checks: importing torch takes seconds

    result = model_summary(model, shape, num_classes)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    print_layers(model, result, make_console())


def print_layers(model: str, result: dict, console: object) -> None:
    """The layer walk as a table and its totals."""
    from rich.table import Table

    table = Table(title=f"{model} on input {result['input']}")
    for col in ("layer", "type", "output shape", "params"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for r in result["layers"]:
        table.add_row(r["name"], r["kind"], str(r["output_shape"]), f"{r['params']:,}")
    console.print(table)
    console.print(
        f"total params: {result['params']:,}   GFLOPs: {result['gflops']:.3f}   output: {result['output_shape']}"
    )


def summarize_file(path: str, as_json: bool) -> None:
    """`rtool summary FILE`: the layer walk on the card's input, then the card."""
    from toolkit.describe import describe_file, print_card

    card, layers, why_not = describe_file(path)
    if as_json:
        click.echo(json.dumps({"file": path, "card": card.to_dict(), "summary": layers, "note": why_not}, indent=2))
        return
    console = make_console(highlight=False)
    if layers:
        print_layers(card.model, layers, console)
    else:
        click.echo(f"rtool: note: no layer walk: {why_not}", err=True)
    print_card(path, card, console)


@cli.command(
    epilog="""\b
Examples:
  rtool infer runs/r20/best.pt digit.png
  rtool infer runs/r20/export/model.onnx a.png b.png --topk 3
  rtool infer runs/r20/export photos/ --csv predictions.csv --save-grid grid.png
  rtool infer runs/r20/export 'shots/**/*.jpg' --csv -          (quoted: rtool expands the glob)
  rtool infer runs/r20/export --runtime onnxruntime --precision int8 --dataset mnist5k --first 16
  rtool infer runs/r20/export --runtime torchscript --dataset mnist5k --first 32 --save-grid grid.png
  rtool infer runs/r20/export --provider cuda --threads 2 --json digit.png
"""
)
@click.argument("model")
@click.argument("images", nargs=-1)
@click.option(
    "--runtime",
    default=None,
    help="eager | torchscript | pt2 | onnxruntime | openvino | executorch | tensorrt "
    "(default: from the file type; onnxruntime for an export folder).",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="Pick the file of this precision from an export folder (default: the runtime's first, fp16 for tensorrt).",
)
@click.option(
    "--target",
    default=None,
    help="Which INT8 ONNX file: the --target it was exported for (cpu: U8S8 for ONNX Runtime; tensorrt: S8S8).",
)
@click.option(
    "--provider",
    type=click.Choice(["auto", "tensorrt", "cuda", "cpu"], case_sensitive=False),
    default=None,
    help="ONNX Runtime execution provider (default: the best usable one, TensorRT > CUDA > CPU).",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: physical cores).")
@click_options(DeviceSettings)
@click.option("--dataset", default=None, help="Predict a data set's test images and compare with their labels.")
@click.option("--first", type=click.IntRange(min=1), default=None, help="How many test images (default 16).")
@click.option("--data-dir", default=None, help="Folder of a downloaded data set (torchvision ones).")
@click.option("--topk", type=click.IntRange(min=1), default=1, show_default=True, help="Classes shown per image.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
@click.option(
    "--csv",
    "csv_file",
    default=None,
    metavar="FILE",
    help="Write one row per image: path, predicted class, probability, the other --topk classes ('-': stdout).",
)
@click.option(
    "--save-grid",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a PNG grid of the images labelled predicted/actual (wrong ones in red).",
)
@click.option(
    "--no-verify",
    is_flag=True,
    help="Run a file from an export folder even if it no longer matches "
    "the sha256 in its manifest.json (not recommended).",
)
def infer(
    model: str,
    images: tuple[str, ...],
    runtime: str | None,
    precision: str | None,
    target: str | None,
    provider: str | None,
    threads: int | None,
    device: str,
    dataset: str | None,
    first: int | None,
    data_dir: str | None,
    topk: int,
    as_json: bool,
    csv_file: str | None,
    save_grid: str | None,
    no_verify: bool,
) -> None:
    """Predict the class of IMAGES (or of a data set's first test images) with MODEL on any runtime.

    MODEL is a checkpoint, an exported file (.ts, .pt2, .onnx, .engine) or an
    export folder, where --runtime and --precision pick the file. IMAGES are
    image files, folders (searched with their sub-folders for .png, .jpg and
    other image files) or quoted globs ('shots/**/*.jpg'). Images are resized
    and converted as the model card says.
    """
    from toolkit import infer as inference
    from toolkit.report import progress_bars

    DeviceSettings(device)
    check_output_files(("--save-grid", save_grid), ("--csv", csv_file))
    if as_json and csv_file == "-":
        raise BadInputError("--json and --csv - both write to stdout; give --csv a file name")
    if no_verify:
        warn_no_verify(model)
    console = make_console(stderr=True)
    with progress_bars(console.is_terminal, console) as bars:  # a bar for a folder of images; none in a pipe or log
        result = inference.run_infer(
            model,
            list(images),
            runtime=runtime,
            precision=precision,
            target=target,
            provider=provider,
            threads=threads,
            device=device,
            dataset=dataset,
            first=first,
            topk=topk,
            data_dir=data_dir,
            verify=not no_verify,
            progress=bars,
        )
    for note in result.notes:
        click.echo(f"rtool: note: {note}", err=True)
    print_infer(result, as_json, csv_file, inference.save_grid(result, save_grid) if save_grid else None)


def print_infer(result: object, as_json: bool, csv_file: str | None, grid: object) -> None:
    """The predictions as a table, JSON or CSV (to stdout or a file written atomically), and what was written."""
    from toolkit import infer as inference

    if csv_file == "-":
        click.echo(inference.csv_text(result), nl=False)
    elif csv_file:
        inference.write_csv(result, csv_file)
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "grid": str(grid) if grid else None, "csv": csv_file}, indent=2))
    elif csv_file != "-":
        inference.print_result(result)
    for what, path in (("csv", csv_file), ("grid", grid)):
        if path and path != "-" and not as_json:
            click.echo(f"{what} written to {path}")


@cli.command(
    cls=FormatOptionsCommand,
    epilog="""\b
Examples:
  rtool export runs/r20/best.pt                        ONNX FP32 into runs/r20/export/
  rtool export runs/r20/best.pt --format all           every format and precision buildable here
  rtool export runs/r20/best.pt --format onnx --precision fp16,int8 --calib-size 512
  rtool export runs/r20/best.pt --format onnx --precision int8 --target tensorrt
  rtool export runs/r20/best.pt --format tensorrt --precision fp16,int8 --batch-range 1:16:64
  rtool export resnet18 --input-size 3x224x224 --num-classes 1000 --weights resnet18.pth
  rtool export runs/r20/best.pt --embed-preprocessing --embed-softmax   + model.raw-softmax.onnx for apps
  rtool export runs/r20/best.pt --format triton        Triton model repository in runs/r20/export/triton/
  rtool export runs/r20/best.pt --format web --precision fp32,int8   web page in runs/r20/export/web/
  rtool export runs/r20/best.pt --format openvino,ort --precision fp32,int8    OpenVINO IR and .ort files
  rtool export runs/r20/best.pt --format executorch --precision int8 --pte-max-batch 8
""",
)
@click.argument("source")
@click.option(
    "--format",
    "formats",
    default="onnx",
    show_default=True,
    help="A format name, a comma list, or all (the formats are listed below).",
)
@click.option(
    "--precision",
    "precisions",
    default=None,
    help=f"Comma list of {', '.join(PRECISIONS)} (default: each format's first; every one with --format all).",
)
@click.option(
    "--target",
    default=None,
    help="INT8 ONNX form: cpu = uint8/int8 for ONNX Runtime (default), tensorrt = symmetric int8 "
    "(--format all writes both).",
)
@click.option("--out", default=None, help="Output folder (default: export/ beside the checkpoint).")
@click.option("--data-dir", default=None, help="Folder of a downloaded data set (for calibration images).")
@model_input_size_option
@click.option(
    "--num-classes",
    type=click.IntRange(min=1, max=MAX_CLASSES),
    default=None,
    help="With a model name: classifier outputs.",
)
@click.option("--weights", default=None, help="With a model name: a torchvision-style state_dict (.pth).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def export(
    source: str,
    formats: str,
    precisions: str | None,
    target: str | None,
    out: str | None,
    data_dir: str | None,
    input_shape: str | None,
    num_classes: int | None,
    weights: str | None,
    as_json: bool,
    **option_values: object,
) -> None:
    """Export SOURCE to TorchScript, torch.export (pt2), ONNX (FP32/FP16/INT8), TensorRT engines and more.

    SOURCE is a checkpoint, or a model name (see `rtool models`) with
    --input-size/--num-classes and optionally --weights. Every file is checked
    against the eager model before it is written; the folder gets model.pt
    (the eager reference) and manifest.json (sha256, settings, model card).
    The options after --json belong to the formats that read them.
    """
    from exporters.pipeline import export_model

    shape = parse_shape(input_shape) if input_shape else None
    progress = None if as_json else (lambda message: click.echo(message, err=True))
    result = export_model(
        source,
        formats,
        precisions,
        out,
        target=target,
        input_shape=shape,
        num_classes=num_classes,
        weights=weights,
        data_dir=data_dir,
        progress=progress,
        **option_values,
    )
    for note in result.notes:
        click.echo(f"rtool: warning: {note}", err=True)
    print_export(result, as_json)
    if result.failed:
        raise CheckFailedError(f"kept by --keep-failed, marked failed in the manifest: {'; '.join(result.failed)}")


def print_export(result: object, as_json: bool) -> None:
    """The export's table (or JSON), what was skipped, removed and left."""
    from exporters.pipeline import summary_rows

    rows = summary_rows(result)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "manifest": str(result.manifest_path),
                    "artifacts": rows,
                    "skipped": result.skipped,
                    "removed": result.removed,
                    "left": result.left,
                },
                indent=2,
            )
        )
        return
    from rich.table import Table

    table = Table(title=f"exported to {result.manifest_path.parent}")
    for col in ("file", "format", "precision", "target", "size", "max abs diff", "top-1 agree", "gate"):
        table.add_column(col, justify="right" if col in ("size", "max abs diff", "top-1 agree") else "left")
    style = {"passed": "green", "failed": "bold red"}
    for r in rows:
        gate = r["gate"] or ""
        table.add_row(
            r["file"],
            r["format"],
            r["precision"],
            r["target"] or "",
            r["size_text"],
            "" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}",
            "" if r["top1_agreement"] is None else f"{r['top1_agreement']:.1%}",
            f"[{style[gate]}]{gate}[/] ({r['images']} images)" if gate in style else gate,
        )
    console = make_console()
    console.print(table)
    for r in rows:
        if r["float_layers"]:
            console.print(
                f"{r['file']}: kept in float: {', '.join(r['float_layers'])} ({r['int8_layers']})",
                markup=False,
                highlight=False,
            )
    for s in result.skipped:
        console.print(f"skipped {s['format']} {s['precision']}: {s['reason']}", markup=False, highlight=False)
    for name in result.removed:
        console.print(f"removed {name} (written by an export of another model)", markup=False, highlight=False)
    console.print(f"manifest: {result.manifest_path}", markup=False, highlight=False)


@cli.command(
    epilog="""\b
Examples:
  rtool train                                   resnet20 on the embedded mnist5k, into runs/resnet20-mnist5k
  rtool train --epochs 20 --out runs/r20
  rtool train --out runs/r20 --resume           continue a stopped run (Ctrl-C saves last.pt)
  rtool train --model plain20 --optimizer sgd --lr 0.05 --batch-size 128 --init xavier --out runs/p20
  rtool train --dataset cifar10 --data-dir ~/data --download --model resnet56 --epochs 60
  rtool train --nproc 2 --out runs/r20-ddp      DistributedDataParallel on 2 local processes
  torchrun --nproc-per-node 2 -m toolkit.train --out runs/r20-ddp
"""
)
@click_options(TrainConfig)
@click_options(LaunchConfig)
@click.pass_context
def train(ctx: click.Context, nproc: int, **options: object) -> None:
    """Train a model; writes best.pt, last.pt, metrics.csv/.jsonl and curves.png into the run folder.

    The defaults train resnet20 on the embedded mnist5k to about 98.4-98.7% test
    accuracy (12 epochs, batch 32, about three minutes on two CPU cores). Ctrl-C stops at the next batch
    and saves last.pt; --resume continues from there.
    """
    from toolkit.train.command import report, train_command

    report(train_command(options, given_on_command_line(ctx, options), nproc))


@cli.command(
    "eval",
    epilog="""\b
Examples:
  rtool eval runs/r20/best.pt
  rtool eval runs/r20/best.pt --json --out runs/r20/eval
  rtool eval runs/r20/export/model.onnx --dataset mnist5k
""",
)
@click.argument("model_file")
@click.option("--dataset", default=None, help="Data set whose test split is scored (default: the model card's).")
@click.option("--data-dir", default=None, help="Folder of a downloaded data set (torchvision ones).")
@click.option("--download", is_flag=True, help="Download the data set into --data-dir if it is missing.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Score only the first N test images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--runtime", default=None, help="Runtime to run the file with (default: by its ending).")
@click_options(DeviceSettings)
@click.option("--out", default=None, help="Folder for eval.json and confusion.png (default: eval/ beside the file).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def evaluate(
    model_file: str,
    dataset: str | None,
    data_dir: str | None,
    download: bool,
    limit: int | None,
    batch_size: int,
    runtime: str | None,
    device: str,
    out: str | None,
    as_json: bool,
) -> None:
    """Loss, accuracy (top-5 too, above 5 classes), per-class precision/recall/F1 and a confusion matrix.

    MODEL_FILE is scored on its data set's test split.

    MODEL_FILE is a checkpoint or any exported file a runtime opens.
    """
    from pathlib import Path

    from toolkit.evaluate import evaluate_file, print_eval, write_eval_outputs
    from toolkit.fileio import check_writable_dir

    DeviceSettings(device)
    eval_dir = check_writable_dir(out or Path(model_file).parent / "eval")
    result = evaluate_file(
        model_file,
        dataset,
        data_dir=data_dir,
        download=download,
        limit=limit,
        batch_size=batch_size,
        device=device,
        runtime=runtime,
    )
    files = write_eval_outputs(result, eval_dir)
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "files": {k: str(v) for k, v in files.items()}}, indent=2))
        return
    print_eval(result, model_file, files, make_console(highlight=False))


@cli.command(
    epilog="""\b
Examples:
  rtool compare runs/plain20 runs/plain56 runs/resnet20 runs/resnet56 --out degradation.png
"""
)
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", default="compare.png", show_default=True, help="PNG to write.")
@click.option("--title", default="", help="Figure title.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def compare(runs: tuple[str, ...], out: str, title: str, as_json: bool) -> None:
    """Plot the curves of several training RUNS (their folders) on one figure."""
    from toolkit.train import compare_runs

    rows = compare_runs(list(runs), out, title=title)
    if as_json:
        click.echo(json.dumps({"figure": out, "runs": rows}, indent=2))
        return
    for r in rows:
        click.echo(
            f"{r['run']}: {r['epochs']} epochs, best {r['split']} acc {100 * r['best_acc']:.2f}%, "
            f"final {100 * r['final_acc']:.2f}%, final train loss {r['final_train_loss']:.4f}"
        )
    click.echo(f"figure written to {out}")


@cli.group()
def study() -> None:
    """Reproduce the ResNet paper's experiments with ordinary rtool training runs."""


@study.command(
    "degradation",
    epilog="""\b
Examples:
  rtool study degradation                                   plain/resnet 20 and 56 on mnist5k
  rtool study degradation --depths 20,56,110 --epochs 6 --seeds 0,1
  rtool study degradation --dataset cifar10 --data-dir ~/data   the paper's CIFAR-10 setting, 164 epochs
  rtool study degradation --depths 20 --epochs 1 --train-limit 256 --test-limit 128 --out /tmp/trial
""",
)
@click_options(DegradationConfig)
def degradation(**options: object) -> None:
    """Train plain and residual nets of each depth with one recipe and seed set; draw and tabulate them.

    Every net gets the paper's recipe (SGD, batch 128, lr 0.1 divided by 10 at 50% and 75% of the epochs,
    weight decay 1e-4, momentum 0.9; on cifar10 also 4-pixel pad + crop + flip). Writes OUT/degradation.png
    (plain left, ResNet right: training error dashed, validation error bold), degradation.json and degradation.md.
    Each run is a run folder in OUT/runs: run the same command again to continue a stopped study.
    """
    import sys

    from toolkit.study.degradation import run_study

    result = run_study(DegradationConfig(**options), say=click.echo)
    if result.interrupted:
        click.echo(f"rtool: interrupted in {result.stopped_run}; run the same command again to continue", err=True)
        sys.exit(130)
    for net in result.nets:
        click.echo(
            f"{net['model']}: train error {net['final_train_error']:.2f}%, val error {net['final_val_error']:.2f}%, "
            f"{net['params']:,} parameters, {net['train_seconds_per_epoch']:.1f} s/epoch"
        )
    click.echo(f"wrote {', '.join(str(path) for path in result.files.values())}")


@cli.command(
    epilog="""\b
Examples:
  rtool parity runs/r20/export
  rtool parity runs/r20/export --markdown parity.md --json parity.json --plot parity.png
  rtool parity runs/r20/export --runtimes onnxruntime --precisions int8 --limit 500
  rtool parity runs/r20/export --threshold int8.agreement=99.5 --threshold int8.accuracy_drop=0.5
  rtool parity runs/r20/export --thresholds thresholds.toml --require tensorrt
  rtool parity runs/r20/export --save-outputs cpu.npz          on one machine, then on another:
  rtool parity runs/r20/export --load-outputs cpu.npz --require tensorrt
\b
Thresholds file (JSON, or TOML with one [precision] table each):
  {"fp32": {"agreement": 99.9, "max_abs_diff": 0.001}, "int8": {"agreement": 99.0, "accuracy_drop": 1.0}}
"""
)
@click.argument("export_dir")
@click.option("--dataset", default=None, help="Data set whose test split is used (default: the model card's).")
@click.option("--data-dir", default=None, help="Folder of a downloaded data set (torchvision ones).")
@click.option("--runtimes", default=None, help="Comma list of runtimes to compare (default: every one listed).")
@click.option("--precisions", default=None, help=f"Comma list of {', '.join(PRECISIONS)} (default: all).")
@click.option("--require", default=None, help="Comma list of runtimes that must run: unavailable counts as failed.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Use N evenly spaced test images (default: all)."
)
@click.option(
    "--thresholds",
    "thresholds_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSON or TOML file of thresholds per precision.",
)
@click.option(
    "--threshold",
    "threshold_flags",
    multiple=True,
    metavar="PRECISION.KEY=VALUE",
    help="Set one threshold (keys: agreement %, max_abs_diff x logit range, accuracy_drop points; "
    "'none' switches a check off). Repeatable; wins over the file.",
)
@click_options(DeviceSettings)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: physical cores).")
@click.option("--json", "json_file", default=None, metavar="FILE", help="Write the JSON document ('-': stdout).")
@click.option("--markdown", "markdown_file", default=None, metavar="FILE", help="Write a Markdown table.")
@click.option("--plot", "plot_file", default=None, metavar="FILE", help="Write a PNG of accuracy and latency.")
@click.option(
    "--save-outputs",
    default=None,
    metavar="FILE",
    help="Also write the reference and every row's logits to FILE (.npz, no pickle) for --load-outputs elsewhere.",
)
@click.option(
    "--load-outputs",
    default=None,
    metavar="FILE",
    help="Judge this machine's rows against the reference stored in FILE (saved on another machine with "
    "--save-outputs); the report shows both machines' rows.",
)
@click.option(
    "--no-verify", is_flag=True, help="Skip checking every file against the sha256 in manifest.json (not recommended)."
)
def parity(
    export_dir: str,
    dataset: str | None,
    data_dir: str | None,
    runtimes: str | None,
    precisions: str | None,
    require: str | None,
    limit: int | None,
    thresholds_file: str | None,
    threshold_flags: tuple[str, ...],
    device: str,
    threads: int | None,
    json_file: str | None,
    markdown_file: str | None,
    plot_file: str | None,
    save_outputs: str | None,
    load_outputs: str | None,
    no_verify: bool,
) -> None:
    """Check that every runtime x precision in EXPORT_DIR predicts what the eager model predicts.

    The eager FP32 model (model.pt) runs the model card's test set; every other
    file runs the same images in the same order. Exit 0 when every available
    row passes its precision's thresholds, 1 when one fails (the row says which
    threshold), 2 for bad input. Runtimes that cannot run here are listed with
    the reason; --require makes that a failure.
    """
    from toolkit import report as reporting
    from toolkit.errors import CheckFailedError
    from toolkit.parity import run_parity, verify_export
    from toolkit.thresholds import load_thresholds

    DeviceSettings(device)
    thresholds = load_thresholds(thresholds_file, threshold_flags)
    check_output_files(
        ("--json", json_file), ("--markdown", markdown_file), ("--plot", plot_file), ("--save-outputs", save_outputs)
    )
    if no_verify:
        warn_no_verify(export_dir)
    else:
        verify_export(export_dir)
    console = make_console(stderr=json_file == "-", highlight=False)
    with reporting.progress_bars(True, console) as bars:
        result = run_parity(
            export_dir,
            dataset=dataset,
            data_dir=data_dir,
            runtimes=[runtimes] if runtimes else None,
            precisions=[precisions] if precisions else None,
            require=[require] if require else None,
            limit=limit,
            thresholds=thresholds,
            device=device,
            threads=threads,
            progress=bars,
            verify=not no_verify,
            save_outputs=save_outputs,
            load_outputs=load_outputs,
        )
    reporting.print_parity(result, console)
    if save_outputs:
        console.print(f"wrote {save_outputs} (load it elsewhere with --load-outputs)")
    for path in reporting.write_parity_files(result, json_file, markdown_file, plot_file):
        console.print(f"wrote {path}")
    if not result.passed:
        raise CheckFailedError(f"parity failed: {result.failure_summary()}")


class Int8OptionsCommand(click.Command):
    """A command with the INT8 options and --gate-images of `rtool export`, read from their dataclasses when it
    parses or shows its help (importing the exporters takes seconds)."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not getattr(self, "int8_added", False):
            from exporters.onnx_int8 import Int8Options
            from exporters.validation import GateOptions
            from toolkit.flags import click_params

            self.int8_added = True
            params = click_params([Int8Options, GateOptions])
            self.params.extend(p for p in params if p.name != "keep_failed")
        return super().get_params(ctx)


@cli.command(
    "quantize-report",
    cls=Int8OptionsCommand,
    epilog="""\b
Examples:
  rtool quantize-report runs/r20/best.pt
  rtool quantize-report runs/r20/export --target tensorrt
  rtool quantize-report runs/p20/best.pt --no-per-channel --calib-size 8 --max-accuracy-drop 0.5
""",
)
@click.argument("source")
@click.option(
    "--target",
    type=click.Choice(["cpu", "tensorrt"]),
    default="cpu",
    show_default=True,
    help="Which INT8 form: cpu (U8S8, ONNX Runtime) or tensorrt (symmetric int8).",
)
@click.option("--data-dir", default=None, help="Folder of a downloaded data set (calibration and test images).")
@click.option("--out", default=None, help="Folder for sensitivity.json and .png (default: quantize-report/).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document instead of the table.")
@click.pass_context
def quantize_report(
    ctx: click.Context,
    source: str,
    target: str,
    data_dir: str | None,
    out: str | None,
    as_json: bool,
    **options: object,
) -> None:
    """Measure the error each INT8 layer of SOURCE adds and say which layers to keep in float.

    SOURCE is a checkpoint or an export folder (its model.pt, with the INT8 settings its manifest records unless
    flags say otherwise). Each weighted layer is quantized alone and compared with float on --gate-images held-out
    test images (SQNR of its output and of the logits, in dB: higher is better); the table and the plot list the
    layers in network order with the most harmful marked. "keep in float" is what `rtool export
    --max-accuracy-drop` would keep: the fewest layers with which the file passes int8's parity thresholds and
    the budget.
    """
    from pathlib import Path

    from toolkit import quantize_report as reporting

    given = given_on_command_line(ctx, options)
    result = reporting.quantize_report(source, target, data_dir, **{k: v for k, v in options.items() if k in given})
    files = reporting.write_report(result, Path(out) if out else reporting.default_out(source))
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    reporting.print_report(result)
    click.echo(f"wrote {files['json']} and {files['plot']}")


@cli.command(
    epilog="""\b
Examples:
  rtool bench runs/r20/export
  rtool bench runs/r20/export --runtimes eager,onnxruntime --precisions fp32,int8 --batch-sizes 1 --iters 200
  rtool bench resnet18 --input-size 224 --batch-sizes 1 --json bench.json
  rtool bench runs/r20/best.pt --threads 1
"""
)
@click.argument("source")
@click.option("--runtimes", default=None, help="Comma list of runtimes (default: every one available).")
@click.option("--precisions", default=None, help=f"Comma list of {', '.join(PRECISIONS)} (default: all).")
@click_options(BenchSettings)
@click_options(DeviceSettings)
@model_input_size_option
@click.option("--json", "json_file", default=None, metavar="FILE", help="Write the JSON document ('-': stdout).")
@click.option("--markdown", "markdown_file", default=None, metavar="FILE", help="Write a Markdown table.")
def bench(
    source: str,
    runtimes: str | None,
    precisions: str | None,
    device: str,
    input_shape: str | None,
    json_file: str | None,
    markdown_file: str | None,
    **timing: object,
) -> None:
    """Time p50/p90/p99 latency and throughput of every runtime x precision x batch size in one run.

    SOURCE is an export folder, a checkpoint, or a model name with
    --input-size (the last two are exported to a temporary folder first).
    Runtimes take turns in short blocks, so load from other processes
    reaches them alike and their ratios stay fair.
    """
    from toolkit import report as reporting
    from toolkit.bench import run_bench

    DeviceSettings(device)
    shape = parse_shape(input_shape) if input_shape else None
    check_output_files(("--json", json_file), ("--markdown", markdown_file))
    console = make_console(stderr=json_file == "-", highlight=False)
    with reporting.progress_bars(True, console) as bars:
        result = run_bench(
            source,
            from_values(BenchSettings, timing),
            runtimes=[runtimes] if runtimes else None,
            precisions=[precisions] if precisions else None,
            device=device,
            input_shape=shape,
            progress=bars,
            say=console.print,
        )
    reporting.print_bench(result, console)
    for path in reporting.write_bench_files(result, json_file, markdown_file):
        console.print(f"wrote {path}")


@cli.group()
def web() -> None:
    """The exported web page (`rtool export CHECKPOINT --format web`): preview it locally."""


@web.command(
    "serve",
    epilog="""\b
Examples:
  rtool web serve runs/r20/export/web          http://127.0.0.1:8000/
  rtool web serve runs/r20/export --port 9000  an export folder: its web/ page
""",
)
@click.argument("folder")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port on 127.0.0.1 (0: any free)."
)
def web_serve(folder: str, port: int) -> None:
    """Serve FOLDER's page on 127.0.0.1 until Ctrl-C: a plain static server, for a preview.

    Any static host serves the folder as well; it needs no special headers.
    """
    from runtimes.web_server import serve

    def announce(url: str, served: object) -> None:
        click.echo(f"serving {served} at {url} (Ctrl-C to stop)")

    serve(folder, port, announce)


@cli.command(
    epilog="""\b
Examples:
  rtool demo                       into runs/demo (a second run replaces it)
  rtool demo --out /tmp/demo
"""
)
@click.option("--out", default="runs/demo", show_default=True, help="Folder for the run, the export and the report.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Use --out even if it holds files no demo wrote (only the demo's own names are replaced).",
)
@click.option("--quiet", is_flag=True, help="Step lines and tables only, no progress bars.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, hidden=True)
@click.option("--train-limit", type=click.IntRange(min=1), default=None, hidden=True)
@click.option("--test-limit", type=click.IntRange(min=1), default=None, hidden=True)
@click.option("--gate-images", type=click.IntRange(min=1), default=None, hidden=True)
@click.option("--bench-iters", type=click.IntRange(min=1), default=30, hidden=True)
def demo(
    out: str,
    overwrite: bool,
    quiet: bool,
    epochs: int | None,
    train_limit: int | None,
    test_limit: int | None,
    gate_images: int | None,
    bench_iters: int,
) -> None:
    """Train resnet20 on the embedded mnist5k, export every format, check parity, bench, and write a report.

    Writes OUT/report.md with the training curves, the parity table and plot,
    the benchmark table and a predicted-vs-actual image grid. Exit 1 if parity fails.
    """
    from pathlib import Path

    from toolkit.demo import DemoConfig, run_demo

    run_demo(
        DemoConfig(
            out=Path(out),
            overwrite=overwrite,
            quiet=quiet,
            epochs=epochs,
            train_limit=train_limit,
            test_limit=test_limit,
            gate_images=gate_images,
            bench_iters=bench_iters,
        )
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the group; every error is one line and an exit code (``toolkit.flags.run_command``).

    ``argv`` (default: the process's arguments) lets tests run the real entry point in-process.
    """
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
    run_command(cli, argv, "rtool")


if __name__ == "__main__":
    main()
