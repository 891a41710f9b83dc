"""An export folder is checked against the sha256 and sizes in its manifest.json before anything in it runs.

A file changed after export (one byte flipped at the same size, a file grown, another file swapped in) is
refused by `rtool parity` and `rtool infer` with exit 2 and one line; `--no-verify` runs it anyway and
says so loudly first. Every changed file here still loads and runs, so only the check stops it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx

from runtimes import open_runtime
from toolkit.card import MANIFEST_NAME

from conftest import assert_one_line_error
from reliability.payloads import nudge_onnx_weight
from reliability.runner import run_many

PARITY = ("--runtimes", "onnxruntime", "--precisions", "fp32", "--limit", "16")
WARNING = "rtool: warning: --no-verify"
PARITY_SAYS = {  # the size is compared first, then the sha256
    "flipped model.onnx": "model.onnx does not match its sha256",
    "grown model.pt": "model.pt has 1",
}
INFER_PICKS = {
    "grown model.onnx": ("--runtime", "onnxruntime"),
    "fp16 file swapped in as model.onnx": ("--precision", "fp32"),
    "flipped model.int8-cpu.onnx": ("--precision", "int8"),
}


def flip_one_byte(path: Path) -> None:
    """One weight moved by one float32 step: same size, still a valid model, different sha256."""
    size = path.stat().st_size
    nudge_onnx_weight(path)
    assert path.stat().st_size == size


def grow(path: Path) -> None:
    """The same graph with one more metadata entry: larger, still a valid model."""
    model = onnx.load(str(path))
    model.metadata_props.add(key="note", value="edited after export")
    path.write_bytes(model.SerializeToString())


def swap_in(folder: Path, name: str, other: str) -> None:
    shutil.copy(folder / other, folder / name)


def variants(export_copy: Path, tmp_path: Path, only: tuple[str, ...] = ()) -> dict[str, Path]:
    """Copies of the export folder, each changed in one way after export (``only``: just these)."""
    changes = {
        "flipped model.onnx": lambda f: flip_one_byte(f / "model.onnx"),
        "grown model.onnx": lambda f: grow(f / "model.onnx"),
        "fp16 file swapped in as model.onnx": lambda f: swap_in(f, "model.onnx", "model.fp16.onnx"),
        "flipped model.int8-cpu.onnx": lambda f: flip_one_byte(f / "model.int8-cpu.onnx"),
        "grown model.pt": lambda f: (f / "model.pt").write_bytes((f / "model.pt").read_bytes() + b"\0"),
    }
    folders = {}
    for number, (name, change) in enumerate(changes.items()):
        if only and name not in only:
            continue
        folder = Path(shutil.copytree(export_copy, tmp_path / f"changed{number}"))
        change(folder)
        folders[name] = folder
    return folders


def test_changed_files_still_load(export_copy, tmp_path):
    """Control: without the check, every changed ONNX file would run (so the refusals below are the check's)."""
    for name, folder in variants(export_copy, tmp_path).items():
        for file in ("model.onnx", "model.int8-cpu.onnx"):
            with open_runtime("onnxruntime", folder / file, "cpu") as rt:
                assert rt.card is not None, name


def test_parity_and_infer_refuse_changed_files(export_copy, tmp_path, digit_png):
    folders = variants(export_copy, tmp_path)
    commands = {}
    for name, folder in folders.items():  # parity checks the whole folder; infer the one file it picks
        if name in PARITY_SAYS:
            commands[f"parity: {name}"] = ("parity", folder, *PARITY)
        if name in INFER_PICKS:
            commands[f"infer: {name}"] = ("infer", folder, digit_png, *INFER_PICKS[name])
    results = run_many(commands)
    for key, result in results.items():
        command, name = key.split(": ", 1)
        if command == "parity":
            assert_one_line_error(result, 2, "is not what was exported")
            assert PARITY_SAYS[name] in result.stderr and "--no-verify" in result.stderr, result.stderr
        else:
            assert_one_line_error(result, 2, "sha256 differs")
            assert "re-export it" in result.stderr
        assert not result.stdout.strip(), (key, result.stdout)  # refused before anything ran


def test_no_verify_runs_anyway_with_a_loud_warning(export_copy, tmp_path, digit_png):
    folder = variants(export_copy, tmp_path, only=("flipped model.onnx",))["flipped model.onnx"]
    results = run_many(
        {
            "parity": ("parity", folder, *PARITY, "--no-verify", "--json", tmp_path / "parity.json"),
            "infer": ("infer", folder, digit_png, "--no-verify", "--json"),
        }
    )
    for name, result in results.items():
        assert result.returncode == 0, (name, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines[0].startswith(WARNING) and "NOT checked against the sha256" in lines[0], result.stderr
        assert "Traceback" not in result.stderr
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] is True  # one float32 step in one weight: the runtimes still agree
    predictions = json.loads(results["infer"].stdout)["predictions"]
    assert len(predictions) == 1 and predictions[0]["source"] == str(digit_png)
    assert json.loads((folder / MANIFEST_NAME).read_text())  # the manifest itself was left alone
