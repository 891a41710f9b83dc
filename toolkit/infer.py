"""``rtool infer``: predict image classes with any runtime, optionally checked against a data set's labels.

MODEL may be a checkpoint, one exported file, or an export folder (its
manifest picks the file for ``runtime`` x ``precision``). Images are turned
into model input exactly as the ModelCard found in the model says; an image
of another size or colour mode is converted, and a note says so.
"""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtimes import available, infer_in_batches, open_runtime, runtime_for_file
from runtimes.cards import manifest_entry, resolve_artifact
from toolkit.card import InputSpec, ModelCard
from toolkit.console import make_console
from toolkit.errors import BadInputError, UnavailableError
from toolkit.imagefiles import MAX_IMAGE_PIXELS, find_images, shown, too_large
from toolkit.preprocess import conform_pixels, convert_image, normalize

GRID_LIMIT = 100  # images drawn in a --save-grid figure
BATCH = 64  # images read, converted and run at a time
NOTE_GROUPS = 3  # kinds of conversion (or Pillow warnings) named in the notes; the rest are counted
Progress = Callable[[str, int, int], None]  # (label, advance, total), as toolkit.report.progress_bars gives


@dataclass
class Prediction:
    source: str  # the image file (as given, or found in a folder or by a glob), or "mnist5k test[7]"
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
    pixels: np.ndarray  # uint8 (N, C, H, W) as the model saw them (after conversion), for the grid: from files,
    # only the first GRID_LIMIT are kept
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


def read_image(path: Path, spec: InputSpec) -> tuple[np.ndarray, str, list[str]]:
    """One file -> uint8 (C, H, W) in the card's mode and size, what it was ("45x30 RGBA"), Pillow's warnings.

    A picture above MAX_IMAGE_PIXELS is refused from its header, before any pixel is decoded.
    """
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise BadInputError(
            f"image {shown(path)} {'is a folder' if path.is_dir() else 'does not exist'}; give image files"
        )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # Pillow warns about damaged files: a note, not a stack
            with Image.open(path) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise too_large(path, image.size)
                image.load()
                found = describe_image(image.mode, image.size)
                array = convert_image(image, spec)
    except Image.DecompressionBombError:
        raise too_large(path, None) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = "not an image Pillow can read" if isinstance(e, UnidentifiedImageError) else str(e)[:120]
        raise BadInputError(f"{shown(path)} is not a usable image ({shown(reason)})") from None
    return array, found, [shown(w.message) for w in caught]


def summarise_reads(reads: list[tuple[Path, str, list[str]]], spec: InputSpec) -> list[str]:
    """A few note lines for many images: those converted to the card's size and mode, grouped by what they
    were, and Pillow's warnings, grouped by message. ``reads`` holds (file, what it was, warnings)."""
    wanted = describe_image(spec.color, (spec.width, spec.height))
    converted: dict[str, list[Path]] = {}
    warned: dict[str, list[Path]] = {}
    for path, found, messages in reads:
        if found != wanted:
            converted.setdefault(found, []).append(path)
        for message in dict.fromkeys(messages):
            warned.setdefault(message, []).append(path)
    notes = []
    for message, paths in list(warned.items())[:NOTE_GROUPS]:
        notes.append(f"{shown(paths[0])}: {message}" if len(paths) == 1 else f"{len(paths)} images: {message}")
    if len(warned) > NOTE_GROUPS:
        notes.append(f"{len(warned) - NOTE_GROUPS} other Pillow warnings not shown")
    count = sum(len(paths) for paths in converted.values())
    if count == 1:
        ((found, (path,)),) = converted.items()
        notes.append(f"{shown(path)} is {found}; converted to {wanted} as the model card says")
    elif count:
        groups = sorted(converted.items(), key=lambda item: -len(item[1]))
        parts = [
            f"{len(paths)} {'was' if len(paths) == 1 else 'were'} {found} (e.g. {shown(paths[0])})"
            for found, paths in groups[:NOTE_GROUPS]
        ]
        if len(groups) > NOTE_GROUPS:
            rest = sum(len(paths) for _, paths in groups[NOTE_GROUPS:])
            parts.append(f"and {rest} of other sizes or modes")
        notes.append(f"{count} of {len(reads)} images converted to {wanted} as the model card says: {', '.join(parts)}")
    return notes


def load_images(paths: list[Path], spec: InputSpec) -> tuple[np.ndarray, list[tuple[Path, str, list[str]]]]:
    """Image files -> uint8 (N, C, H, W) in the card's mode and size, and (file, what it was, warnings) of each."""
    arrays, reads = [], []
    for path in paths:
        array, found, messages = read_image(path, spec)
        arrays.append(array)
        reads.append((path, found, messages))
    return np.stack(arrays), reads


