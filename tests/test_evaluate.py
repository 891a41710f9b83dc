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
    )  # best.pt scored once, at the end, on the whole 1,000-image test split
    scored = evaluate_file(result.best_path, device="cpu")
    assert scored.dataset == "mnist5k" and scored.num_images == 1000 == result.test["test_images"]
    assert scored.accuracy == pytest.approx(result.test["test_acc"], abs=1e-3)  # same pixels, same normalisation
    assert scored.loss == pytest.approx(result.test["test_loss"], rel=1e-3)
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
    table = run_cli("eval", untrained_checkpoint, "--limit", "40", "--out", tmp_path / "ev2")
    assert table.returncode == 0 and "accuracy" in table.stdout and "confusion" in table.stdout
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
