"""The ``rtool`` command line: parse, call one function, print.

Every command's logic lives in a module that tests call directly. Errors the
user can fix arrive here as RtoolError and leave as one line and an exit code
(0 ok, 1 a check failed, 2 bad input).
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import click

from toolkit import __version__
from toolkit.errors import RtoolError

EPILOG_MODELS = """\b
Examples:
  rtool models
  rtool models --json
"""


def parse_shape(text: str) -> tuple[int, ...]:
    """'1x3x224x224' -> (1, 3, 224, 224); every dimension a positive integer."""
    try:
        dims = tuple(int(p) for p in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a shape like 1x3x224x224") from None
    if not dims or any(d < 1 for d in dims):
        raise click.BadParameter(f"'{text}': every dimension must be a positive integer")
    return dims


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
    from rich.console import Console
    from rich.table import Table

    table = Table(title="rtool models")
    for col in ("name", "family", "default input", "params (M)", "GFLOPs", "description"):
        table.add_column(col, justify="right" if col in ("params (M)", "GFLOPs") else "left")
    for r in rows:
        table.add_row(r["name"], r["family"], r["default_input"], f"{r['params'] / 1e6:.2f}",
                      f"{r['gflops']:.3f}", r["description"])
    Console().print(table)


@cli.command(epilog="""\b
Examples:
  rtool summary resnet18 --input 1x1x224x224
  rtool summary resnet20 --input 1x3x32x32 --num-classes 100
""")
@click.argument("model")
@click.option("--input", "input_shape", default=None, help="Input shape NxCxHxW (default: the model's own, batch 1).")
@click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Classifier outputs (default: the model's own).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def summary(model: str, input_shape: str | None, num_classes: int | None, as_json: bool) -> None:
    """Walk MODEL layer by layer: output shape and parameters of each layer."""
    from toolkit.models.catalog import model_summary

    shape = parse_shape(input_shape) if input_shape else None
    if shape is not None and len(shape) != 4:
        raise click.BadParameter("--input must have four dimensions, NxCxHxW")
    result = model_summary(model, shape, num_classes)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model} on input {result['input']}")
    for col in ("layer", "type", "output shape", "params"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for r in result["layers"]:
        table.add_row(r["name"], r["kind"], str(r["output_shape"]), f"{r['params']:,}")
    console = Console()
    console.print(table)
    console.print(f"total params: {result['params']:,}   GFLOPs: {result['gflops']:.3f}   output: {result['output_shape']}")


def main() -> None:
    """Entry point: run the group and turn known errors into one line and an exit code."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("rtool: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        command = click.get_current_context(silent=True)
        hint = f" (see `{command.command_path} --help`)" if command else " (see `rtool --help`)"
        click.echo(f"rtool: error: {e.format_message()}{hint}", err=True)
        sys.exit(2)
    except RtoolError as e:
        click.echo(f"rtool: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("rtool: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a bug, not bad input: one line, the traceback on request
        if os.environ.get("RTOOL_DEBUG"):
            raise
        click.echo(f"rtool: internal error: {e.__class__.__name__}: {e} (set RTOOL_DEBUG=1 for the traceback)", err=True)
        sys.exit(3)
    sys.exit(0)


if __name__ == "__main__":
    main()
