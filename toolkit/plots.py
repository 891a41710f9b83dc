"""Figures from plain numbers: training curves, run comparisons, confusion matrices.

Takes lists and dicts, not models, so any stage can draw without importing
another; renders with matplotlib's Agg backend (no display needed) and writes
each PNG atomically. Every label is drawn as the characters it holds: class
names, run names and titles come from users, and matplotlib would otherwise
read ``$...$`` in them as mathtext (and fail on ``$\\frac{a}{$``).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from toolkit.fileio import atomic_path  # noqa: E402

PLAIN_TEXT = {"text.usetex": False, "text.parse_math": False}


def plain_text() -> contextlib.AbstractContextManager[Any]:
    """Settings under which every Text is literal: no TeX, no mathtext (a ``$`` in a label stays a ``$``).

    Wrap both the drawing and the saving: matplotlib creates some tick labels only when it draws.
    """
    return matplotlib.rc_context(PLAIN_TEXT)


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG atomically (text kept literal) and close it."""
    path = Path(path)
    with plain_text(), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def integer_epochs(ax: Any) -> None:
    """Epochs are counted: ticks at whole numbers only (2 epochs gave ticks at 1.2, 1.4, ...)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def held_out(history: Sequence[dict[str, Any]]) -> str:
    """The split each epoch was scored on: "val" (runs since val splits came in), "test" in older runs' metrics."""
    return "val" if history and "val_acc" in history[0] else "test"


@plain_text()
def training_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Train loss (left) and train/val accuracy (right) per epoch."""
    epochs = [row["epoch"] for row in history]
    split = held_out(history)
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    loss_ax.plot(epochs, [row[f"{split}_loss"] for row in history], marker="o", label=split)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.plot(epochs, [100 * row["train_acc"] for row in history], marker="o", label="train")
    acc_ax.plot(epochs, [100 * row[f"{split}_acc"] for row in history], marker="o", label=split)
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        integer_epochs(ax)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def error_curves(ax: Any, history: Sequence[dict[str, Any]], color: str, label: str, marker: str = "") -> None:
    """One run's error per epoch in the paper's style: training error thin dashed, held-out (val) error bold."""
    epochs = [row["epoch"] for row in history]
    style = {"color": color, "marker": marker, "markersize": 4}
    ax.plot(epochs, [100 * (1 - row["train_acc"]) for row in history], linestyle="--", linewidth=1, **style)
    ax.plot(epochs, [100 * (1 - row[f"{held_out(history)}_acc"]) for row in history], linewidth=2, label=label, **style)


@plain_text()
def compare_runs(runs: dict[str, Sequence[dict[str, Any]]], path: str | Path, title: str = "") -> Path:
    """Several runs on one figure: train loss, and train (dashed) / val (solid) error per epoch.

    The layout of He et al.'s degradation plot (plain vs residual networks).
    """
    fig, (loss_ax, err_ax) = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, history) in enumerate(runs.items()):
        color = colors[i % len(colors)]
        loss_ax.plot([row["epoch"] for row in history], [row["train_loss"] for row in history], color=color, label=name)
        error_curves(err_ax, history, color, name)
    splits = " / ".join(sorted({held_out(h) for h in runs.values()}))
    loss_ax.set(xlabel="epoch", ylabel="train loss", title="train loss")
    err_ax.set(xlabel="epoch", ylabel="error (%)", title=f"error: {splits} (solid), train (dashed)")
    for ax in (loss_ax, err_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        integer_epochs(ax)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def _one_two_five(value: float, _: Any = None) -> str:
    """A log axis's minor label: only 2x and 5x a power of ten are named, so the labels never crowd."""
    mantissa = value / 10 ** math.floor(math.log10(value)) if value > 0 else 0
    return f"{value:g}" if round(mantissa, 6) in (2, 5) else ""


