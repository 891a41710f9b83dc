"""Counts bounded by what the machine has, values that used to be taken silently, and messages that point to the
right command: each one line and exit 2, checked before any work.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from toolkit.errors import BadInputError
from toolkit.manifest import sha256_file

from conftest import REPO, assert_one_line_error, run_cli, run_rtool


@pytest.fixture(scope="module")
def run_folder(untrained_checkpoint, tmp_path_factory):
    """A training run's folder as `rtool train` leaves it: best.pt, no manifest."""
    folder = tmp_path_factory.mktemp("run") / "shapes"
    folder.mkdir()
    shutil.copy(untrained_checkpoint, folder / "best.pt")
    return folder


def test_bad_values_are_one_line(cpu_export_dir, untrained_checkpoint, digit_png, tmp_path):
    out = ("--out", tmp_path / "x")
    rows = {
        "opset 0 (was taken as 18)": (("export", untrained_checkpoint, "--opset", "0", *out), "opset 0"),
        "triton batch beyond int32": (
            ("export", untrained_checkpoint, "--format", "triton", "--triton-max-batch", "99999999999", *out),
            "99999999999",
        ),
        "triton name with a newline": (
            ("export", untrained_checkpoint, "--format", "triton", "--triton-model-name", "a\nb", *out),
            "--triton-model-name",
        ),
        "classes beyond any model": (
            ("export", "resnet20", "--num-classes", "2000000000", *out),
            "--num-classes",
        ),
        "agreement above 100%": (
            ("parity", cpu_export_dir, "--threshold", "fp32.agreement=200", "--limit", "5"),
            "above 100",
        ),
        "threads beyond the machine": (
            ("infer", cpu_export_dir / "model.onnx", digit_png, "--threads", "1000000"),
            "--threads",
        ),
        "bench batch beyond any export": (("bench", cpu_export_dir, "--batch-sizes", "100000"), "--batch-sizes"),
        "json output names a folder": (("parity", cpu_export_dir, "--json", tmp_path, "--limit", "5"), "is a folder"),
    }
    for name, (args, says) in rows.items():
        result = run_cli(*args)
        assert_one_line_error(result, 2, says)
        assert not (tmp_path / "x").exists(), name


def test_hints_name_the_right_command(run_folder, untrained_checkpoint, cpu_export_dir, digit_png):
    assert_one_line_error(run_cli("infer", run_folder, digit_png), 2, f"rtool export {run_folder / 'best.pt'}")
    assert_one_line_error(run_cli("parity", untrained_checkpoint), 2, "is a file, not an export folder")
    assert_one_line_error(run_cli("eval", cpu_export_dir), 2, f"rtool parity {cpu_export_dir}")


def test_bench_skips_files_no_runtime_runs(embed_export_dir, tmp_path):
    """An export with an app variant (runtime onnx_app) and a Triton repository times what rtool runs."""
    folder = shutil.copytree(embed_export_dir, tmp_path / "export")
    result = run_cli("bench", folder, "--batch-sizes", "1", "--warmup", "0", "--iters", "2", "--json", "-")
    assert result.returncode == 0, result.stderr
    runtimes = {row["runtime"] for row in json.loads(result.stdout)["rows"]}
    assert "onnxruntime" in runtimes and not runtimes & {"onnx_app", "triton"}


def test_a_closed_pipe_is_not_a_failed_check(cpu_export_dir, digit_png):
    """`rtool infer ... | head -1`: the reader leaves early; exit 0 (1 means a check failed)."""
    images = [str(digit_png)] * 400
    process = subprocess.Popen(
        [sys.executable, "-m", "toolkit.cli", "infer", str(cpu_export_dir / "model.onnx"), *images],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    process.stdout.readline()
    process.stdout.close()  # as `head -1` does
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) == 0, stderr
    assert "Traceback" not in stderr


def test_shapes_beyond_any_model_are_one_line(tmp_path):
    assert_one_line_error(run_cli("summary", "resnet20", "--input", "99999999999999999999x3x32x32"), 2, "at most")
    result = run_cli("export", "resnet20", "--input-shape", "3x100000x100000", "--out", tmp_path / "x")
    assert_one_line_error(result, 2, "at most 8192")


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda m: m.update(manifest_version="abc"), "manifest_version"),
        (lambda m: m.update(manifest_version=None), "manifest_version"),
        (lambda m: m["artifacts"].append("model.onnx"), "malformed entry"),
        (lambda m: m["artifacts"].append({"file": ["a"]}), "malformed entry"),
    ],
)
def test_a_damaged_manifest_is_one_line(export_copy, change, says):
    manifest = json.loads((export_copy / "manifest.json").read_text())
    change(manifest)
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    for command in (("parity", export_copy, "--limit", "5"), ("bench", export_copy, "--batch-sizes", "1")):
        assert_one_line_error(run_cli(*command), 2, says)


def test_a_deeply_nested_manifest_is_one_line(export_copy):
    (export_copy / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    assert_one_line_error(run_cli("parity", export_copy, "--limit", "5"), 2, "nests JSON")


def test_an_unreadable_file_in_an_export_folder_is_one_line(export_copy):
    target = export_copy / "model.onnx"
    target.unlink()
    target.mkdir()  # unreadable as a file whatever the user's rights (root reads any mode)
    assert_one_line_error(run_cli("parity", export_copy, "--limit", "5"), 2)
    with pytest.raises(BadInputError, match="cannot read"):  # what every sha256 check raises on an OSError
        sha256_file(target)


@pytest.mark.parametrize("file", ["model.ts", "model.pt2"])
def test_no_library_warning_reaches_stderr(cpu_export_dir, file):
    """A real process (warnings filters are per process): torch's TorchScript/export notices stay out of stderr."""
    result = run_rtool("infer", cpu_export_dir / file, "--dataset", "mnist5k", "--first", "3")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
