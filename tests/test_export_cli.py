"""`rtool export` as a user runs it: the table and manifest, and one clear line for each bad input."""

from __future__ import annotations

import json

import pytest

from conftest import assert_one_line_error, run_rtool


def test_export_prints_table_and_writes_beside_checkpoint(untrained_checkpoint, tmp_path):
    checkpoint = tmp_path / "run" / "best.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(untrained_checkpoint.read_bytes())
    result = run_rtool("export", checkpoint, "--format", "torchscript")
    assert result.returncode == 0, result.stderr
    assert "model.ts" in result.stdout and "model.pt" in result.stdout and "manifest" in result.stdout
    assert "torchscript fp32 -> model.ts" in result.stderr  # progress
    manifest = json.loads((tmp_path / "run" / "export" / "manifest.json").read_text())
    assert [a["file"] for a in manifest["artifacts"]] == ["model.pt", "model.ts"]


def test_export_json_output(untrained_checkpoint, tmp_path):
    result = run_rtool("export", untrained_checkpoint, "--format", "torchscript", "--out", tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [a["file"] for a in document["artifacts"]] == ["model.pt", "model.ts"]
    assert document["artifacts"][1]["max_abs_diff"] < 1e-4


def _damaged(source, folder, how):
    data = source.read_bytes()
    path = folder / f"{how}.pt"
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else b"PK\x03\x04 not really a checkpoint" * 8)
    return path


@pytest.mark.parametrize("args, message", [
    (["--format", "onnx3"], "unknown format"),
    (["--precision", "fp8"], "unknown precision"),
    (["--format", "torchscript", "--precision", "int8"], "exports fp32"),
    (["--opset", "11"], "opset 11"),
    (["--format", "onnx", "--precision", "int8", "--calib-size", "0"], "calib-size"),
])
def test_bad_options_exit_2_with_one_line(untrained_checkpoint, tmp_path, args, message):
    result = run_rtool("export", untrained_checkpoint, "--out", tmp_path / "out", *args)
    assert_one_line_error(result, 2, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_damaged_checkpoint_exits_2(untrained_checkpoint, tmp_path, how):
    result = run_rtool("export", _damaged(untrained_checkpoint, tmp_path, how), "--out", tmp_path / "out")
    assert_one_line_error(result, 2, "checkpoint")
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_and_unwritable_output_exit_2(untrained_checkpoint, tmp_path):
    assert_one_line_error(run_rtool("export", tmp_path / "nope.pt"), 2, "does not exist")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_rtool("export", untrained_checkpoint, "--format", "torchscript", "--out", blocker / "sub")
    assert_one_line_error(result, 2, "cannot create output folder")
