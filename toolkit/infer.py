"""``rtool infer``: predict image classes with any runtime, optionally checked against a data set's labels.

MODEL may be a checkpoint, one exported file, or an export folder (its
manifest picks the file for ``runtime`` x ``precision``). Images are turned
into model input exactly as the ModelCard found in the model says; an image
of another size or colour mode is converted, and a note says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtimes import available, infer_in_batches, open_runtime, runtime_for_file
from runtimes.cards import manifest_entry, resolve_artifact
from toolkit.card import InputSpec, ModelCard
from toolkit.console import make_console
from toolkit.errors import BadInputError, UnavailableError
from toolkit.preprocess import conform_pixels, convert_image, normalize

GRID_LIMIT = 100  # images drawn in a --save-grid figure


@dataclass
class Prediction:
    source: str
    topk: list[tuple[str, float]]  # (class name, probability), best first
    actual: str | None = None

    @property
    def predicted(self) -> str:
        return self.topk[0][0]

    @property
    def probability(self) -> float:
        return self.topk[0][1]

    @property
    def correct(self) -> bool | None:
        return None if self.actual is None else self.predicted == self.actual


@dataclass
class InferResult:
    model_file: Path
    runtime: str
    precision: str | None
    device: str
    card: ModelCard
    predictions: list[Prediction]
    pixels: np.ndarray  # uint8 (N, C, H, W) as the model saw them (after conversion), for the grid
    notes: list[str] = field(default_factory=list)

    @property
    def correct(self) -> int:
        return sum(1 for p in self.predictions if p.correct)

    @property
    def labelled(self) -> int:
        return sum(1 for p in self.predictions if p.actual is not None)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_file": str(self.model_file),
            "runtime": self.runtime,
            "precision": self.precision,
            "device": self.device,
            "model": self.card.model,
            "class_names": self.card.class_names,
            "notes": self.notes,
            "predictions": [
                {
                    "index": i,
                    "source": p.source,
                    "predicted": p.predicted,
                    "probability": p.probability,
                    "topk": [{"class": c, "probability": pr} for c, pr in p.topk],
                    "actual": p.actual,
                    "correct": p.correct,
                }
                for i, p in enumerate(self.predictions)
            ],
            "correct": self.correct if self.labelled else None,
            "total": self.labelled if self.labelled else None,
            "accuracy": self.accuracy,
        }


def default_precision(runtime: str) -> str:
    """The first precision of the formats the runtime runs (fp16 for TensorRT engines), fp32 otherwise."""
    from exporters import precisions_of_runtime

    return precisions_of_runtime(runtime)[0]


def pick_model_file(
    model: str | Path,
    runtime: str | None = None,
    precision: str | None = None,
    target: str | None = None,
    provider: str | None = None,
    verify: bool = True,
) -> tuple[Path, str, str | None]:
    """(file, runtime, precision) for MODEL: a file as given, or the folder's file for runtime x precision
    (its sha256 checked against the folder's manifest unless ``verify`` is False)."""
    path = Path(model)
    if not path.exists():
        raise BadInputError(f"model {path} does not exist (give a checkpoint, an exported file or an export folder)")
    if path.is_dir():
        runtime = runtime or "onnxruntime"
        ok, reason = available(runtime)
        if not ok:
            raise UnavailableError(f"runtime '{runtime}' is not available here: {reason}")
        precision = precision or default_precision(runtime)
        if target is None and (runtime == "tensorrt" or (provider or "").lower() in ("tensorrt", "trt")):
            target = "tensorrt"
        return resolve_artifact(path, runtime, precision, target, verify=verify), runtime, precision
    runtime = runtime or runtime_for_file(path)
    if precision:  # a file is what it is: check the request against its manifest entry, if it has one
        entry = manifest_entry(path)
        recorded = entry[1].get("precision") if entry else None
        if recorded and precision != recorded:
            raise BadInputError(
                f"{path.name} is {recorded}, not {precision}; to pick a file by precision, "
                f"give the export folder {path.parent} instead"
            )
    return path, runtime, precision


def describe_image(mode: str, size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]} {mode}"


