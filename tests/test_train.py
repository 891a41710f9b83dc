"""Training: batch pipeline, run folder, resume, stop, divergence and the CLI around them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO, assert_one_line_error, run_rtool
from toolkit import train
from toolkit.checkpoint import load_checkpoint, load_model, safe_torch_load
from toolkit.data import load_dataset
from toolkit.errors import BadInputError
from toolkit.preprocess import normalize as numpy_normalize
from toolkit.train import TrainConfig, TrainingDiverged, resume_config, run_training
from toolkit.train.batching import training_batch

TINY = dict(train_limit=192, test_limit=64, batch_size=64, quiet=True)  # 3 batches per epoch


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist5k")


def test_batch_normalisation_equals_the_card_preprocessing(mnist):
    spec = mnist.input_spec()
    pixels = mnist.test.images[:64]
    ours = train.normalize(pixels, spec).numpy()
    assert np.array_equal(ours, numpy_normalize(pixels.numpy(), spec))  # bit for bit


def test_random_shift_moves_whole_images_within_the_padding():
    images = torch.randint(1, 256, (32, 3, 9, 7), dtype=torch.uint8)
    shifted = train.random_shift(images, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    offsets = set()
    for _original, out, pad in zip(images, shifted, padded):
        matches = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(pad[:, dy : dy + 9, dx : dx + 7], out)]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 5  # images get different shifts
    again = train.random_shift(images, 2, torch.Generator().manual_seed(0))
    assert torch.equal(shifted, again)
    assert train.random_shift(images, 0, torch.Generator()) is images


def test_random_flip_mirrors_about_half_of_a_batch_and_only_with_flip(mnist):
    images = mnist.train.images[:64]
    flipped = train.random_flip(images, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(out, image.flip(-1)) and not torch.equal(out, image) for out, image in zip(flipped, images)]
    kept = [torch.equal(out, image) for out, image in zip(flipped, images)]
    assert all(m or k for m, k in zip(mirrored, kept)) and 20 < sum(mirrored) < 44
    spec, idx = mnist.input_spec(), torch.arange(64)
    config = TrainConfig(shift=2, quiet=True)
    plain, _ = training_batch(mnist.train, idx, spec, config, 0, 0, 0)
    with_flip, _ = training_batch(mnist.train, idx, spec, TrainConfig(shift=2, flip=True), 0, 0, 0)
    same = [torch.equal(a, b) for a, b in zip(plain, with_flip)]
    assert 20 < sum(same) < 44  # the same shifts, then about half mirrored
    assert all(s or torch.equal(a.flip(-1), b) for s, a, b in zip(same, plain, with_flip))


def test_rank_shards_cover_the_epoch_like_a_distributed_sampler():
    orders = [train.epoch_order(11, 3, 0, train.Distributed(rank=r, world_size=2)) for r in (0, 1)]
    assert len(orders[0]) == len(orders[1]) == 6
    assert set(torch.cat(orders).tolist()) == set(range(11))
    single = train.epoch_order(11, 3, 0, train.Distributed())
    assert not torch.equal(single, train.epoch_order(11, 4, 0, train.Distributed()))  # reshuffled per epoch
    assert torch.equal(torch.stack([orders[0][:5], orders[1][:5]], 1).flatten(), single[:10])


def test_limit_split_keeps_every_class(mnist):
    small = train.limit_split(mnist.train, 50)
    assert len(small) == 50
    assert torch.bincount(small.labels, minlength=10).tolist() == [5] * 10
    assert train.limit_split(mnist.train, None) is mnist.train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-epoch resnet20 run on 192 images (read-only for the tests that share it)."""
    return run_training(TrainConfig(out=str(tmp_path_factory.mktemp("tiny") / "run"), epochs=2, **TINY))


def test_a_run_writes_checkpoints_metrics_and_curves(tiny_run, mnist):
    result, run = tiny_run, tiny_run.run_dir
    assert {p.name for p in run.iterdir()} == {"best.pt", "last.pt", "metrics.csv", "metrics.jsonl", "curves.png"}
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] == [r["epoch"] for r in result.history]
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("epoch,train_loss,train_acc,test_loss,test_acc")
    assert result.best_acc == max(r["test_acc"] for r in rows)

    model, card = load_model(run / "best.pt")
    assert card.input == mnist.input_spec() and card.class_names == mnist.class_names
    assert card.metrics["test_acc"] == result.best_acc and card.training["epochs"] == 2
    last = safe_torch_load(run / "last.pt")  # torch.load(weights_only=True) accepts the training state
    state = last["train_state"]
    assert state["epoch"] == 2 and state["batch"] == 0 and len(state["history"]) == 2
    assert {"optimizer", "scheduler", "rng", "config"} <= set(state)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict


