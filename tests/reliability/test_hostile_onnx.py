"""Hostile ONNX files: external data that leaves the model's folder is refused before anything of it is
opened; absurd sizes and truncated files end in exit 2 and one line, never a hang or an out-of-memory kill.

The escaping files point at a named pipe with no writer as well as at a regular file: opening the pipe
for reading blocks forever, so a loader that merely opens the target would hang, and every subprocess
here runs under a timeout (and the CLI under an address-space limit) to turn that into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest

from runtimes import open_runtime
from toolkit.errors import BadInputError, UnsafeFileError
from toolkit.safety import check_onnx_file

from conftest import REPO, assert_one_line_error
from reliability.payloads import (
    absurd_onnx_models,
    computed_shape_model,
    escaping_onnx_models,
    external_weight_bytes,
    move_to_external,
    truncated_copies,
)

TIMEOUT = 60  # seconds: far above the second these take; a loader stuck on the pipe hits it
MEMORY_LIMIT = 4 << 30  # address space of each CLI process: a runtime that tried to honour 10^12 elements fails fast
REFUSED = "may only use data files inside its own folder"


# Sets the memory limit in the child, then runs the module as `python -m` would. (Not a preexec_fn: that runs
# Python between fork and exec, which can deadlock when this process has other threads, as run_all's do.)
LIMITED_LAUNCH = (
    "import resource, runpy, sys; "
    f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT})); "
    "del sys.argv[0]; runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
)


def run_limited(*args: object, module: str = "toolkit.cli") -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` as a user runs it, under a timeout and a memory limit."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    try:
        return subprocess.run(
            [sys.executable, "-c", LIMITED_LAUNCH, module, *map(str, args)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{module} {' '.join(map(str, args))} hung for {TIMEOUT}s (did it open the pipe?)")


def run_all(commands: dict[str, tuple], module: str = "toolkit.cli") -> dict[str, subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(run_limited, *args, module=module) for key, args in commands.items()}
        return {key: future.result() for key, future in futures.items()}


@pytest.fixture
def escaping(tmp_path, cpu_export_dir) -> dict[str, tuple[Path, Path]]:
    return escaping_onnx_models(cpu_export_dir / "model.onnx", tmp_path / "hostile")


def test_the_escaping_files_are_live(escaping, cpu_export_dir, digit_png, tmp_path):
    """Control: each reference really reaches the outside file holding the true weights, and the same
    reference kept inside the folder is accepted and runs exactly like the exported model."""
    weights = external_weight_bytes(cpu_export_dir / "model.onnx")
    for name, (path, target) in escaping.items():
        model = onnx.load(str(path), load_external_data=False)
        tensor = next(t for t in model.graph.initializer if t.external_data)
        location = {e.key: e.value for e in tensor.external_data}["location"]
        assert (path.parent / location).resolve() == target.resolve(), name
        if name.endswith("/bin"):
            assert (path.parent / location).read_bytes() == weights, name
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "weights.bin").write_bytes(weights)
    legit = move_to_external(cpu_export_dir / "model.onnx", inside / "model.onnx", "weights.bin")
    batch = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    with (
        open_runtime("onnxruntime", legit, "cpu") as rt,
        open_runtime("onnxruntime", cpu_export_dir / "model.onnx", "cpu") as reference,
    ):
        assert np.array_equal(rt.infer(batch), reference.infer(batch))


IN_PROCESS = """
import json, sys
from pathlib import Path
from runtimes import open_runtime
from runtimes.cards import read_card
from runtimes.onnx_app import Predictor
from toolkit.safety import check_onnx_file
loaders = {"check_onnx_file": check_onnx_file, "read_card": read_card,
           "onnxruntime runtime": lambda p: open_runtime("onnxruntime", p, "cpu"), "onnx_app.Predictor": Predictor}
out = {}
for path in sys.argv[1:]:
    for name, load in loaders.items():
        try:
            load(Path(path))
            out[f"{path} {name}"] = ["loaded", ""]
        except Exception as e:
            out[f"{path} {name}"] = [type(e).__name__, str(e)]
        print(json.dumps(out), flush=True)
