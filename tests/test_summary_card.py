"""`rtool summary FILE`: what a checkpoint or an export expects, read from its model card."""

from __future__ import annotations

import json

import pytest
import torch

from toolkit.card import InputSpec
from toolkit.checkpoint import load_checkpoint, make_card, save_checkpoint
from toolkit.models import create_model
from toolkit.models.catalog import model_summary
from toolkit.models.summary import count_params

from conftest import assert_one_line_error, run_cli

CLASSES = ["cat", "dog", "[b]ird"]  # a class name that reads like rich markup must be shown as written


@pytest.fixture(scope="module")
def trained_looking(tmp_path_factory):
    """A resnet20 (shortcut B: more parameters than A) on 3x40x48 RGB with a trained run's metrics and settings."""
    spec = InputSpec(channels=3, height=40, width=48, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    model = create_model("resnet20", in_channels=3, num_classes=3, shortcut="B")
    card = make_card(
        "resnet20",
        class_names=CLASSES,
        input_spec=spec,
        dataset="imagefolder:/data/pets",
        model_args={"shortcut": "B"},
        training={"epochs": 12, "lr": 0.05, "optimizer": "sgd"},
        metrics={"epoch": 12, "test_acc": 0.9125, "best_acc": 0.925},
    )
    return save_checkpoint(tmp_path_factory.mktemp("pets") / "best.pt", model, card), count_params(model)


def test_summary_of_a_checkpoint_shows_its_card_and_walks_its_input(trained_looking):
    path, params = trained_looking
    result = run_cli("summary", path)
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.replace("│", " ").split())  # rich wraps long cells: compare the words
    for words in (
        "model resnet20 (in_channels=3, num_classes=3, shortcut=B)",
        "data set imagefolder:/data/pets",
        "classes 3: cat, dog, [b]ird",
        "input 3x40x48 (CxHxW) per image",
        "convert to RGB; resize to 48x40 (bilinear, aspect ratio not kept); x = (pixels / 255 - mean) / std with "
        "mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]",
        "output logits",
        "metrics best_acc 0.925, epoch 12, test_acc 0.9125",  # the card is stored with sorted keys
        "training epochs 12, lr 0.05, optimizer sgd",
        f"total params: {params:,}",
        "resnet20 on input [1, 3, 40, 48]",
    ):
        assert words in out, words
    doc = json.loads(run_cli("summary", path, "--json").stdout)
    assert doc["card"] == load_checkpoint(path).card.to_dict()
    assert doc["summary"]["params"] == params and doc["summary"]["output_shape"] == [1, 3]
    assert params > model_summary("resnet20", (1, 3, 40, 48), 3)["params"]  # the card's shortcut B was built


@pytest.mark.parametrize("which", ["folder", "model.onnx", "model.ts", "model.pt2"])
def test_summary_of_an_export_reads_the_same_card(cpu_export_dir, untrained_checkpoint, which):
    path = cpu_export_dir if which == "folder" else cpu_export_dir / which
    result = run_cli("summary", path, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["card"] == load_checkpoint(untrained_checkpoint).card.to_dict()
    assert doc["summary"]["input"] == [1, 1, 28, 28] and doc["summary"]["output_shape"] == [1, 10]


def test_a_card_rtool_cannot_build_still_shows(tmp_path):
    """A plugin's model, not loaded here: the card is shown, with one note instead of the layer walk."""
    spec = InputSpec(channels=1, height=8, width=8, mean=[0.5], std=[0.5])
    card = make_card("someones-net", class_names=["x", "y"], input_spec=spec)
    path = save_checkpoint(tmp_path / "theirs.pt", torch.nn.Linear(2, 2), card)
    result = run_cli("summary", path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("rtool: note: no layer walk: unknown model 'someones-net'")
    assert "classes 2: x, y" in " ".join(result.stdout.replace("│", " ").split())


@pytest.mark.parametrize(
    "args, words",
    [
        (["summary", "runs/none/best.pt"], "model file runs/none/best.pt does not exist"),
        (["summary", "{ckpt}", "--input", "1x1x32x32"], "--input and --num-classes are for model names"),
        (["summary", "{empty}"], "has no manifest.json"),
        (["summary", "{run}"], "is a training run folder; give one of its checkpoints, e.g. {run}/best.pt"),
    ],
)
def test_summary_bad_files_are_one_line(untrained_checkpoint, tmp_path, args, words):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pt").write_bytes(untrained_checkpoint.read_bytes())
    names = {"ckpt": untrained_checkpoint, "empty": tmp_path / "empty", "run": tmp_path / "run"}
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli(*[a.format(**names) for a in args]), 2, words.format(**names))


def test_a_model_name_wins_over_a_folder_of_that_name(tmp_path):
    (tmp_path / "resnet20").mkdir()  # e.g. a run folder named after its model, in the current directory
    result = run_cli("summary", "resnet20", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == "resnet20"