@pytest.mark.parametrize("stop_after", [4, 3])  # mid-epoch 2, and exactly at the end of epoch 1
def test_stopped_and_resumed_run_equals_an_uninterrupted_one(tmp_path, tiny_run, stop_after):
    whole = tiny_run

    batches = iter(range(1, 100))
    stopped = run_training(
        TrainConfig(out=str(tmp_path / "parts"), epochs=2, **TINY), should_stop=lambda: next(batches) >= stop_after
    )
    assert stopped.interrupted and stopped.resume_command.endswith("--resume")
    state = load_checkpoint(tmp_path / "parts" / "last.pt").train_state
    assert (state["epoch"], state["batch"]) == ((stop_after - 1) // 3, (stop_after - 1) % 3 + 1)

    resumed = run_training(resume_config(tmp_path / "parts"))
    assert not resumed.interrupted
    for key, value in _weights(whole.run_dir / "last.pt").items():
        assert torch.equal(value, _weights(tmp_path / "parts" / "last.pt")[key]), key
    same = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")
    assert [{k: r[k] for k in same} for r in resumed.history] == [{k: r[k] for k in same} for r in whole.history]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    class LossTurningNaN(torch.nn.CrossEntropyLoss):
        calls = 0

        def forward(self, logits, target):
            LossTurningNaN.calls += 1
            loss = super().forward(logits, target)
            return loss * float("nan") if LossTurningNaN.calls > 4 else loss  # batch 2 of epoch 2

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", LossTurningNaN)
    with pytest.raises(TrainingDiverged, match="epoch 2, batch 2") as err:
        run_training(TrainConfig(out=str(tmp_path / "run"), epochs=3, **TINY))
    assert err.value.exit_code == 1 and "last.pt" in str(err.value)
    state = load_checkpoint(tmp_path / "run" / "last.pt").train_state
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in _weights(tmp_path / "run" / "last.pt").values())
    assert load_model(tmp_path / "run" / "best.pt")[1].metrics["epoch"] == 1


def test_resume_refuses_changed_settings_and_allows_runtime_ones(tmp_path, tiny_run):
    config = resume_config(tiny_run.run_dir, quiet=False, device="cpu", epochs=2)
    assert config.quiet is False and config.resume and config.train_limit == TINY["train_limit"]
    with pytest.raises(BadInputError, match="--lr"):
        resume_config(tiny_run.run_dir, lr=0.5)
    with pytest.raises(BadInputError, match="nothing to resume"):
        resume_config(tmp_path / "elsewhere")


def test_cli_refuses_an_existing_run_and_a_missing_resume(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    assert_one_line_error(run_rtool("train", "--out", tmp_path / "run", "--epochs", "1"), 2, "--overwrite")
    assert (tmp_path / "run" / "notes.txt").read_text() == "keep me"
    assert_one_line_error(run_rtool("train", "--out", tmp_path / "new", "--resume"), 2, "nothing to resume")


@pytest.mark.parametrize(
    "flag,value",
    [("--epochs", "0"), ("--batch-size", "-1"), ("--lr", "0"), ("--lr", "-0.1"), ("--optimizer", "rmsprop")],
)
def test_cli_rejects_out_of_range_flags(tmp_path, flag, value):
    assert_one_line_error(run_rtool("train", "--out", tmp_path / "run", flag, value), 2, flag)


def test_train_flags_are_generated_from_the_config():
    """Every TrainConfig field is a flag with the field's default and help; its bounds are the flag's."""
    from dataclasses import fields

    from toolkit.cli import train as train_command

    options = {p.name: p for p in train_command.params if p.name != "help"}
    assert list(options) == [f.name for f in fields(TrainConfig)] + ["nproc"]
    for f in fields(TrainConfig):
        assert options[f.name].default == f.default and options[f.name].help == f.metadata["flag"].help, f.name
    parsed = train_command.make_context("train", []).params
    del parsed["nproc"]
    assert TrainConfig(**parsed) == TrainConfig()  # parsing nothing gives the config's defaults
    assert TrainConfig().lr == 0.05 and TrainConfig(optimizer="adamw").lr == 3e-3


def test_cli_diverging_run_exits_1_with_one_line(tmp_path):
    result = run_rtool(
        "train",
        "--out",
        tmp_path / "run",
        "--lr",
        "1e30",
        "--train-limit",
        "64",
        "--test-limit",
        "32",
        "--batch-size",
        "32",
        "--epochs",
        "1",
    )
    assert_one_line_error(result, 1, "diverged")


def test_ctrl_c_saves_last_pt_and_resume_finishes_the_run(tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        "--out",
        str(out),
        "--epochs",
        "4",
        "--train-limit",
        "320",
        "--test-limit",
        "64",
        "--batch-size",
        "32",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit.cli", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 240
    while True:  # wait for the first epoch line, then press Ctrl-C
        line = proc.stdout.readline()
        assert line and time.monotonic() < deadline, proc.stderr.read()
        if line.startswith("epoch") and "1/4" in line:
            break
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr and f"rtool train --out {out} --resume" in stderr
    state = load_checkpoint(out / "last.pt").train_state
    assert state["epoch"] < 4

    resumed = run_rtool("train", "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "best test accuracy" in resumed.stdout
    assert [r["epoch"] for r in train.read_metrics(out)] == [1, 2, 3, 4]


def test_compare_draws_several_runs(tmp_path, tiny_run):
    run_training(TrainConfig(model="plain20", out=str(tmp_path / "plain20"), epochs=1, **TINY))
    out = tmp_path / "compare.png"
    result = run_rtool("compare", tmp_path / "plain20", tiny_run.run_dir, "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["runs"]
    assert [(r["run"], r["epochs"]) for r in rows] == [("plain20", 1), ("run", 2)]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(out).shape[1] > 600
    assert_one_line_error(run_rtool("compare", tmp_path / "missing", "--out", out), 2, "metrics")
