"""Prove an exported file computes what the eager model computes, before it is declared written.

Every exporter reloads what it wrote and runs it on real images next to the
eager model. An FP32 file is checked on 16 test images: it must match eager to
float32 rounding (a broken export, not a lossy one). An FP16 or INT8 file is
checked on ``--gate-images`` held-out test images (never the calibration
images, which come from the training split), enough to measure agreement and
accuracy. The figures go into the manifest, and the pipeline's gate
(``exporters.gate``) holds every file to its precision's parity thresholds.
Where the card's data set cannot be loaded, the batch is random pixels: the
FP32 check still runs, the gate cannot (noise has no labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from exporters import ExportContext
from toolkit.card import ModelCard
from toolkit.errors import BadInputError, CheckFailedError
from toolkit.flags import setting
from toolkit.preprocess import prepare_batch

VALIDATION_IMAGES = 16  # FP32 files: exact or broken, a few images tell
GATE_IMAGES = 500  # FP16/INT8 files: agreement and accuracy need a sample (99% of 500: at most 5 differ)
MAX_GATE_IMAGES = 100_000
FP32_TOLERANCE = 1e-3  # relative to the largest eager logit (at least 1): float32 reordering, not a bug


@dataclass(frozen=True)
class GateOptions:
    """The gate every exported file passes before it is written (its precision's parity thresholds)."""

    gate_images: int = setting(
        GATE_IMAGES,
        "Held-out test images each FP16/INT8 file is measured on before it is written (FP32 files: 16).",
        low=1,
        high=MAX_GATE_IMAGES,
    )
    keep_failed: bool = setting(
        False, "Write files that miss their precision's thresholds anyway, marked failed in the manifest (exit 1)."
    )


@dataclass(frozen=True)
class HeldOut:
    """Where a validation batch came from; real test images carry their labels, so accuracy can be measured."""

    description: str
    labels: np.ndarray | None = None

    def __str__(self) -> str:
        return self.description


def load_images(
    card: ModelCard, split: str, count: int, data_dir: str | None = None, cache: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(``count`` uint8 images, their labels) of the card's data set split, a fixed random sample across classes.

    BadInputError (naming the folder and ``--data-dir``) if the data set cannot be loaded here.
    """
    from toolkit.data import load_dataset

    key = f"dataset:{card.dataset}"
    dataset = cache.get(key) if cache is not None else None
    if dataset is None:
        dataset = load_dataset(str(card.dataset), data_dir=data_dir)
        if cache is not None:
            cache[key] = dataset
    part = getattr(dataset, split)  # a Split in memory or a FileSplit of an image folder: both give .pixels
    chosen = np.sort(np.random.default_rng(0).permutation(len(part))[:count])
    return part.pixels(chosen, card.input), part.labels[torch.from_numpy(chosen)].numpy()


def load_pixels(
    card: ModelCard, split: str, count: int, data_dir: str | None = None, cache: dict[str, Any] | None = None
) -> np.ndarray:
    """``count`` uint8 images of the card's data set split (``load_images`` without the labels)."""
    return load_images(card, split, count, data_dir, cache)[0]


def random_pixels(card: ModelCard, count: int, seed: int = 0) -> np.ndarray:
    """uint8 noise in the card's input shape: the stand-in for a model that names no data set."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, *card.input.shape), dtype=np.uint8)


def test_pixels(
    card: ModelCard, data_dir: str | None = None, cache: dict[str, Any] | None = None, count: int = VALIDATION_IMAGES
) -> tuple[np.ndarray, HeldOut]:
    """(uint8 pixels, where they came from): real test images with labels where the data set loads, else noise."""
    if card.dataset:
        try:
            pixels, labels = load_images(card, "test", count, data_dir, cache)
            return pixels, HeldOut(f"{card.dataset} test, {len(pixels)} images", labels)
        except BadInputError:
            pass  # not downloaded here: fall back to noise, as for a model without a data set
    return random_pixels(card, count), HeldOut(f"random pixels x{count}")


def validation_pixels(card: ModelCard, precision: str, context: ExportContext) -> tuple[np.ndarray, HeldOut]:
    """(uint8 pixels, where they came from) a file of ``precision`` is checked on: ``validation_data``'s images
    before preprocessing, for files that take pixels (preprocessing in the graph)."""
    count = VALIDATION_IMAGES if precision == "fp32" else context.option(GateOptions).gate_images
    return test_pixels(card, context.data_dir, context.cache, count)


def validation_batch(
    card: ModelCard, data_dir: str | None = None, cache: dict[str, Any] | None = None, count: int = VALIDATION_IMAGES
) -> tuple[np.ndarray, HeldOut]:
    """(float32 batch, where it came from): ``test_pixels`` preprocessed as the card says."""
    pixels, source = test_pixels(card, data_dir, cache, count)
    return prepare_batch(pixels, card.input), source


def eager_logits(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).float().numpy()


def reference(
    model: torch.nn.Module, card: ModelCard, context: ExportContext
) -> tuple[np.ndarray, np.ndarray, HeldOut]:
    """(batch, eager logits, where it came from) of the FP32 check, computed once per run and shared."""

    def build() -> tuple[np.ndarray, np.ndarray, HeldOut]:
        batch, source = validation_batch(card, context.data_dir, context.cache)
        return batch, eager_logits(model, batch), source

    return context.cached(("reference",), build)


def held_out(model: torch.nn.Module, card: ModelCard, context: ExportContext) -> tuple[np.ndarray, np.ndarray, HeldOut]:
    """(batch, eager logits, where it came from) of ``--gate-images`` test images: what lossy files are gated on."""
    count = context.option(GateOptions).gate_images

    def build() -> tuple[np.ndarray, np.ndarray, HeldOut]:
        batch, source = validation_batch(card, context.data_dir, context.cache, count)
        return batch, eager_logits(model, batch), source

    return context.cached(("held-out", count), build)


def validation_data(
    model: torch.nn.Module, card: ModelCard, precision: str, context: ExportContext
) -> tuple[np.ndarray, np.ndarray, HeldOut]:
    """The images a file of ``precision`` is checked on: 16 for an exact FP32 file, the held-out set otherwise."""
    return reference(model, card, context) if precision == "fp32" else held_out(model, card, context)


def compare(expected: np.ndarray, got: np.ndarray, source: HeldOut | str) -> dict[str, Any]:
    """Logit differences, top-1 agreement and (with labels) accuracy of ``got`` against the eager ``expected``.

    The figures parity's thresholds are written in: agreement, max |diff| relative to the eager logit range,
    accuracy change in points.
    """
    if got.shape != expected.shape:
        raise CheckFailedError(f"exported model returned shape {got.shape}, eager returned {expected.shape}")
    if not np.isfinite(got).all():
        raise CheckFailedError("exported model returned NaN/Inf logits on the validation batch")
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    logit_range = float(expected.max() - expected.min()) or 1.0
    stats: dict[str, Any] = {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_diff_rel": float(diff.max()) / logit_range,
        "top1_agreement": float(np.mean(got.argmax(axis=1) == expected.argmax(axis=1))),
        "images": int(len(got)),
        "inputs": str(source),
    }
    labels = getattr(source, "labels", None)
    if labels is not None and len(labels) == len(got):
        eager_accuracy = 100.0 * float(np.mean(expected.argmax(axis=1) == labels))
        accuracy = 100.0 * float(np.mean(got.argmax(axis=1) == labels))
        stats.update(accuracy=accuracy, eager_accuracy=eager_accuracy, accuracy_delta=accuracy - eager_accuracy)
    return stats


def require_fp32_match(file_name: str, stats: dict[str, Any], expected: np.ndarray) -> None:
    """An FP32 file must agree with eager to float32 rounding; anything more is a broken export."""
    tolerance = FP32_TOLERANCE * max(1.0, float(np.abs(expected).max()))
    stats["tolerance"] = tolerance
    if stats["max_abs_diff"] > tolerance:
        raise CheckFailedError(
            f"{file_name} disagrees with the eager model (max abs logit diff "
            f"{stats['max_abs_diff']:.3g} > {tolerance:.3g}); the export is broken, not written"
        )
