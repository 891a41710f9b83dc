"""Training on a user's own image folder: layouts, lazy reading, val/test separation, input size, augmentation,
early stopping and fine-tuning, on generated JPEG/PNG folders of mixed sizes (tests/shapes.py)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from shapes import make_folder

from toolkit.card import InputSpec
from toolkit.checkpoint import load_checkpoint, load_model
from toolkit.data import FileSplit, imagefolder, load_dataset
from toolkit.errors import BadInputError
from toolkit.train import TrainConfig, run_training

from conftest import assert_one_line_error, run_cli

FAST = ("--model", "resnet20", "--batch-size", "8", "--workers", "0")


# ---------------------------------------------------------------- layouts


def test_layouts_give_train_val_and_test(tmp_path):
    flat = load_dataset(f"imagefolder:{make_folder(tmp_path / 'flat', {'': 5})}")
    assert (len(flat.train), len(flat.test), flat.val, flat.test_name) == (12, 3, None, "test")  # fixed 80/20
    full = load_dataset(f"imagefolder:{make_folder(tmp_path / 'full', {'train': 4, 'val': 2, 'test': 1})}")
    assert (len(full.train), len(full.val), len(full.test), full.test_name) == (12, 6, 3, "test")
    assert isinstance(full.train, FileSplit) and full.class_names == ["circle", "square", "triangle"]
    assert [f.parent.parent.name for f in full.val.files] == ["val"] * 6
    named = load_dataset(f"imagefolder:{make_folder(tmp_path / 'named', {'train': 3, 'validation': 1})}")
    assert named.test is named.val and named.test_name == "val"  # eval/parity fall back to val/, training says so
    assert not hasattr(named.train, "images")  # files, not pixels


@pytest.mark.parametrize(
    "extra, classes, words",
    [
        ("validation", ("circle",), "has both val/ and validation/; keep one"),
        ("test", ("zebra",), "class folder {root}/test/zebra has no counterpart in {root}/train"),
    ],
)
def test_bad_layouts_are_one_line(tmp_path, extra, classes, words):
    """Two folders for one split, and a class only in test/ (once silently dropped)."""
    root = make_folder(tmp_path / "images", {"train": 2, "val": 1, "test": 1})
    make_folder(root, {extra: 1}, classes=classes)
    with pytest.raises(BadInputError, match=words.format(root=root)):
        load_dataset(f"imagefolder:{root}")
    result = run_cli("train", "--dataset", f"imagefolder:{root}", "--out", tmp_path / "run", *FAST)
    assert_one_line_error(result, 2, words.format(root=root).split(";")[0])
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- lazy reading


def peak_bytes(root: Path, spec: InputSpec) -> int:
    """Python-heap peak (NumPy's arrays included) while loading a folder and reading one batch of it."""
    tracemalloc.start()
    try:
        data = load_dataset(f"imagefolder:{root}")
        data.train.pixels(np.arange(8), spec)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_with_ten_times_more_images(tmp_path):
    """Loading keeps file names, not pixels: 10x more images cost a longer list of paths, not 10x the memory.
    (benchmarks/folder_training.py measures a whole training epoch's resident memory.)"""
    spec = InputSpec(3, 96, 96, [0.5] * 3, [0.25] * 3, "center_crop", 96)
    small = make_folder(tmp_path / "small", {"": 10}, sizes=(90, 110))
    large = make_folder(tmp_path / "large", {"": 100}, sizes=(90, 110), seed=1)
    peak_bytes(small, spec)  # first calls import and cache what they need
    small_peak, large_peak = peak_bytes(small, spec), peak_bytes(large, spec)
    decoded = 300 * 3 * 96 * 96  # what the 300 images of the large folder take as pixels at 96x96
    assert large_peak < small_peak + 0.1 * decoded, (small_peak, large_peak)
    assert large_peak < 0.25 * decoded, large_peak


# ---------------------------------------------------------------- a run on a folder


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """`rtool train` on train/, val/ and test/ folders (3 classes, 6/2/2 images each, 40-120 px, JPEG and PNG)
    at a non-square --input-size, with the reads of every val and test file counted."""
    tmp = tmp_path_factory.mktemp("folder_run")
    root = make_folder(tmp / "images", {"train": 6, "val": 2, "test": 2})
    reads: dict[str, int] = {}
    original = imagefolder.read_pixels

    def counted(path, spec):
        reads[str(path)] = reads.get(str(path), 0) + 1
        return original(path, spec)

    imagefolder.read_pixels = counted
    try:
        args = ("--input-size", "24x32", "--augment", "standard", "--epochs", "2", "--test-limit", "100")
        result = run_cli("train", "--dataset", f"imagefolder:{root}", "--out", tmp / "run", *FAST, *args)
    finally:
        imagefolder.read_pixels = original
    assert result.returncode == 0, result.stderr
    return root, tmp / "run", result.stdout, reads


def test_the_header_says_what_is_trained(folder_run):
    root, _, stdout, _ = folder_run
    lines = stdout.splitlines()
    assert lines[0] == "rtool train: resnet20 (0.269 M parameters) on cpu"
    assert lines[1].startswith(
        "input: RGB 24x32, shorter side resized to 32, centre 24x32 cropped (size from --input-size"
    )
    assert lines[2] == f"data: imagefolder:{root}, 3 classes, read from files by this process"
    assert lines[3].split() == ["class", "train", "val", "test"]
    assert [line.split() for line in lines[4:8]] == [
        ["circle", "6", "2", "2"],
        ["square", "6", "2", "2"],
        ["triangle", "6", "2", "2"],
        ["total", "18", "6", "6"],
    ]
    assert lines[8].startswith("val: the data set's own val split; chooses best.pt; test: scored once")
    assert lines[9].startswith("augmentation: standard: random-resized-crop to 24x32 (area 0.25-1")
    assert "horizontal flip" in lines[9] and "colour jitter (brightness 0.3" in lines[9]


def test_val_chooses_best_pt_and_test_is_read_once_at_the_end(folder_run):
    root, run, stdout, reads = folder_run
    for split, times in (("val", 2), ("test", 1)):  # val: once per epoch; test: once in all
        files = sorted((root / split).rglob("*.*"))
        assert [reads.get(str(f), 0) for f in files] == [times] * len(files), split
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("val_acc" in r and "test_acc" not in r for r in rows)
    card = load_checkpoint(run / "best.pt").card
    best = max(rows, key=lambda r: r["val_acc"])  # the first of equals
    assert card.metrics["epoch"] == best["epoch"] and card.metrics["val_acc"] == best["val_acc"]
    assert card.metrics["test_images"] == 6 and f"test accuracy {100 * card.metrics['test_acc']:.2f}%" in stdout
    assert stdout.count("test: accuracy") == 1 and "test_acc" not in load_checkpoint(run / "last.pt").card.metrics


def test_the_card_records_input_size_preprocessing_and_augmentation(folder_run):
    _, run, _, _ = folder_run
    card = load_checkpoint(run / "best.pt").card
    assert (card.input.shape, card.input.resize, card.input.resize_size) == ((3, 24, 32), "center_crop", 32)
    assert card.training["augment"] == "standard" and card.training["input_size"] == "24x32"
    assert card.training["augmentation"][0].startswith("random-resized-crop to 24x32")
    assert card.training["val_split"] == "the data set's own val split"


def test_the_input_size_reaches_the_onnx_file_and_its_app(folder_run, photo_jpegs, tmp_path):
    """rtool infer (eager, from best.pt), the exported ONNX file and onnx_app agree on non-square JPEGs."""
    from runtimes.onnx_app import Predictor

    _, run, _, _ = folder_run
    result = run_cli("export", run / "best.pt", "--format", "onnx", "--out", tmp_path / "export", "--json")
    assert result.returncode == 0, result.stderr
    got = Predictor(tmp_path / "export" / "model.onnx").predict(photo_jpegs, top_k=3)
    assert Predictor(tmp_path / "export" / "model.onnx").card["input"]["resize"] == "center_crop"
    eager = run_cli("infer", run / "best.pt", *photo_jpegs, "--topk", "3", "--json")
    assert eager.returncode == 0, eager.stderr
    expected = [[(t["class"], t["probability"]) for t in p["topk"]] for p in json.loads(eager.stdout)["predictions"]]
    for g, e in zip(got, expected, strict=True):
        assert [c for c, _ in g] == [c for c, _ in e]
        assert [p for _, p in g] == pytest.approx([p for _, p in e], abs=1e-4)


def test_reader_processes_give_the_same_run(tmp_path):
    """Each image's augmentation is seeded from (seed, epoch, image): 2 worker processes train exactly as 0."""
    root = make_folder(tmp_path / "images", {"": 4}, sizes=(30, 60))
    weights = []
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        config = TrainConfig(
            dataset=f"imagefolder:{root}", input_size="16", batch_size=4, epochs=1, workers=workers, out=str(out)
        )
        run_training(config)
        weights.append(load_checkpoint(out / "last.pt").state_dict)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# ---------------------------------------------------------------- early stopping and bad flags


def test_patience_stops_when_val_accuracy_stops_improving(tmp_path, monkeypatch):
    """Val accuracy 50, 70, 60, 60%: with patience 2 the run stops after epoch 4 of 6, best.pt from epoch 2."""
    from toolkit.train import run as run_module

    scores = iter([0.5, 0.7, 0.6, 0.6, 0.4])  # the last one: best.pt on the test split, once
    monkeypatch.setattr(run_module, "evaluate", lambda *args: (1.0, next(scores)))
    config = TrainConfig(out=str(tmp_path / "run"), epochs=6, patience=2, train_limit=32, batch_size=32, quiet=True)
    result = run_training(config)
    assert result.stopped_early and [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert (result.best_epoch, result.best_acc, result.test["test_acc"]) == (2, 0.7, 0.4)
    assert load_checkpoint(tmp_path / "run" / "best.pt").card.metrics["epoch"] == 2
    resumed = run_cli("train", "--out", tmp_path / "run", "--resume")
    assert resumed.returncode == 0 and "already finished" in resumed.stdout, resumed.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (("--augment", "light"), "--augment applies to image folders"),
        (("--input-size", "2x28x28"), "channels must be 1 (grey) or 3 (RGB)"),
        (("--input-size", "28x0"), "not an input size like 224, 32x48 or 3x224x224"),
        (("--freeze-backbone",), "--freeze-backbone needs --weights"),
        (("--val-fraction", "0"), "--val-fraction"),
    ],
)
def test_bad_training_flags_are_one_line(tmp_path, args, words):
    assert_one_line_error(run_cli("train", "--out", tmp_path / "run", "--epochs", "1", *args), 2, words)


