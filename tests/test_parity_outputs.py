"""Parity across machines: outputs saved by one process, judged in another, and refused when they do not fit.

Two real `rtool` processes stand for the two machines (a CPU box that saves,
a GPU box that loads); the error cases run the CLI in-process.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from toolkit import cli
from toolkit.bench import bench_export_dir, run_bench
from toolkit.card import MANIFEST_NAME
from toolkit.parity import ParityRow, run_parity, stored_rows
from toolkit.parity_outputs import load_outputs, save_outputs
from toolkit.thresholds import default_thresholds

from conftest import assert_one_line_error, run_rtool

COMMON = ("--precisions", "fp32", "--limit", "40")


@pytest.fixture(scope="module")
def saved(cpu_export_dir, tmp_path_factory) -> tuple[Path, dict]:
    """The first machine: `rtool parity --save-outputs` in its own process; (outputs file, its JSON report)."""
    path = tmp_path_factory.mktemp("outputs") / "cpu-box.npz"
    result = run_rtool(
        "parity", cpu_export_dir, "--runtimes", "onnxruntime", *COMMON, "--save-outputs", path, "--json", "-"
    )
    assert result.returncode == 0, result.stderr
    assert path.is_file() and not path.with_suffix(".npz.npz").exists()
    return path, json.loads(result.stdout)


def rewrite(source: Path, target: Path, change) -> Path:
    """A copy of an outputs file with ``change(arrays)`` applied and nothing else touched (no digest updated)."""
    with np.load(source, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    change(arrays)
    with open(target, "wb") as f:
        np.savez_compressed(f, **arrays)
    return target


def test_device_defaults_to_auto_everywhere():
    """Each runtime on its own best device unless told otherwise: the CLI and the library say the same."""
    for command in (cli.parity, cli.bench, cli.infer, cli.evaluate):
        [device] = [p for p in command.params if p.name == "device"]
        assert device.default == "auto", command.name
    for function in (run_parity, run_bench, bench_export_dir):
        assert inspect.signature(function).parameters["device"].default == "auto", function.__name__


def test_second_process_judges_its_rows_against_the_stored_reference(saved, cpu_export_dir):
    path, first = saved
    runtimes = ("--runtimes", "eager,onnxruntime,torchscript")
    result = run_rtool("parity", cpu_export_dir, *runtimes, *COMMON, "--load-outputs", path, "--json", "-")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["machines"]) == {"saved", "here"}
    assert report["reference"]["machine"] == "saved"
    assert report["reference"]["accuracy"] == first["reference"]["accuracy"]
    rows = {(r["machine"], r["artifact"]): r for r in report["rows"]}
    # the stored rows are measured again from their stored logits: the same figures as on the first machine
    for before in first["rows"]:  # model.onnx and model.ort
        again = rows[("saved", before["artifact"])]
        assert (again["agreement"], again["max_abs_diff"]) == (before["agreement"], before["max_abs_diff"])
    # this machine's rows, eager included, against the stored reference
    for key in (("here", "model.pt"), ("here", "model.onnx"), ("here", "model.ort"), ("here", "model.ts")):
        assert rows[key]["status"] == "ok", rows[key]
        assert rows[key]["agreement"] == 100.0
    assert rows[("here", "model.pt")]["max_abs_diff"] < 1e-4


def test_a_file_changed_after_it_was_saved_is_refused(saved, cpu_export_dir, tmp_path, rtool):
    path, _ = saved

    def nudge_row(arrays):
        arrays["row0"] = arrays["row0"] + np.float32(0.5)

    def other_images(arrays):
        meta = json.loads(str(arrays["meta"][()]))
        meta["inputs_sha256"] = "0" * 64
        text = json.dumps(meta)
        arrays["meta"], arrays["meta_sha256"] = np.array(text), np.array(hashlib.sha256(text.encode()).hexdigest())

    changed = rewrite(path, tmp_path / "changed.npz", nudge_row)
    args = ("parity", cpu_export_dir, "--runtimes", "onnxruntime", "--precisions", "fp32")
    assert_one_line_error(rtool(*args, "--load-outputs", changed), 2, "changed after it was saved")
    header = rewrite(path, tmp_path / "header.npz", lambda a: a.update(meta=np.array(str(a["meta"][()]) + " ")))
    assert_one_line_error(rtool(*args, "--load-outputs", header), 2, "header does not match")
    images = rewrite(path, tmp_path / "images.npz", other_images)
    assert_one_line_error(rtool(*args, "--load-outputs", images), 2, "saved on other test images")


def test_another_model_or_test_set_is_refused(saved, cpu_export_dir, tmp_path, rtool):
    path, _ = saved
    other = tmp_path / "export"
    shutil.copytree(cpu_export_dir, other)
    manifest = json.loads((other / MANIFEST_NAME).read_text())
    manifest["card"]["metrics"] = {"test_acc": 0.5}  # another training run of the same architecture
    (other / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert_one_line_error(rtool("parity", other, "--load-outputs", path), 2, "outputs of another model")
    args = ("parity", cpu_export_dir, "--load-outputs", path)
    assert_one_line_error(rtool(*args, "--limit", "30"), 2, "saved with --limit 40")
    assert_one_line_error(rtool(*args, "--dataset", "mnist"), 2, "saved on mnist5k, not mnist")
    assert_one_line_error(rtool(*args, "--save-outputs", tmp_path / "x.npz"), 2, "one at a time")


def test_files_that_are_not_outputs_are_refused_without_unpickling(cpu_export_dir, tmp_path, rtool):
    args = ("parity", cpu_export_dir, "--load-outputs")
    (tmp_path / "text.npz").write_text("not a zip")
    assert_one_line_error(rtool(*args, tmp_path / "text.npz"), 2, "not an rtool parity outputs file")
    with open(tmp_path / "pickled.npz", "wb") as f:
        np.savez(f, meta=np.array([{"format": "rtool-parity-outputs"}], dtype=object))
    assert_one_line_error(rtool(*args, tmp_path / "pickled.npz"), 2, "not an rtool parity outputs file")
    assert_one_line_error(rtool(*args, tmp_path / "missing.npz"), 2, "does not exist")


def test_rows_that_could_not_run_travel_with_their_reason(saved, tmp_path):
    """A row without logits (TensorRT on a CPU box) is saved with its status and reason and shown as such."""
    stored = load_outputs(saved[0])
    assert stored.meta["images"] == 40 and stored.reference.shape == (40, 10)
    [(entry, logits)] = [(entry, logits) for entry, logits in stored.rows if entry["artifact"] == "model.onnx"]
    assert entry["runtime"] == "onnxruntime" and logits.shape == (40, 10)
    row = ParityRow("tensorrt", "int8", None, status="unavailable", reason="no CUDA GPU")
    path = save_outputs(
        tmp_path / "o.npz",
        card=stored.meta["card"],
        dataset="mnist5k",
        limit=40,
        inputs=np.zeros((40, 1, 28, 28), np.float32),
        labels=stored.labels,
        reference=stored.meta["reference"],
        reference_logits=stored.reference,
        rows=[(row, None), (ParityRow("onnxruntime", "fp32", "model.onnx"), logits)],
    )
    [unavailable, measured] = stored_rows(load_outputs(path), lambda runtime, precision: True, default_thresholds())
    assert (unavailable.status, unavailable.reason, unavailable.machine) == ("unavailable", "no CUDA GPU", "saved")
    assert measured.status == "ok" and measured.agreement == 100.0 and measured.label == "onnxruntime fp32 @saved"