def predict_files(
    rt: Any, files: list[Path], spec: InputSpec, progress: Progress | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Logits of every file, read and run a batch at a time (memory stays flat for any number of files),
    the pixels of the first GRID_LIMIT (for the grid) and the notes."""
    logits, kept, reads = [], [], []
    for start in range(0, len(files), BATCH):
        pixels, more = load_images(files[start : start + BATCH], spec)
        reads += more
        logits.append(infer_in_batches(rt, normalize(pixels, spec), batch_size=BATCH))
        if start < GRID_LIMIT:
            kept.append(pixels[: GRID_LIMIT - start])
        if progress:
            progress("infer", len(pixels), len(files))
    return np.concatenate(logits), np.concatenate(kept), summarise_reads(reads, spec)


def dataset_images(
    name: str, first: int, spec: InputSpec, card: ModelCard, data_dir: str | Path | None = None
) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """The first ``first`` test images of a data set in the card's shape, their class names, what to call
    each one (its file for an image folder, else ``mnist5k test[7]``: its index in the test split), and notes."""
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
    pixels = dataset.test.images[:first].numpy()
    labels = dataset.test.labels[:first].tolist()
    sources = dataset.test.files[:first] if dataset.test.files else [f"{name} test[{i}]" for i in range(first)]
    notes = []
    if tuple(pixels.shape[1:]) != spec.shape:
        notes.append(
            f"{dataset.name} images are {'x'.join(map(str, pixels.shape[1:]))} (CxHxW); converted to "
            f"{'x'.join(map(str, spec.shape))} as the model card says"
        )
    return pixels, [dataset.class_names[i] for i in labels], sources, notes


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
    progress: Progress | None = None,
) -> InferResult:
    """Predict classes for images (files, folders, globs: see ``find_images``) or a data set's first test images.

    ``verify=False`` skips the sha256 check of a file picked from an export folder (``--no-verify``).
    """
    images = list(images or [])
    provider = None if provider in (None, "", "auto") else provider
    if dataset is None and not images:
        raise BadInputError("nothing to predict: give image files, folders or globs, or --dataset NAME --first N")
    if dataset is not None and images:
        raise BadInputError("give image files or --dataset, not both")
    if first is not None and dataset is None:
        raise BadInputError("--first needs --dataset")
    if topk < 1:
        raise BadInputError("--topk must be at least 1")

    model_file, runtime, precision = pick_model_file(model, runtime, precision, target, provider, verify)
    if provider and runtime != "onnxruntime":
        raise BadInputError(f"--provider is for the onnxruntime runtime; {runtime} runs where --device says")
    files = find_images(images) if images else []
    options = {k: v for k, v in (("provider", provider), ("threads", threads)) if v}
    with open_runtime(runtime, model_file, device, **options) as rt:
        card, spec = rt.card, rt.card.input
        notes = list(rt.notes)
        if dataset is not None:
            pixels, actual, sources, more = dataset_images(dataset, first or 16, spec, card, data_dir)
            pixels = conform_pixels(pixels, spec)
            logits = infer_in_batches(rt, normalize(pixels, spec), batch_size=BATCH)
        else:
            logits, pixels, more = predict_files(rt, files, spec, progress)
            actual, sources = [None] * len(files), [str(f) for f in files]
        notes += more
        device_used = rt.device
    if logits.shape != (len(sources), card.num_classes):
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
            name = " ".join("/".join(Path(pred.source).parts[-2:]).split())  # class folder / file, on one line
            name = name if len(name) <= GRID_LABEL_CHARS else "…" + name[1 - GRID_LABEL_CHARS :]
            titles.append(f"{short_label(pred.predicted, GRID_LABEL_CHARS - 6)} ({pred.probability:.0%})\n{name}")
        else:
            titles.append(f"pred {short_label(pred.predicted)}\ntrue {short_label(pred.actual)}")
        wrong.append(pred.correct is False)
    found = manifest_entry(result.model_file) if result.precision else None
    target, fmt = (found[1].get("target"), found[1].get("format")) if found else (None, None)
    header = f"{result.model_file.name}: " + (
        artifact_label(result.runtime, result.precision, target, fmt) if result.precision else result.runtime
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
    from rich.markup import escape
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
        row = [str(i), escape(shown(p.source)), escape(p.predicted), f"{p.probability:.1%}"]
        if len(p.topk) > 1:
            row.append(escape(", ".join(f"{c} {pr:.1%}" for c, pr in p.topk)))
        if labelled:
            row += [escape(p.actual or ""), "[green]yes[/]" if p.correct else "[bold red]NO[/]"]
        table.add_row(*row)
    console.print(table)
    if labelled:
        console.print(f"accuracy: {result.correct}/{result.labelled} = {result.accuracy:.1%}")


def csv_text(result: InferResult) -> str:
    """One row per image: path, predicted class, its probability, the other top-k classes, and (for a data set)
    the actual class and whether the prediction matched."""
    k = len(result.predictions[0].topk) if result.predictions else 1
    labelled = result.labelled > 0
    header = ["path", "predicted", "probability"]
    header += [f"{name}_{rank}" for rank in range(2, k + 1) for name in ("class", "probability")]
    header += ["actual", "correct"] if labelled else []
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for p in result.predictions:
        row = [p.source, p.predicted, f"{p.probability:.6f}"]
        row += [value for name, prob in p.topk[1:] for value in (name, f"{prob:.6f}")]
        row += [p.actual, int(bool(p.correct))] if labelled else []
        writer.writerow(row)
    return out.getvalue()


def write_csv(result: InferResult, out: str | Path) -> Path:
    """``csv_text`` written atomically: the file is complete, or (on any failure) not there."""
    from toolkit.fileio import atomic_write_text

    atomic_write_text(out, csv_text(result))
    return Path(out)
