"""Accuracy, loss, per-class accuracy and confusion matrix of any predictor on a labelled data set.

A predictor is any function from a float32 NCHW batch (prepared as the card
says, see ``toolkit.preprocess``) to logits: the eager model, a TorchScript or
ONNX Runtime session, a TensorRT engine. So every runtime is measured by the
same code on the same pixels.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from toolkit.card import MANIFEST_NAME, InputSpec, ModelCard
from toolkit.errors import BadInputError
from toolkit.fileio import atomic_write_text
from toolkit.preprocess import prepare_batch

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass
class EvalResult:
    dataset: str
    num_images: int
    loss: float
    accuracy: float
    per_class_accuracy: dict[str, float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    class_names: list[str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy of logits, in float64 (stable log-softmax)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def evaluate_predictor(
    predict: Predictor,
    images: Any,
    labels: Any,
    spec: InputSpec,
    class_names: list[str],
    batch_size: int = 256,
    dataset: str = "",
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Run ``predict`` over uint8 (N, C, H, W) ``images`` in batches and score it against ``labels``."""
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels):
        raise BadInputError(
            f"expected uint8 (N, C, H, W) images with one label each, got {images.dtype} "
            f"{images.shape} and {len(labels)} labels"
        )
    n_classes = len(class_names)
    started = time.perf_counter()
    loss_sum, predictions = 0.0, []
    for start in range(0, len(images), batch_size):
        batch = prepare_batch(images[start : start + batch_size], spec)
        logits = np.asarray(predict(batch))
        if logits.shape != (len(batch), n_classes):
            raise BadInputError(
                f"the model returned logits of shape {logits.shape}, expected "
                f"({len(batch)}, {n_classes}); it does not fit this data set"
            )
        if not np.isfinite(logits).all():
            raise BadInputError("the model returned NaN/Inf logits; the model file may be broken")
        loss_sum += float(cross_entropy(logits, labels[start : start + batch_size]).sum())
        predictions.append(logits.argmax(axis=1))
        if progress:
            progress(len(batch))
    predicted = np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)
    confusion = np.bincount(labels * n_classes + predicted, minlength=n_classes * n_classes)
    confusion = confusion.reshape(n_classes, n_classes)
    per_class_total = confusion.sum(axis=1)
    per_class = {
        name: float(confusion[i, i] / per_class_total[i]) if per_class_total[i] else float("nan")
        for i, name in enumerate(class_names)
    }
    count = max(len(labels), 1)
    return EvalResult(
        dataset=dataset,
        num_images=len(labels),
        loss=loss_sum / count,
        accuracy=float(np.trace(confusion) / count),
        per_class_accuracy=per_class,
        confusion=confusion.tolist(),
        class_names=list(class_names),
        seconds=time.perf_counter() - started,
    )


def evaluate_file(
    path: str | Path,
    dataset: str | None = None,
    *,
    data_dir: str | None = None,
    download: bool = False,
    limit: int | None = None,
    batch_size: int = 256,
    device: str = "auto",
    runtime: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Evaluate a checkpoint or exported model file on a data set's test split.

    The runtime is chosen by the file's ending (best.pt -> eager, model.onnx ->
    onnxruntime) unless given; the data set defaults to the one in the card.
    """
    from runtimes import open_runtime, runtime_for_file
    from toolkit.data import load_dataset

    if Path(path).is_dir():
        hint = (
            f"; for every file of an export folder run `rtool parity {path}`"
            if (Path(path) / MANIFEST_NAME).is_file()
            else ""
        )
        raise BadInputError(f"{path} is a folder; eval takes one model file (e.g. {Path(path) / 'model.onnx'}){hint}")
    with open_runtime(runtime or runtime_for_file(path), path, device) as model:
        card: ModelCard | None = model.card
        if card is None:
            raise BadInputError(f"{path} carries no model card; export it with rtool")
        name = dataset or card.dataset
        if not name:
            raise BadInputError(f"{path} does not name its data set; pass --dataset")
        data = load_dataset(name, data_dir, download)
        if len(data.class_names) != card.num_classes:
            raise BadInputError(
                f"data set '{name}' has {len(data.class_names)} classes but the model predicts "
                f"{card.num_classes}; choose a data set with the model's classes"
            )
        count = len(data.test) if limit is None else min(limit, len(data.test))
        images, labels = data.test.pixels(np.arange(count), card.input), data.test.labels.numpy()[:count]
        return evaluate_predictor(
            model.infer,
            images,
            labels,
            card.input,
            card.class_names,
            batch_size=batch_size,
            dataset=name,
            progress=progress,
        )


def write_eval_outputs(result: EvalResult, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """eval.json and confusion.png in ``out_dir``."""
    from toolkit.plots import confusion_matrix

    out_dir = Path(out_dir)
    json_path = out_dir / "eval.json"
    atomic_write_text(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    png = confusion_matrix(
        result.confusion,
        result.class_names,
        out_dir / "confusion.png",
        title=title or f"{result.dataset}: accuracy {100 * result.accuracy:.2f}%",
    )
    return {"json": json_path, "confusion": png}
