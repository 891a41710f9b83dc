"""`rtool export` as a user runs it: the table, the JSON, and one clear line for each bad input.

Each command line goes through the real entry point in this process (``conftest.run_cli``), one after another.
"""

from __future__ import annotations

import json

from conftest import assert_one_line_error, run_cli


def _run_all(cases: dict[str, list]) -> dict:
    return {name: run_cli("export", *args) for name, args in cases.items()}


def test_export_prints_table_or_json_and_writes_beside_checkpoint(untrained_checkpoint, tmp_path):
    checkpoint = tmp_path / "run" / "best.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(untrained_checkpoint.read_bytes())
    results = _run_all(
        {
            "table": [checkpoint, "--format", "torchscript"],
            "json": [untrained_checkpoint, "--format", "torchscript", "--out", tmp_path / "j", "--json"],
        }
    )
    table = results["table"]
    assert table.returncode == 0, table.stderr
    assert "model.ts" in table.stdout and "model.pt" in table.stdout and "manifest" in table.stdout
    assert "torchscript fp32 -> model.ts" in table.stderr  # progress
    manifest = json.loads((tmp_path / "run" / "export" / "manifest.json").read_text())
    assert [a["file"] for a in manifest["artifacts"]] == ["model.pt", "model.ts"]
    document = json.loads(results["json"].stdout)
    assert [a["file"] for a in document["artifacts"]] == ["model.pt", "model.ts"]
    assert document["artifacts"][1]["max_abs_diff"] < 1e-4


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(untrained_checkpoint, tmp_path):
    data = untrained_checkpoint.read_bytes()
    truncated, garbage, blocker = tmp_path / "truncated.pt", tmp_path / "garbage.pt", tmp_path / "a-file"
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(b"PK\x03\x04 not really a checkpoint" * 8)
    blocker.write_text("not a folder")
    out = ["--out", tmp_path / "out"]
    cases = {
        "unknown format": ([untrained_checkpoint, "--format", "onnx3", *out], "unknown format"),
        "unknown precision": ([untrained_checkpoint, "--precision", "fp8", *out], "unknown precision"),
        "precision the format lacks": (
            [untrained_checkpoint, "--format", "torchscript", "--precision", "int8", *out],
            "exports fp32",
        ),
        "bad opset": ([untrained_checkpoint, "--opset", "11", *out], "opset 11"),
        "bad calibration size": (
            [untrained_checkpoint, "--precision", "int8", "--calib-size", "0", *out],
            "calib-size",
        ),
        "truncated checkpoint": ([truncated, *out], "checkpoint"),
        "garbage checkpoint": ([garbage, *out], "checkpoint"),
        "missing checkpoint": ([tmp_path / "nope.pt", *out], "does not exist"),
        "unwritable output": (
            [untrained_checkpoint, "--format", "torchscript", "--out", blocker / "sub"],
            "cannot create output folder",
        ),
    }
    results = _run_all({name: args for name, (args, _) in cases.items()})
    for name, (_, message) in cases.items():
        try:
            assert_one_line_error(results[name], 2, message)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None
    assert not (tmp_path / "out").exists()