# ---------------------------------------------------------------- fine-tuning


def test_fine_tuning_an_rtool_checkpoint_on_fewer_classes_with_a_frozen_backbone(folder_run, tmp_path):
    """3 classes -> 2: a new fc, the card's input (size, mean/std) kept, the backbone and its BatchNorm statistics
    untouched."""
    _, run, _, _ = folder_run
    root = make_folder(tmp_path / "two", {"": 5}, classes=("cross", "diamond"), seed=3)
    out = tmp_path / "tuned"
    args = ("--weights", run / "best.pt", "--freeze-backbone", "--epochs", "1", "--out", out)
    result = run_cli("train", "--dataset", f"imagefolder:{root}", *FAST, *args)
    assert result.returncode == 0, result.stderr
    assert "(backbone frozen)" in result.stdout.splitlines()[0]
    assert "new classifier for 2 classes" in result.stdout and "mean/std from the card of best.pt" in result.stdout
    before, after = load_checkpoint(run / "best.pt"), load_checkpoint(out / "last.pt")
    assert after.card.input == before.card.input and after.card.class_names == ["cross", "diamond"]
    assert after.card.training["start_weights"]["replaced"] == ["fc.weight", "fc.bias"]
    assert after.card.training["start_weights"]["classes"] == 3
    changed = [k for k in before.state_dict if not k.startswith("fc.")]
    assert all(torch.equal(before.state_dict[k], after.state_dict[k]) for k in changed)  # BN buffers included
    assert after.state_dict["fc.weight"].shape == (2, 64)