def draw_degradation(panels: dict[str, dict[str, Sequence[dict[str, Any]]]], title: str = "") -> Any:
    """The figure of ``degradation_figure``, not yet saved (tests read its lines)."""
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 4), sharey=True, squeeze=False, layout="constrained"
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (panel, runs) in zip(axes[0], panels.items()):
        for i, (name, history) in enumerate(runs.items()):  # the i-th depth has one color in every panel
            error_curves(ax, history, colors[i % len(colors)], name, marker=".")
        last = max((row["epoch"] for history in runs.values() for row in history), default=1)
        ax.set(xlabel="epoch", title=panel, xlim=(0, last + 0.5))
        ax.grid(alpha=0.3)
        ax.legend()
        integer_epochs(ax)
    axes[0][0].set_ylabel("error (%)")
    axes[0][0].set_yscale("log")  # shared: errors from tens of percent down to a fraction of one stay readable
    # Plain-number labels at 1, 2 and 5 of each decade (the log formatter's labels are mathtext).
    axes[0][0].yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes[0][0].yaxis.set_minor_formatter(FuncFormatter(_one_two_five))
    fig.suptitle((f"{title}\n" if title else "") + "training error thin dashed, test error bold", fontsize=10)
    return fig


@plain_text()
def degradation_figure(
    panels: dict[str, dict[str, Sequence[dict[str, Any]]]], path: str | Path, title: str = ""
) -> Path:
    """He et al.'s Figure 6 layout: one panel per family (plain left, ResNet right), one color per depth."""
    return save_figure(draw_degradation(panels, title), path)


@plain_text()
def confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
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
                    ax.text(
                        j,
                        i,
                        str(value),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if value > peak / 2 else "black",
                    )
    return save_figure(fig, path)


GRID_COLUMNS = 8
GRID_LABEL_CHARS = 18  # longer class names are cut with "…" so neighbouring titles never touch


def short_label(name: str, limit: int = GRID_LABEL_CHARS) -> str:
    """``name`` on one line, cut to ``limit`` characters."""
    name = " ".join(str(name).split())
    return name if len(name) <= limit else name[: limit - 1] + "…"


@plain_text()
def image_grid(pixels: Any, titles: Sequence[str], wrong: Sequence[bool], title: str, path: str | Path) -> Path:
    """Images (uint8 N x C x H x W) in rows of 8, each under its title; wrong ones framed and titled in red.

    Constrained layout reserves each title's height plus a gap, so a two-line red title never touches the
    framed image above it.
    """
    count = len(titles)
    cols = min(GRID_COLUMNS, count)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 2.0 * rows + 0.5), squeeze=False, layout="constrained")
    fig.get_layout_engine().set(h_pad=6 / 72, w_pad=4 / 72)
    for ax in axes.flat:
        ax.axis("off")
    for ax, text, is_wrong, chw in zip(axes.flat, titles, wrong, pixels):
        if chw.shape[0] == 1:
            ax.imshow(chw[0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(chw.transpose(1, 2, 0))
        ax.set_title(
            text, fontsize=8, color="red" if is_wrong else "black", fontweight="bold" if is_wrong else "normal", pad=4
        )
        if is_wrong:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2.5)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=100)


@plain_text()
def sensitivity_plot(layers: Sequence[dict[str, Any]], path: str | Path, title: str = "", worst: int = 3) -> Path:
    """Per-layer INT8 error in network order: bars for the logits' SQNR with one layer alone in INT8 (the ones to
    keep in float red, the other ``worst`` most harmful orange), a line for each layer's output in the full INT8
    graph. Lower is worse."""
    x = list(range(len(layers)))
    colors = [
        "tab:red" if row["keep_float"] else "tab:orange" if row["rank"] <= worst else "tab:blue" for row in layers
    ]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(layers) + 2), 4.2))
    ax.bar(x, [row["logits_sqnr"] for row in layers], color=colors)
    (line,) = ax.plot(
        x,
        [row["full_int8_sqnr"] for row in layers],
        color="black",
        marker=".",
        label="the layer's output, every layer INT8",
    )
    ax.set_xticks(x, [row["name"] for row in layers], rotation=75, fontsize=7)
    ax.set(ylabel="SQNR vs float (dB), higher is better", title=title or "INT8 error per layer")
    handles = [
        Patch(color="tab:blue", label="the logits, this layer alone INT8"),
        Patch(color="tab:orange", label=f"the {worst} most harmful"),
        Patch(color="tab:red", label="keep in float"),
        line,
    ]
    ax.legend(handles=handles, fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.32))
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)
