"""Evaluation of any predictor, of checkpoint files, and `rtool eval`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.conftest import MNIST_SPEC, assert_one_line_error, run_cli
from toolkit.checkpoint import load_model
from toolkit.errors import BadInputError
from toolkit.evaluate import cross_entropy, evaluate_file, evaluate_predictor, write_eval_outputs
from toolkit.train import TrainConfig, run_training

CLASSES = ["a", "b", "c"]


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)


def test_scores_a_predictor_exactly():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])

    def predict_class_0(batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.shape[1:] == (1, 28, 28)
        logits = np.zeros((len(batch), 3), dtype=np.float32)
        logits[:, 0] = 1.0
        return logits

    result = evaluate_predictor(predict_class_0, _images(7), labels, MNIST_SPEC, CLASSES, batch_size=3)
    assert result.num_images == 7 and result.accuracy == pytest.approx(2 / 7)
    assert result.per_class_accuracy == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert result.confusion == [[2, 0, 0], [2, 0, 0], [3, 0, 0]]
    expected_loss = (2 * -math.log(math.e / (math.e + 2)) + 5 * -math.log(1 / (math.e + 2))) / 7
    assert result.loss == pytest.approx(expected_loss)
    assert result.top5_accuracy is None  # 3 classes: every class is in the top 5


# Eight images of seven classes a..g, each predictor output given as the full ranking of the classes, best first.
# true class: predicted (rank of the true class)
RANKINGS = [
    (0, [0, 1, 2, 3, 4, 5, 6]),  # a: a (1st)
    (0, [1, 0, 2, 3, 4, 5, 6]),  # a: b (2nd)
    (1, [1, 0, 2, 3, 4, 5, 6]),  # b: b
    (1, [1, 2, 0, 3, 4, 5, 6]),  # b: b
    (2, [0, 1, 3, 4, 5, 2, 6]),  # c: a (6th: outside the top 5)
    (3, [3, 0, 1, 2, 4, 5, 6]),  # d: d
    (6, [5, 0, 1, 2, 6, 3, 4]),  # g: f (5th: inside the top 5)
    (6, [6, 0, 1, 2, 3, 4, 5]),  # g: g
]


def test_top5_and_per_class_precision_recall_f1_by_hand():
    labels = np.array([label for label, _ in RANKINGS])
    logits = np.zeros((len(RANKINGS), 7), np.float32)
    for row, (_, ranking) in enumerate(RANKINGS):
        logits[row, ranking] = np.arange(7, 0, -1)
    names = list("abcdefg")
    result = evaluate_predictor(lambda b: logits[: len(b)], _images(8), labels, MNIST_SPEC, names, batch_size=8)
    assert result.accuracy == 5 / 8 and result.top5_accuracy == 7 / 8
    # a: 1 right of 2 predicted, 2 true; b: 2 of 3 predicted, 2 true; c: never predicted, 1 true; d: 1 of 1, 1;
    # e: neither predicted nor true; f: predicted once, never true; g: 1 of 1 predicted, 2 true.
    # F1 = 2 TP / (predicted + true)
    assert result.per_class == {
        "a": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2},
        "b": {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": 0.8, "support": 2},
        "c": {"precision": None, "recall": 0.0, "f1": 0.0, "support": 1},
        "d": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
        "e": {"precision": None, "recall": None, "f1": None, "support": 0},
        "f": {"precision": 0.0, "recall": None, "f1": 0.0, "support": 0},
        "g": {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2},
    }
    # macro: over the six classes seen (e left out), an undefined score counting 0
    assert result.macro == {
        "precision": pytest.approx((0.5 + 2 / 3 + 0 + 1 + 0 + 1) / 6),
        "recall": pytest.approx((0.5 + 1 + 0 + 1 + 0 + 0.5) / 6),
        "f1": pytest.approx((0.5 + 0.8 + 0 + 1 + 0 + 2 / 3) / 6),
    }
    doc = json.loads(json.dumps(result.to_dict(), allow_nan=False))  # plain JSON: e's accuracy is null, not NaN
    assert doc["per_class_accuracy"]["e"] is None and doc["per_class"]["c"]["precision"] is None
    assert doc["top5_accuracy"] == 7 / 8 and doc["macro_average"]["recall"] == pytest.approx(0.5)


def test_the_predictor_gets_the_card_preprocessing():
    seen = []
    evaluate_predictor(
        lambda b: seen.append(b) or np.zeros((len(b), 3), np.float32),
        _images(4),
        np.zeros(4, np.int64),
        MNIST_SPEC,
        CLASSES,
    )
    expected = (_images(4).astype(np.float32) / 255 - MNIST_SPEC.mean[0]) / MNIST_SPEC.std[0]
    np.testing.assert_allclose(seen[0], expected, rtol=1e-6)


def test_cross_entropy_is_stable_for_huge_logits():
    loss = cross_entropy(np.array([[1e4, 0.0], [0.0, 1e4]], np.float32), np.array([0, 0]))
    assert loss[0] == pytest.approx(0.0) and loss[1] == pytest.approx(1e4)


@pytest.mark.parametrize(
    "logits,message", [(np.zeros((2, 5), np.float32), "shape"), (np.full((2, 3), np.nan, np.float32), "NaN")]
)
def test_a_misfit_or_broken_predictor_is_one_clear_error(logits, message):
    with pytest.raises(BadInputError, match=message):
        evaluate_predictor(lambda b: logits, _images(2), np.zeros(2, np.int64), MNIST_SPEC, CLASSES)


def test_eval_of_a_checkpoint_matches_the_accuracy_training_measured(tmp_path):
    result = run_training(
        TrainConfig(out=str(tmp_path / "run"), epochs=1, train_limit=256, batch_size=64, quiet=True)
    )  # evaluated on the whole 1,000-image test split
    scored = evaluate_file(result.best_path, device="cpu")
    assert scored.dataset == "mnist5k" and scored.num_images == 1000
    assert scored.accuracy == pytest.approx(result.best_acc, abs=1e-3)  # same pixels, same normalisation
    assert scored.loss == pytest.approx(result.history[0]["test_loss"], rel=1e-3)
    assert sum(map(sum, scored.confusion)) == 1000
    files = write_eval_outputs(scored, tmp_path / "eval")
    assert json.loads(files["json"].read_text())["accuracy"] == scored.accuracy
    assert files["confusion"].read_bytes()[:4] == b"\x89PNG"


def test_cli_eval_json_and_files(untrained_checkpoint, tmp_path):
    result = run_cli("eval", untrained_checkpoint, "--limit", "40", "--json", "--out", tmp_path / "ev")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["num_images"] == 40 and set(doc["per_class_accuracy"]) == {str(d) for d in range(10)}
    assert (tmp_path / "ev" / "confusion.png").is_file() and (tmp_path / "ev" / "eval.json").is_file()
    assert set(doc["per_class"]) == set(doc["per_class_accuracy"]) and 0 <= doc["top5_accuracy"] <= 1
    assert sum(c["support"] for c in doc["per_class"].values()) == 40
    assert doc["top5_accuracy"] >= doc["accuracy"]
    table = run_cli("eval", untrained_checkpoint, "--limit", "40", "--out", tmp_path / "ev2")
    assert table.returncode == 0 and "accuracy" in table.stdout and "confusion" in table.stdout
    assert f"top-5 {100 * doc['top5_accuracy']:.2f}%" in table.stdout
    header = next(line for line in table.stdout.splitlines() if "precision" in line)
    assert header.split()[1:] == ["class", "┃", "images", "┃", "precision", "┃", "recall", "┃", "F1", "┃"]
    assert "macro average" in table.stdout
    model, _ = load_model(untrained_checkpoint)  # the file was only read
    assert model is not None


def test_cli_eval_bad_inputs(tmp_path, untrained_checkpoint):
    assert_one_line_error(run_cli("eval", tmp_path / "missing.pt"), 2, "does not exist")
    assert_one_line_error(
        run_cli("eval", untrained_checkpoint, "--dataset", "nosuchset", "--out", tmp_path), 2, "unknown data set"
    )
    assert_one_line_error(
        run_cli(
            "eval", untrained_checkpoint, "--dataset", "cifar10", "--data-dir", tmp_path / "empty", "--out", tmp_path
        ),
        2,
        "not found",
    )