def test_fine_tuning_a_torchvision_state_dict(tmp_path):
    """A resnet18.pth-style file (1000 classes): the fc is replaced, ImageNet's mean/std are the card's."""
    from toolkit.models import create_model

    torch.manual_seed(0)
    torch.save(create_model("resnet18").state_dict(), tmp_path / "resnet18.pth")
    root = make_folder(tmp_path / "images", {"": 3}, classes=("circle", "bar"))
    out = tmp_path / "run"
    args = ("--model", "resnet18", "--weights", tmp_path / "resnet18.pth", "--input-size", "32", "--batch-size", "4")
    result = run_cli(
        "train", "--dataset", f"imagefolder:{root}", *args, "--epochs", "1", "--workers", "0", "--out", out
    )
    assert result.returncode == 0, result.stderr
    model, card = load_model(out / "last.pt")
    assert (card.input.mean, card.input.std) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert card.training["start_weights"]["replaced"] == ["fc.weight", "fc.bias"] and card.num_classes == 2
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2)
    wrong = run_cli("train", "--dataset", f"imagefolder:{root}", "--weights", out / "last.pt", "--out", tmp_path / "x")
    assert_one_line_error(wrong, 2, "holds a resnet18, not a resnet20; train it with --model resnet18")


def test_in_memory_data_at_another_input_size(tmp_path):
    """mnist5k at 32x32: the images are resized once; the card says 32x32 and how it was reached."""
    config = TrainConfig(out=str(tmp_path / "run"), input_size="32", epochs=1, train_limit=40, test_limit=8, quiet=True)
    run_training(config)
    spec = load_checkpoint(tmp_path / "run" / "best.pt").card.input
    assert (spec.shape, spec.resize, spec.resize_size) == ((1, 32, 32), "center_crop", 32)
