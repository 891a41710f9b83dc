"""Accuracy (top-1, top-5), loss, per-class precision/recall/F1 and confusion matrix of any predictor.

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


TOP_K = 5  # top-5 accuracy is reported for models with more classes than this


def _ratio(num: int, den: int) -> float | None:
    return float(num / den) if den else None


def class_scores(confusion: np.ndarray, class_names: list[str]) -> dict[str, dict[str, float | int | None]]:
    """Precision, recall, F1 and support (true images) of each class, from a (true, predicted) count matrix.

    F1 = 2 TP / (predicted + true images). A score whose denominator is zero is None, not 0: precision of a
    class never predicted, recall of a class with no test images. Recall is the class's accuracy.
    """
    matrix = np.asarray(confusion, dtype=np.int64)
    scores = {}
    for i, name in enumerate(class_names):
        hit, predicted, support = int(matrix[i, i]), int(matrix[:, i].sum()), int(matrix[i].sum())
        scores[name] = {
            "precision": _ratio(hit, predicted),
            "recall": _ratio(hit, support),
            "f1": _ratio(2 * hit, predicted + support),
            "support": support,
        }
    return scores


def macro_average(scores: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """The mean of each score over the classes that were in the test images or the predictions; an undefined
    score counts as 0 there (scikit-learn's ``average="macro", zero_division=0``), so a class the model never
    predicts pulls the mean down instead of dropping out of it."""
    seen = [s for s in scores.values() if s["f1"] is not None]
    keys = ("precision", "recall", "f1")
    return {key: float(np.mean([s[key] or 0.0 for s in seen])) if seen else None for key in keys}


@dataclass
class EvalResult:
    dataset: str
    num_images: int
    loss: float
    accuracy: float
    per_class_accuracy: dict[str, float]  # NaN for a class without test images (null in JSON)
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    class_names: list[str]
    seconds: float
    top5_accuracy: float | None = None  # only for more than TOP_K classes

    @property
    def per_class(self) -> dict[str, dict[str, float | int | None]]:
        return class_scores(np.asarray(self.confusion), self.class_names)

    @property
    def macro(self) -> dict[str, float | None]:
        return macro_average(self.per_class)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (no NaN): with per-class precision/recall/F1/support and their macro averages."""
        doc = asdict(self)
        doc["per_class_accuracy"] = {k: (None if np.isnan(v) else v) for k, v in self.per_class_accuracy.items()}
        return {**doc, "per_class": self.per_class, "macro_average": self.macro}


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
    loss_sum, predictions, top_hits = 0.0, [], 0
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
        batch_labels = labels[start : start + batch_size]
        loss_sum += float(cross_entropy(logits, batch_labels).sum())
        predictions.append(logits.argmax(axis=1))
        if n_classes > TOP_K:
            best = np.argpartition(-logits, TOP_K - 1, axis=1)[:, :TOP_K]
            top_hits += int((best == batch_labels[:, None]).any(axis=1).sum())
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
        top5_accuracy=top_hits / count if n_classes > TOP_K else None,
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
        images, labels = data.test.images.numpy(), data.test.labels.numpy()
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
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


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def print_eval(result: EvalResult, model_file: str | Path, files: dict[str, Path], console: Any) -> None:
    """Per-class precision/recall/F1 (recall is the class's accuracy) with their macro average, then the totals."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"{model_file} on {result.dataset} ({result.num_images} test images)"))
    table.add_column("class")
    for col in ("images", "precision", "recall", "F1"):
        table.add_column(col, justify="right")
    for name, s in result.per_class.items():
        table.add_row(Text(name), str(s["support"]), *(_percent(s[k]) for k in ("precision", "recall", "f1")))
    macro = result.macro
    table.add_section()
    table.add_row("macro average", str(result.num_images), *(_percent(macro[k]) for k in ("precision", "recall", "f1")))
    console.print(table)
    top5 = f"   top-5 {_percent(result.top5_accuracy)}" if result.top5_accuracy is not None else ""
    console.print(
        f"accuracy {_percent(result.accuracy)}{top5}   loss {result.loss:.4f}   confusion matrix: {files['confusion']}",
        markup=False,
    )
