"""Checkpoints whose pickle would run code are refused on every path that loads one; the payload never runs."""

from __future__ import annotations

import pickle
import shutil
import zipfile

import pytest
import torch

from runtimes import open_runtime
from toolkit.checkpoint import load_checkpoint, load_model, load_pretrained_weights, safe_torch_load
from toolkit.errors import RtoolError, UnsafeFileError
from toolkit.models import create_model

from conftest import assert_one_line_error
from reliability.payloads import hostile_checkpoints
from reliability.runner import run_many

LOADERS = {
    "safe_torch_load": safe_torch_load,
    "load_checkpoint": load_checkpoint,
    "load_model": load_model,
    "load_pretrained_weights": lambda path: load_pretrained_weights(create_model("resnet20", in_channels=1), path),
    "eager runtime": lambda path: open_runtime("eager", path, "cpu"),
}


def test_the_payloads_are_live(tmp_path, marker):
    """Control: loaded the unsafe way, each file really runs its payload (so a missing marker below means refused)."""
    for name, path in hostile_checkpoints(tmp_path / "files", marker).items():
        marker.unlink(missing_ok=True)
        if zipfile.is_zipfile(path):
            torch.load(path, weights_only=False)
        else:
            pickle.loads(path.read_bytes())
        assert marker.exists(), name


@pytest.mark.parametrize("loader", list(LOADERS))
def test_every_loader_refuses_every_hostile_file(tmp_path, marker, loader):
    for name, path in hostile_checkpoints(tmp_path / "files", marker).items():
        with pytest.raises(RtoolError) as refused:
            LOADERS[loader](path)
        message = str(refused.value)
        assert refused.value.exit_code == 2 and "\n" not in message, (name, message)
        if isinstance(refused.value, UnsafeFileError):
            assert "could run code" in message, (name, message)
        else:  # the eager runtime turns a legacy (non-zip) pickle away before torch sees it
            assert loader == "eager runtime" and name.startswith("raw-pickle") and "not a zip archive" in message
        assert not marker.exists(), (name, loader)


def test_every_cli_path_refuses_hostile_checkpoints(tmp_path, marker, export_copy, digit_png):
    """train --resume, eval, export, infer, parity (with and without --no-verify), export --weights."""
    files = hostile_checkpoints(tmp_path / "files", marker)
    run = tmp_path / "runs" / "r20"
    run.mkdir(parents=True)
    shutil.copy(files["zip-disguised-checkpoint"], run / "last.pt")
    shutil.copy(files["zip-disguised-checkpoint"], export_copy / "model.pt")
    commands = {
        "train --resume": ("train", "--out", run, "--resume", "--quiet"),
        "eval": ("eval", files["zip-toplevel"], "--out", tmp_path / "eval"),
        "export": ("export", files["zip-disguised-checkpoint"], "--format", "onnx", "--out", tmp_path / "x1"),
        "infer": ("infer", files["zip-toplevel"], digit_png),
        "infer raw pickle": ("infer", files["raw-pickle-p0"], digit_png),
        "parity": ("parity", export_copy, "--runtimes", "onnxruntime", "--precisions", "fp32", "--limit", "10"),
        "parity --no-verify": (
            "parity",
            export_copy,
            "--runtimes",
            "onnxruntime",
            "--precisions",
            "fp32",
            "--limit",
            "10",
            "--no-verify",
        ),
        "export --weights zip": (
            "export",
            "resnet20",
            "--input-shape",
            "1x28x28",
            "--num-classes",
            "10",
            "--weights",
            files["zip-disguised-state-dict"],
            "--out",
            tmp_path / "x2",
        ),
        "export --weights raw": (
            "export",
            "resnet20",
            "--input-shape",
            "1x28x28",
            "--num-classes",
            "10",
            "--weights",
            files["raw-pickle-p5"],
            "--out",
            tmp_path / "x3",
        ),
    }
    results = run_many(commands)
    for name, result in results.items():
        if name == "parity --no-verify":  # the warning says verification is off; then the load refuses
            warning, *rest = [line for line in result.stderr.splitlines() if line.strip()]
            assert warning.startswith("rtool: warning: --no-verify"), result.stderr
            result.stderr = "\n".join(rest)
        expected = {"parity": "not what was exported", "infer raw pickle": "not a zip archive"}.get(
            name, "could run code"
        )
        assert_one_line_error(result, 2, expected)
        assert not marker.exists(), name
    assert not (tmp_path / "x1").exists() or not any((tmp_path / "x1").iterdir())
    assert not (tmp_path / "eval").exists()