def load_images(paths: list[str | Path], spec: InputSpec) -> tuple[np.ndarray, list[str]]:
    """Image files -> uint8 (N, C, H, W) in the card's mode and size, and a note for each one converted."""
    from PIL import Image, UnidentifiedImageError

    arrays, notes = [], []
    wanted = describe_image(spec.color, (spec.width, spec.height))
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise BadInputError(
                f"image {path} {'is a folder' if path.is_dir() else 'does not exist'}; give image files"
            )
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # Pillow warns about damaged files: a note each, not a stack
                with Image.open(path) as image:
                    image.load()
                    found = describe_image(image.mode, image.size)
                    arrays.append(convert_image(image, spec))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
            reason = "not an image Pillow can read" if isinstance(e, UnidentifiedImageError) else str(e)[:120]
            raise BadInputError(f"{path} is not a usable image ({reason})") from None
        notes += [f"{path.name}: {warning.message}" for warning in caught]
        if found != wanted:
            notes.append(f"{path.name} is {found}; converted to {wanted} as the model card says")
    return np.stack(arrays), notes


def dataset_images(
    name: str, first: int, spec: InputSpec, card: ModelCard, data_dir: str | Path | None = None
) -> tuple[np.ndarray, list[str], list[str]]:
    """The first ``first`` test images of a data set in the card's shape, their class names, and notes."""
    from toolkit.data import load_dataset

    dataset = load_dataset(name, data_dir)
    total = len(dataset.test)
    if first > total:
        raise BadInputError(f"--first {first} is more than the {total} test images of {dataset.name}")
    if list(dataset.class_names) != list(card.class_names):
        raise BadInputError(
            f"{dataset.name}'s classes ({', '.join(dataset.class_names[:5])}, ...) are not the "
            f"model's ({', '.join(card.class_names[:5])}, ...); use the data set it was trained on"
        )
    labels = dataset.test.labels[:first].tolist()
    notes = []
    native = (dataset.channels, *dataset.image_size) if dataset.image_size else None
    if native != spec.shape:
        shape = "x".join(map(str, native)) + " (CxHxW)" if native else "files of their own sizes"
        notes.append(
            f"{dataset.name} images are {shape}; converted to {'x'.join(map(str, spec.shape))} as the model card says"
        )
    return dataset.test.pixels(np.arange(first), spec), [dataset.class_names[i] for i in labels], notes


