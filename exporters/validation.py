"""Prove an exported file computes what the eager model computes, before it is declared written.

Every exporter reloads what it wrote and runs it on a real batch (the card's
test images, or random pixels where the card names no data set) next to the
eager model. The figures go into the manifest; an FP32 file whose logits
drift beyond float32 rounding is refused (a broken export, not a lossy one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from exporters import ExportContext
from toolkit.card import ModelCard
from toolkit.errors import BadInputError, CheckFailedError
from toolkit.preprocess import prepare_batch

VALIDATION_IMAGES = 16
FP32_TOLERANCE = 1e-3  # relative to the largest eager logit (at least 1): float32 reordering, not a bug


def load_pixels(
    card: ModelCard, split: str, count: int, data_dir: str | None = None, cache: dict[str, Any] | None = None
) -> np.ndarray:
    """``count`` uint8 images of the card's data set split, a fixed random sample across all classes.

    BadInputError (naming the folder and ``--data-dir``) if the data set cannot be loaded here.
    """
    from toolkit.data import load_dataset

    key = f"dataset:{card.dataset}"
    dataset = cache.get(key) if cache is not None else None
    if dataset is None:
        dataset = load_dataset(str(card.dataset), data_dir=data_dir)
        if cache is not None:
            cache[key] = dataset
    images = getattr(dataset, split)
    chosen = np.sort(np.random.default_rng(0).permutation(len(images))[:count])
    return images.pixels(chosen, card.input)


def random_pixels(card: ModelCard, count: int, seed: int = 0) -> np.ndarray:
    """uint8 noise in the card's input shape: the stand-in for a model that names no data set."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, *card.input.shape), dtype=np.uint8)


def validation_batch(
    card: ModelCard, data_dir: str | None = None, cache: dict[str, Any] | None = None, count: int = VALIDATION_IMAGES
) -> tuple[np.ndarray, str]:
    """(float32 batch, where it came from): real test images when the card's data set loads, else noise."""
    if card.dataset:
        try:
            pixels = load_pixels(card, "test", count, data_dir, cache)
            return prepare_batch(pixels, card.input), f"{card.dataset} test, {len(pixels)} images"
        except BadInputError:
            pass  # not downloaded here: fall back to noise, as for a model without a data set
    return prepare_batch(random_pixels(card, count), card.input), f"random pixels x{count}"


def eager_logits(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).float().numpy()


def reference(model: torch.nn.Module, card: ModelCard, context: ExportContext) -> tuple[np.ndarray, np.ndarray, str]:
    """(batch, eager logits, description), computed once per export run and shared through its cache."""

    def build() -> tuple[np.ndarray, np.ndarray, str]:
        batch, source = validation_batch(card, context.data_dir, context.cache)
        return batch, eager_logits(model, batch), source

    return context.cached(("reference",), build)


def compare(expected: np.ndarray, got: np.ndarray, source: str) -> dict[str, Any]:
    """Logit differences and top-1 agreement of ``got`` against the eager ``expected``."""
    if got.shape != expected.shape:
        raise CheckFailedError(f"exported model returned shape {got.shape}, eager returned {expected.shape}")
    if not np.isfinite(got).all():
        raise CheckFailedError("exported model returned NaN/Inf logits on the validation batch")
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    agreement = float(np.mean(got.argmax(axis=1) == expected.argmax(axis=1)))
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "top1_agreement": agreement,
        "inputs": source,
    }


def require_fp32_match(file_name: str, stats: dict[str, Any], expected: np.ndarray) -> None:
    """An FP32 file must agree with eager to float32 rounding; anything more is a broken export."""
    tolerance = FP32_TOLERANCE * max(1.0, float(np.abs(expected).max()))
    stats["tolerance"] = tolerance
    if stats["max_abs_diff"] > tolerance:
        raise CheckFailedError(
            f"{file_name} disagrees with the eager model (max abs logit diff "
            f"{stats['max_abs_diff']:.3g} > {tolerance:.3g}); the export is broken, not written"
        )
