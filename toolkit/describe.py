"""``rtool summary FILE``: what a checkpoint or exported model expects, read from its ModelCard.

The card says which classes the model predicts, the input it takes, how an
image becomes that input, how it was trained and what it scored; the layer
walk of ``toolkit.models.catalog`` then runs on the card's own input, class
count and model arguments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit.card import MANIFEST_NAME, InputSpec, ModelCard
from toolkit.errors import BadInputError

MODEL_SUFFIXES = (".pt", ".pth", ".ts", ".pt2", ".onnx", ".engine", ".plan")
CLASSES_SHOWN = 20  # more are shown as the first and last few
INPUT_KEYS = {"channels", "height", "width", "mean", "std", "color", "layout", "dtype", "scale"}


def looks_like_file(name: str) -> bool:
    """Whether ``rtool summary NAME`` means a file or folder rather than a model name (a registered model's name
    wins over a folder of that name in the current directory)."""
    if "/" in name or "\\" in name or name.lower().endswith(MODEL_SUFFIXES):
        return True
    from toolkit.models import list_models

    return Path(name).exists() and name not in list_models()


def read_any_card(path: str | Path) -> ModelCard:
    """The card of a checkpoint, an exported file, or an export folder (from its manifest)."""
    from runtimes.cards import card_from_json, read_card

    path = Path(path)
    if not path.exists():
        raise BadInputError(
            f"model file {path} does not exist (give a checkpoint, an exported file or an export folder)"
        )
    if path.is_dir():
        from toolkit.manifest import read_manifest

        if not (path / MANIFEST_NAME).is_file() and (path / "best.pt").is_file():
            raise BadInputError(
                f"{path} is a training run folder; give one of its checkpoints, e.g. {path / 'best.pt'}"
            )

        card = read_manifest(path).get("card")
        if not card:
            raise BadInputError(f"{path / MANIFEST_NAME} holds no model card; re-export with `rtool export`")
        return card_from_json(json.dumps(card) if isinstance(card, dict) else card, path / MANIFEST_NAME)
    return read_card(path)


def preprocessing(spec: InputSpec) -> str:
    """How an image becomes the model's input, in words, from the card (every other input field appended)."""
    mean = ", ".join(f"{m:g}" for m in spec.mean)
    std = ", ".join(f"{s:g}" for s in spec.std)
    extra = [f"{k}: {v}" for k, v in spec.to_dict().items() if k not in INPUT_KEYS]
    return "; ".join(
        [
            f"convert to {'grey (L)' if spec.channels == 1 else 'RGB'}",
            f"resize to {spec.width}x{spec.height} (bilinear, aspect ratio not kept)",
            f"x = (pixels / 255 - mean) / std with mean [{mean}], std [{std}]",
            *extra,
        ]
    )


def class_list(names: list[str]) -> str:
    if len(names) <= CLASSES_SHOWN:
        return f"{len(names)}: " + ", ".join(names)
    return f"{len(names)}: " + ", ".join(names[:10]) + ", ..., " + ", ".join(names[-3:])


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(v) for v in value)
    return str(value)


def card_rows(card: ModelCard) -> list[tuple[str, str]]:
    """(field, value) lines of a card, in the order a user reads them."""
    spec = card.input
    args = ", ".join(f"{k}={v}" for k, v in card.model_args.items())
    rows = [
        ("model", f"{card.model} ({args})" if args else card.model),
        ("data set", card.dataset or "not recorded"),
        ("classes", class_list(card.class_names)),
        ("input", f"{spec.channels}x{spec.height}x{spec.width} (CxHxW) per image, as a float32 NCHW batch"),
        ("preprocessing", preprocessing(spec)),
        ("output", card.output),
    ]
    for name, values in (("metrics", card.metrics), ("training", card.training)):
        if values:
            rows.append((name, _value(values)))
    rows.append(("versions", _value(card.versions) or "not recorded"))
    return rows


def describe_file(path: str | Path) -> tuple[ModelCard, dict[str, Any] | None, str]:
    """The card of ``path``, the layer walk of its model on the card's input (as `rtool summary MODEL` gives it),
    and, when rtool cannot build the card's model (a plugin's, not loaded here), why there is no walk."""
    from toolkit.models.catalog import model_summary

    card = read_any_card(path)
    args = {k: v for k, v in card.model_args.items() if k not in ("in_channels", "num_classes")}  # from the shape
    try:
        return card, model_summary(card.model, (1, *card.input.shape), card.num_classes, **args), ""
    except BadInputError as e:
        return card, None, str(e)


def print_card(path: str | Path, card: ModelCard, console: Any) -> None:
    """The card as a two-column table titled with the file."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"model card of {path}"), show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in card_rows(card):
        table.add_row(name, Text(value))  # as written: a class name's "[b]" is no markup
    console.print(table)
