"""The header ``rtool train`` prints before the first step: what is about to be trained, on what, and how."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from toolkit.train.loop import Trainer

MAX_CLASS_ROWS = 20  # more classes are summed up in one line


def class_counts(split: Any, classes: int) -> list[int]:
    return torch.bincount(split.labels.cpu(), minlength=classes).tolist()


def class_table(trainer: Trainer) -> list[str]:
    """One row per class (at most MAX_CLASS_ROWS) with its images in each split, and the totals."""
    names = trainer.class_names
    splits = {"train": trainer.train_split, "val": trainer.val_split, "test": trainer.test_split}
    columns = {name: class_counts(split, len(names)) for name, split in splits.items() if split is not None}
    width = min(max(len(n) for n in names + ["class"]), 40)
    rows = [f"  {'class':<{width}} " + " ".join(f"{name:>7}" for name in columns)]
    for k, name in enumerate(names[:MAX_CLASS_ROWS]):
        shown = name if len(name) <= width else name[: width - 3] + "..."
        rows.append(f"  {shown:<{width}} " + " ".join(f"{counts[k]:>7}" for counts in columns.values()))
    if len(names) > MAX_CLASS_ROWS:
        rows.append(f"  ... and {len(names) - MAX_CLASS_ROWS} more classes")
    rows.append(f"  {'total':<{width}} " + " ".join(f"{sum(counts):>7}" for counts in columns.values()))
    return rows


def header_lines(trainer: Trainer) -> list[str]:
    """Model, device, input, data (classes with image counts per split), validation, augmentation, weights."""
    config, info, model = trainer.config, trainer.card_training, trainer.model
    params = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    training = "" if trained == params else f", {trained / 1e6:.3f} M of them train (backbone frozen)"
    where = "read from files by " + (f"{trainer.workers} worker processes" if trainer.workers else "this process")
    lines = [
        f"rtool train: {config.model} ({params / 1e6:.3f} M parameters{training}) on "
        f"{trainer.dist_info.device.type}" + (f" x{trainer.dist_info.world_size}" if trainer.dist_info.active else ""),
        f"input: {trainer.spec.describe()} ({info.get('input', '')})",
        f"data: {config.dataset}, {len(trainer.class_names)} classes, "
        + ("held in memory" if trainer.augment is None and trainer.workers == 0 and _in_memory(trainer) else where),
        *class_table(trainer),
        f"val: {info.get('val_split', '')}; chooses best.pt"
        + ("" if trainer.test_split is None else "; test: scored once, at the end, on best.pt"),
    ]
    if "augmentation" in info:
        lines.append(f"augmentation: {info['augment']}: {'; '.join(info['augmentation'])}")
    elif _in_memory(trainer):
        shift = f"random shift of up to {config.shift} pixels" if config.shift else "none"
        lines.append(f"augmentation: {shift}")
    if "start_weights" in info:
        lines.append(f"weights: {_weights_line(info['start_weights'], len(trainer.class_names))}")
    return lines


def _in_memory(trainer: Trainer) -> bool:
    return hasattr(trainer.train_split, "images")


def _weights_line(start: dict[str, Any], classes: int) -> str:
    known = "model" in start
    origin = f" ({start['model']} trained on {start['dataset']}, {start['classes']} classes)" if known else ""
    replaced = start.get("replaced") or []
    change = (
        f"; new classifier for {classes} classes" if "fc.weight" in replaced else ("; classifier kept" if known else "")
    )
    stem = "; first convolution adapted to the input channels" if "conv1.weight" in replaced else ""
    return f"from {start['file']}{origin}{change}{stem}"