def top_k(logits: np.ndarray, class_names: list[str], k: int) -> list[list[tuple[str, float]]]:
    """Softmax probabilities' k best (class, probability) per row."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(class_names[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]


def run_infer(
    model: str | Path,
    images: list[str | Path] | None = None,
    *,
    runtime: str | None = None,
    precision: str | None = None,
    target: str | None = None,
    provider: str | None = None,
    threads: int | None = None,
    device: str = "auto",
    dataset: str | None = None,
    first: int | None = None,
    topk: int = 1,
    data_dir: str | Path | None = None,
    verify: bool = True,
) -> InferResult:
    """Predict classes for image files or a data set's first test images.

    ``verify=False`` skips the sha256 check of a file picked from an export folder (``--no-verify``).
    """
    images = list(images or [])
    provider = None if provider in (None, "", "auto") else provider
    if dataset is None and not images:
        raise BadInputError("nothing to predict: give image files, or --dataset NAME --first N")
    if dataset is not None and images:
        raise BadInputError("give image files or --dataset, not both")
    if first is not None and dataset is None:
        raise BadInputError("--first needs --dataset")
    if topk < 1:
        raise BadInputError("--topk must be at least 1")

    model_file, runtime, precision = pick_model_file(model, runtime, precision, target, provider, verify)
    if provider and runtime != "onnxruntime":
        raise BadInputError(f"--provider is for the onnxruntime runtime; {runtime} runs where --device says")
    options = {k: v for k, v in (("provider", provider), ("threads", threads)) if v}
    with open_runtime(runtime, model_file, device, **options) as rt:
        card, spec = rt.card, rt.card.input
        notes = list(rt.notes)
        if dataset is not None:
            pixels, actual, more = dataset_images(dataset, first or 16, spec, card, data_dir)
            sources = [f"{dataset} test #{i}" for i in range(len(pixels))]
        else:
            pixels, more = load_images(images, spec)
            actual = [None] * len(pixels)
            sources = [Path(p).name for p in images]
        notes += more
        pixels = conform_pixels(pixels, spec)
        logits = infer_in_batches(rt, normalize(pixels, spec), batch_size=64)
        device_used = rt.device
    if logits.shape != (len(pixels), card.num_classes):
        raise BadInputError(
            f"{model_file.name} returned logits of shape {logits.shape}, but its card lists "
            f"{card.num_classes} classes; re-export the model"
        )
    ranked = top_k(logits, card.class_names, min(topk, card.num_classes))
    predictions = [Prediction(s, r, a) for s, r, a in zip(sources, ranked, actual)]
    return InferResult(model_file, runtime, precision, device_used, card, predictions, pixels, notes)


def save_grid(result: InferResult, out: str | Path, selection: str | None = None) -> Path:
    """A PNG grid of the images titled predicted / actual; wrong predictions in red. Written atomically.

    The title names the file's runtime and precision (with the INT8 target) and says which images these are:
    ``selection`` describes a hand-picked set (the demo's "32 evenly spaced test images + 7 mistakes"), whose
    count of correct ones is no accuracy; without it the images are the first of what was predicted.
    """
    from runtimes import artifact_label
    from toolkit.plots import GRID_LABEL_CHARS, image_grid, short_label

    count = min(len(result.predictions), GRID_LIMIT)
    shown = result.predictions[:count]
    titles, wrong = [], []
    for pred in shown:
        if pred.actual is None:
            titles.append(f"{short_label(pred.predicted, GRID_LABEL_CHARS - 6)} ({pred.probability:.0%})")
        else:
            titles.append(f"pred {short_label(pred.predicted)}\ntrue {short_label(pred.actual)}")
        wrong.append(pred.correct is False)
    found = manifest_entry(result.model_file) if result.precision == "int8" else None
    target = found[1].get("target") if found else None
    header = f"{result.model_file.name}: " + (
        artifact_label(result.runtime, result.precision, target) if result.precision else result.runtime
    )
    total, labelled = len(result.predictions), result.labelled
    if selection:
        about = f"{selection}: {result.correct}/{labelled} correct (a chosen sample, not the model's accuracy)"
    elif count < total:
        about = f"first {count} of {total} images shown"
        about += f"; {result.correct}/{labelled} correct on all {total}" if labelled else ""
    else:
        about = f"{total} images" + (f": {result.correct}/{labelled} correct" if labelled else "")
    return image_grid(result.pixels[:count], titles, wrong, f"{header}\n{about}", out)


def print_result(result: InferResult) -> None:
    """A table of predictions (and actual classes), then the accuracy."""
    from rich.table import Table

    labelled = result.labelled > 0
    precision = f" {result.precision}" if result.precision else ""
    console = make_console()
    console.print(f"{result.model_file.name}: {result.runtime}{precision} on {result.device}", highlight=False)
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("image")
    table.add_column("predicted")
    table.add_column("prob", justify="right")
    if len(result.predictions[0].topk) > 1:
        table.add_column("top-k")
    if labelled:
        table.add_column("actual")
        table.add_column("match")
    for i, p in enumerate(result.predictions):
        row = [str(i), p.source, p.predicted, f"{p.probability:.1%}"]
        if len(p.topk) > 1:
            row.append(", ".join(f"{c} {pr:.1%}" for c, pr in p.topk))
        if labelled:
            row += [p.actual or "", "[green]yes[/]" if p.correct else "[bold red]NO[/]"]
        table.add_row(*row)
    console.print(table)
    if labelled:
        console.print(f"accuracy: {result.correct}/{result.labelled} = {result.accuracy:.1%}")