"""


def test_every_loader_refuses_escaping_external_data_without_opening_it(escaping):
    """rtool's checks, the onnxruntime runtime, read_card and the torch-free predictor, in a fresh process
    (a loader that opened the pipe would hang it)."""
    paths = [str(path) for path, _ in escaping.values()]
    try:
        result = subprocess.run(
            [sys.executable, "-c", IN_PROCESS, *paths],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    except subprocess.TimeoutExpired as e:
        done = (e.stdout or b"").decode().strip().splitlines()
        pytest.fail(f"a loader hung on a pipe outside the model's folder; finished before it: {done[-1:]}")
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(outcomes) == 4 * len(escaping)
    for key, (kind, message) in outcomes.items():
        assert "\n" not in message, (key, message)
        if key.endswith("onnx_app.Predictor"):  # onnxruntime's own check, reported as the predictor's error
            assert kind == "PredictorError" and "External data path validation failed" in message, (key, message)
        else:
            assert kind == "UnsafeFileError" and REFUSED in message, (key, kind, message)


def test_cli_refuses_escaping_external_data(escaping, export_copy, digit_png, tmp_path):
    """rtool infer on each file, on an export folder holding one (--no-verify), rtool eval and parity; and
    the predictor's own command line. The pipe stands where the folder's ``../`` leads, too."""
    commands = {f"infer {name}": ("infer", path, digit_png) for name, (path, _) in escaping.items()}
    shutil.copy(escaping["dot-dot/fifo"][0], export_copy / "model.onnx")
    (export_copy.parent / "outside").mkdir()
    os.mkfifo(export_copy.parent / "outside" / "weights.fifo")
    commands.update(
        {
            "infer folder --no-verify": ("infer", export_copy, digit_png, "--no-verify"),
            "eval": ("eval", escaping["symlink/fifo"][0], "--limit", "8", "--out", tmp_path / "eval"),
            "parity --no-verify": (
                "parity",
                export_copy,
                "--runtimes",
                "onnxruntime",
                "--precisions",
                "fp32",
                "--limit",
                "8",
                "--no-verify",
            ),
        }
    )
    for name, result in run_all(commands).items():
        if "--no-verify" in name:
            warning, *rest = [line for line in result.stderr.splitlines() if line.strip()]
            assert warning.startswith("rtool: warning: --no-verify"), result.stderr
            result.stderr = "\n".join(rest)
        # parity reports every row: a refused file is a failed row (exit 1) whose reason is the refusal
        assert_one_line_error(result, 1 if name.startswith("parity") else 2, REFUSED)
        assert "refused" in result.stderr, name
    assert not (tmp_path / "eval").exists()
    app = run_all(
        {name: (path, digit_png) for name, (path, _) in escaping.items() if name.endswith("fifo")},
        module="runtimes.onnx_app",
    )
    for name, result in app.items():
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (name, result.stderr)
        assert lines[0].startswith("onnx_app: error:") and "External data path" in lines[0], lines[0]


@pytest.fixture
def broken(tmp_path, cpu_export_dir) -> dict[str, Path]:
    """Files claiming 10^12-element tensors, 2^40-sized inputs or shapes, bytes beyond their data file, a
    4 TB tensor computed at run time, and the exported model cut short at four points."""
    files = absurd_onnx_models(tmp_path / "absurd")
    files["computed-shape-2^40"] = computed_shape_model(cpu_export_dir / "model.onnx", tmp_path / "computed" / "m.onnx")
    files.update(truncated_copies(cpu_export_dir / "model.onnx", tmp_path / "cut"))
    empty = tmp_path / "empty" / "model.onnx"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    files["empty"] = empty
    return files


def test_absurd_and_truncated_files_in_process(broken):
    for name, path in broken.items():
        if name == "computed-shape-2^40":  # nothing to see before it runs: it fails when it runs
            with open_runtime("onnxruntime", path, "cpu") as rt, pytest.raises(BadInputError) as failed:
                rt.infer(np.zeros((1, 1, 28, 28), dtype=np.float32))
            assert "ONNX Runtime failed to run this model" in str(failed.value)
            continue
        with pytest.raises(BadInputError) as refused:
            check_onnx_file(path)
        assert not isinstance(refused.value, UnsafeFileError) and "\n" not in str(refused.value), name
        with pytest.raises(BadInputError):
            open_runtime("onnxruntime", path, "cpu")


def test_absurd_and_truncated_files_give_one_line_not_a_hang(broken, digit_png):
    """rtool infer and the predictor under a 4 GiB address-space limit: exit 2, one line each."""
    expected = {
        "computed-shape-2^40": "failed to run this model",
        "external-length-beyond-file": "beyond the end",
        "empty": "not a loadable ONNX model",
    }
    results = run_all({name: ("infer", path, digit_png) for name, path in broken.items()})
    for name, result in results.items():
        why = expected.get(name, "not a loadable ONNX model" if name.startswith("truncated") else "corrupt or hostile")
        assert_one_line_error(result, 2, why)
    app = run_all({name: (path, digit_png) for name, path in broken.items()}, module="runtimes.onnx_app")
    for name, result in app.items():
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("onnx_app: error:"), (
            name,
            result.returncode,
            result.stderr[-2000:],
        )
