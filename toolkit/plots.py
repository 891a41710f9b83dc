"""Figures from plain numbers: training curves, run comparisons, confusion matrices.

Takes lists and dicts, not models, so any stage can draw without importing
another; renders with matplotlib's Agg backend (no display needed) and writes
each PNG atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from toolkit.fileio import atomic_path  # noqa: E402


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def training_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Train loss (left) and train/test accuracy (right) per epoch."""
    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    loss_ax.plot(epochs, [row["test_loss"] for row in history], marker="o", label="test")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.plot(epochs, [100 * row["train_acc"] for row in history], marker="o", label="train")
    acc_ax.plot(epochs, [100 * row["test_acc"] for row in history], marker="o", label="test")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def compare_runs(runs: dict[str, Sequence[dict[str, Any]]], path: str | Path, title: str = "") -> Path:
    """Several runs on one figure: train loss, and train (dashed) / test (solid) error per epoch.

    The layout of He et al.'s degradation plot (plain vs residual networks).
    """
    fig, (loss_ax, err_ax) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, history) in enumerate(runs.items()):
        color = colors[i % len(colors)]
        epochs = [row["epoch"] for row in history]
        loss_ax.plot(epochs, [row["train_loss"] for row in history], color=color, label=name)
        err_ax.plot(epochs, [100 * (1 - row["train_acc"]) for row in history], color=color, linestyle="--",
                    linewidth=1)
        err_ax.plot(epochs, [100 * (1 - row["test_acc"]) for row in history], color=color, linewidth=2,
                    label=name)
    loss_ax.set(xlabel="epoch", ylabel="train loss", title="train loss")
    err_ax.set(xlabel="epoch", ylabel="error (%)", title="error: test (solid), train (dashed)")
    for ax in (loss_ax, err_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path,
                     title: str = "") -> Path:
    """Counts of (true class, predicted class); the diagonal is what was right."""
    n = len(class_names)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=class_names, rotation=45 if n > 10 else 0)
    ax.set_yticks(range(n), labels=class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    if n <= 20:
        peak = max((max(row) for row in matrix), default=0)
        for i in range(n):
            for j in range(n):
                value = matrix[i][j]
                if value:
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                            color="white" if value > peak / 2 else "black")
    return _save(fig, path)
