"""Every bad input in one table: exit code 2 and exactly one line saying what is wrong and what to do.

Each row is a real `rtool` process (two at a time). An image of another size or colour mode is not an
error: rtool converts it as the model card says and notes that on one line (exit 0). The API rows feed
NaN/Inf and malformed batches to loaded runtimes directly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtimes import open_runtime
from toolkit.errors import BadInputError

from conftest import assert_one_line_error
from reliability.runner import run_many


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_inputs")
    Image.fromarray(np.full((40, 50, 3), 200, dtype=np.uint8)).save(folder / "rgb50x40.png")
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8), mode="L").save(folder / "grey12x10.png")
    (folder / "notes.png").write_text("this is not an image")
    png = (folder / "rgb50x40.png").read_bytes()
    (folder / "cut.png").write_bytes(png[: len(png) // 2])
    (folder / "empty").mkdir()
    (folder / "a-file").write_text("a regular file where a folder is expected")
    return {p.name: p for p in folder.iterdir()} | {"folder": folder}


@pytest.fixture(scope="module")
def read_only(tmp_path_factory) -> tuple[Path | None, str]:
    """An existing, empty folder nobody may write in: chmod where that binds, else (root) the immutable flag."""
    folder = tmp_path_factory.mktemp("read_only")
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = lambda: folder.chmod(0o755)  # noqa: E731
    else:  # root ignores permission bits; the immutable attribute binds root too
        chattr = shutil.which("chattr")
        made = chattr and subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode == 0
        undo = (lambda: subprocess.run([chattr, "-i", str(folder)], check=True)) if made else (lambda: None)
    if os.access(folder, os.W_OK):
        undo()
        yield None, "running as root where `chattr +i` is unavailable: no folder here is read-only for this process"
        return
    yield folder, ""
    undo()


def table(ckpt: Path, export: Path, digit: Path, f: dict[str, Path], ro: Path | None) -> dict[str, tuple]:
    """name -> (arguments, what the line must say, exit code)."""
    onnx_file = export / "model.onnx"  # infer on ONNX files needs no PyTorch: those rows are quick
    out = f["folder"] / "out"
    rows = {
        # images and data
        "image of another size and colour": (
            ("infer", onnx_file, f["rgb50x40.png"]),
            "rgb50x40.png is 50x40 RGB; converted to 28x28 L as the model card says",
            0,
        ),
        "grey image of another size": (("infer", onnx_file, f["grey12x10.png"]), "converted to 28x28 L", 0),
        "not an image": (("infer", onnx_file, f["notes.png"]), "notes.png is not a usable image", 2),
        "truncated image": (("infer", onnx_file, f["cut.png"]), "cut.png is not a usable image", 2),
        "folder without images": (("infer", onnx_file, f["empty"]), "holds no image files (looked for .bmp", 2),
        "glob without matches": (("infer", onnx_file, f["folder"] / "*.jpeg"), "matches no files; check the", 2),
        "image does not exist": (("infer", onnx_file, f["folder"] / "nope.png"), "does not exist; give image files", 2),
        "empty folder as model": (("infer", f["empty"], digit), "has no manifest.json; make one with `rtool export", 2),
        "model does not exist": (("infer", f["folder"] / "nope.onnx", digit), "does not exist (give a checkpoint", 2),
        "no runtime for the file": (
            ("infer", f["notes.png"], digit),
            "no runtime opens 'notes.png'; expected one of",
            2,
        ),
        "nothing to predict": (("infer", onnx_file), "nothing to predict: give image files, folders or globs", 2),
        "empty image folder data set": (
            ("train", "--dataset", f"imagefolder:{f['empty']}", "--out", out / "t1"),
            "has no class sub-folders; lay it out as",
            2,
        ),
        "image folder does not exist": (
            ("train", "--dataset", "imagefolder:/nonexistent/images", "--out", out / "t2"),
            "does not exist; pass --dataset imagefolder:PATH",
            2,
        ),
        # names
        "unknown model": (
            ("train", "--model", "resnet9000", "--out", out / "t3"),
            "unknown model 'resnet9000'; choose one of",
            2,
        ),
        "unknown model to export": (
            ("export", "resnet9000", "--input-shape", "1x28x28", "--out", out / "x1"),
            "unknown model 'resnet9000'; choose one of",
            2,
        ),
        "unknown data set": (
            ("train", "--dataset", "nosuchdata", "--out", out / "t4"),
            "unknown data set 'nosuchdata'; choose one of",
            2,
        ),
        "unknown format": (
            ("export", ckpt, "--format", "tflite", "--out", out / "x2"),
            "unknown format 'tflite'; choose one of",
            2,
        ),
        "unknown runtime": (("infer", onnx_file, digit, "--runtime", "tvm"), "unknown runtime 'tvm'; choose one of", 2),
        "unknown runtime to compare": (("parity", export, "--runtimes", "tvm"), "unknown 'tvm'; choose from", 2),
        "unknown provider": (("infer", onnx_file, digit, "--provider", "rocm"), "'rocm' is not one of", 2),
        # numbers out of range
        "zero epochs": (("train", "--epochs", "0", "--out", out / "t5"), "--epochs': 0 is not in the range 1<=x<=", 2),
        "negative batch size": (
            ("train", "--batch-size", "-1", "--out", out / "t6"),
            "--batch-size': -1 is not in the range",
            2,
        ),
        "zero learning rate": (("train", "--lr", "0", "--out", out / "t7"), "--lr': 0.0 is not in the range x>0", 2),
        "more images than the data set": (
            ("infer", onnx_file, "--dataset", "mnist5k", "--first", "100000"),
            "--first 100000 is more than the 1000 test images of mnist5k",
            2,
        ),
        "zero calibration images": (
            ("export", ckpt, "--precision", "int8", "--calib-size", "0", "--out", out / "x4"),
            "'--calib-size': 0 is not in the range 1<=x<=",
            2,
        ),
        "zero test images to score": (("eval", ckpt, "--limit", "0"), "--limit': 0 is not in the range x>=1", 2),
        "zero test images to compare": (("parity", export, "--limit", "0"), "--limit': 0 is not in the range x>=1", 2),
        "zero classes shown": (("infer", onnx_file, digit, "--topk", "0"), "--topk': 0 is not in the range x>=1", 2),
        "zero batch size to time": (("bench", ckpt, "--batch-sizes", "0"), "give positive integers like 1,8,32", 2),
        # output paths
        "run folder under a file": (
            ("train", "--out", f["a-file"] / "run"),
            "a-file is a file, not a folder; choose another --out",
            2,
        ),
        "grid under a file": (
            ("infer", onnx_file, digit, "--save-grid", f["a-file"] / "grid.png"),
            "is a file, not a folder; choose another --save-grid",
            2,
        ),
        "CSV under a file": (
            ("infer", onnx_file, digit, "--csv", f["a-file"] / "rows.csv"),
            "is a file, not a folder; choose another --csv",
            2,
        ),
        "CSV and JSON both on stdout": (
            ("infer", onnx_file, digit, "--csv", "-", "--json"),
            "--json and --csv - both write to stdout; give --csv a file name",
            2,
        ),
        "parity JSON under a file": (
            ("parity", export, "--json", f["a-file"] / "p.json"),
            "is a file, not a folder; choose another --json",
            2,
        ),
        "eval folder under a file": (
            ("eval", ckpt, "--out", f["a-file"] / "eval"),
            "is a file, not a folder; choose another --out",
            2,
        ),
    }
    if ro is not None:
        rows.update(
            {
                "read-only run folder": (("train", "--out", ro), "is not writable; choose another --out", 2),
                "read-only export folder": (("export", ckpt, "--out", ro), "is not writable; choose another --out", 2),
                "grid in a read-only folder": (
                    ("infer", onnx_file, digit, "--save-grid", ro / "grid.png"),
                    "is not writable; choose another --save-grid",
                    2,
                ),
                "parity Markdown in a read-only folder": (
                    ("parity", export, "--markdown", ro / "p.md"),
                    "is not writable; choose another --markdown",
                    2,
                ),
                "eval into a read-only folder": (
                    ("eval", ckpt, "--out", ro),
                    "is not writable; choose another --out",
                    2,
                ),
            }
        )
    return rows


def test_every_bad_input_gives_exit_2_and_one_line(untrained_checkpoint, cpu_export_dir, digit_png, files, read_only):
    ro, why_not = read_only
    rows = table(untrained_checkpoint, cpu_export_dir, digit_png, files, ro)
    results = run_many({name: args for name, (args, _, _) in rows.items()})
    failures = []
    for name, (_args, says, code) in rows.items():
        result = results[name]
        try:
            if code == 0:  # converted, and said so on one line
                assert result.returncode == 0, result.stderr
                lines = [line for line in result.stderr.splitlines() if line.strip()]
                assert lines == [f"rtool: note: {lines[0][len('rtool: note: ') :]}"] and says in lines[0], lines
            else:
                assert_one_line_error(result, code, says)
        except AssertionError as e:
            failures.append(f"{name}: {e}")
    assert not failures, "\n".join(failures)
    assert not (files["folder"] / "out").exists(), "a refused command left an output folder behind"
    if ro is not None:
        assert not any(ro.iterdir())
    else:
        pytest.skip(f"read-only output folder rows not run: {why_not}")


@pytest.mark.parametrize(
    "runtime, file", [("onnxruntime", "model.onnx"), ("onnxruntime", "model.int8-cpu.onnx"), ("eager", "model.pt")]
)
def test_runtimes_refuse_nan_inf_and_malformed_batches(cpu_export_dir, runtime, file):
    good = np.zeros((2, 1, 28, 28), dtype=np.float32)
    bad = {
        "NaN": (good.copy(), "2 NaN/Inf values"),
        "+Inf": (good.copy(), "1 NaN/Inf values"),
        "-Inf": (good.copy(), "1 NaN/Inf values"),
        "wrong shape": (np.zeros((2, 3, 28, 28), dtype=np.float32), "the model takes (N, 1, 28, 28)"),
        "no batch axis": (np.zeros((1, 28, 28), dtype=np.float32), "the model takes (N, 1, 28, 28)"),
        "uint8 pixels": (np.zeros((2, 1, 28, 28), dtype=np.uint8), "expected float input, got uint8"),
        "a list": ([[0.0]], "expected a numpy array, got list"),
    }
    bad["NaN"][0][0, 0, 3, 3] = bad["NaN"][0][1, 0, 0, 0] = np.nan
    bad["+Inf"][0][1, 0, 27, 27] = np.inf
    bad["-Inf"][0][0, 0, 0, 0] = -np.inf
    with open_runtime(runtime, cpu_export_dir / file, "cpu") as rt:
        assert np.isfinite(rt.infer(good)).all()
        for name, (batch, says) in bad.items():
            with pytest.raises(BadInputError) as refused:
                rt.infer(batch)
            assert says in str(refused.value) and "\n" not in str(refused.value), (name, str(refused.value))
