"""OpenVINO IR, ExecuTorch .pte and ONNX Runtime's .ort: written, checked, recorded and run like every target.

The files come from the session's export of every format (`pipeline_export`);
the generic tests (manifest, runtimes against eager, infer, parity, bench)
cover them too. These check what is particular to each: the IR's explicit
inference precision and its .bin, bf16 only where the CPU computes it, the
card and batch limit inside a .pte, the .ort flatbuffer check.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from exporters.pipeline import plan
from runtimes import infer_in_batches, open_runtime
from runtimes.cards import resolve_artifact
from toolkit.errors import BadInputError, UnavailableError, UnsafeFileError
from toolkit.manifest import read_manifest
from toolkit.parity import run_parity
from toolkit.safety import check_ort_file

from conftest import (
    EXECUTORCH_MISSING,
    OPENVINO_MISSING,
    assert_one_line_error,
    needs_executorch,
    needs_openvino,
    run_cli,
)

EDGE_FORMATS = ("openvino", "executorch", "ort")
IRS = {"model.openvino.xml": "fp32", "model.fp16.openvino.xml": "fp16", "model.int8.openvino.xml": "int8"}


def _entry(folder, name):
    return next(e for e in read_manifest(folder)["artifacts"] if e["file"] == name)


def _batch(card, count=8, seed=0):
    return np.random.default_rng(seed).standard_normal((count, *card.input.shape)).astype(np.float32)


@needs_openvino
def test_openvino_irs_carry_card_and_precision_and_fp32_keeps_fp32_weights(cpu_export_dir):
    from exporters.openvino_common import CARD_KEY, PRECISION_KEY, core, inference_hint

    card = read_manifest(cpu_export_dir)["card"]
    weights = {}
    for name, precision in IRS.items():
        entry = _entry(cpu_export_dir, name)
        model = core().read_model(str(cpu_export_dir / name))
        assert model.get_rt_info(PRECISION_KEY).astype(str) == precision
        assert json.loads(model.get_rt_info(CARD_KEY).astype(str)) == card
        assert entry["settings"]["inference_precision"] == inference_hint(precision)
        weights[precision] = entry["companions"][0]["size"]
    # ov.save_model compresses to FP16 unless told not to: the FP32 IR's weights are twice the FP16 IR's
    assert weights["fp32"] == pytest.approx(2 * weights["fp16"], rel=0.02)
    assert _entry(cpu_export_dir, "model.int8.openvino.xml")["settings"]["target"] == "cpu"  # the U8S8 Q/DQ graph


@needs_openvino
def test_openvino_compiles_at_an_explicit_precision_and_bf16_only_where_the_cpu_computes_it(cpu_export_dir, tmp_path):
    import openvino as ov

    from exporters.openvino_common import PRECISION_KEY, core, precision_support

    with open_runtime("openvino", cpu_export_dir / "model.openvino.xml", "cpu", threads=1) as rt:
        assert rt.device == "CPU (f32)"
        assert "32" in str(rt.request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT"))
    model = core().read_model(str(cpu_export_dir / "model.openvino.xml"))
    model.set_rt_info("bf16", PRECISION_KEY)
    bf16 = tmp_path / "model.bf16.openvino.xml"
    ov.save_model(model, str(bf16), compress_to_fp16=False)
    ok, reason = precision_support("bf16")
    if ok:
        with open_runtime("openvino", bf16, "cpu") as rt:
            assert rt.device == "CPU (bf16)"
        return
    assert "does not compute bf16" in reason
    with pytest.raises(UnavailableError, match="does not compute bf16"):  # never f32 under a bf16 name
        open_runtime("openvino", bf16, "cpu")
    jobs, skipped = plan("openvino", "fp32,bf16")
    assert [j.precision for j in jobs] == ["fp32"] and skipped == [
        {"format": "openvino", "precision": "bf16", "reason": reason}
    ]
    with pytest.raises(UnavailableError, match="cannot export openvino bf16 here"):
        plan("openvino", "bf16")


@needs_openvino
def test_openvino_weights_are_checked_with_their_ir(cpu_export_dir, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(cpu_export_dir, folder)
    weights = folder / "model.openvino.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UnsafeFileError, match="model.openvino.bin does not match"):
        resolve_artifact(folder, "openvino", "fp32")
    weights.unlink()
    with pytest.raises(BadInputError, match="model.openvino.bin, which model.openvino.xml needs, is missing"):
        resolve_artifact(folder, "openvino", "fp32")
    with pytest.raises(BadInputError, match="needs its weights model.openvino.bin beside it"):
        open_runtime("openvino", folder / "model.openvino.xml")


@needs_executorch
def test_executorch_records_delegation_and_calibrates_on_the_onnx_int8_images(cpu_export_dir):
    onnx_int8 = _entry(cpu_export_dir, "model.int8-cpu.onnx")["settings"]["calibration"]
    for name in ("model.pte", "model.int8.pte"):
        settings = _entry(cpu_export_dir, name)["settings"]
        assert settings["delegate"] == "XNNPACK" and settings["max_batch"] == 32
        # nearly every node runs in XNNPACK; option A shortcuts' strided slices stay on ExecuTorch's own kernels
        assert settings["delegated_nodes"] > 5 * settings["non_delegated_nodes"] > 0
    calibration = _entry(cpu_export_dir, "model.int8.pte")["settings"]["calibration"]
    assert (
        (calibration["images"], calibration["source"])
        == (onnx_int8["images"], onnx_int8["source"])
        == (
            16,
            "mnist5k train, 16 images",
        )
    )


@needs_executorch
def test_a_pte_alone_carries_its_card_and_batch_limit(cpu_export_dir, tmp_path):
    alone = tmp_path / "model.int8.pte"  # no manifest beside it
    shutil.copy(cpu_export_dir / "model.int8.pte", alone)
    with open_runtime("executorch", alone, "cpu", threads=1) as rt:
        assert rt.card.to_dict() == read_manifest(cpu_export_dir)["card"]
        # planned for batches 1..32 (PyTorch's NNPACK rule "batch >= 16?" would have pinned it to 15)
        assert rt.max_batch == 32 and rt.device == "CPU (XNNPACK)"
        batch = _batch(rt.card, 33)
        with pytest.raises(BadInputError, match="exceeds this model's limit of 32"):
            rt.infer(batch)
        logits = infer_in_batches(rt, batch)
        assert logits.shape == (33, 10) and np.allclose(logits[:5], rt.infer(batch[:5]), atol=1e-5)
    broken = tmp_path / "broken.pte"
    broken.write_bytes(alone.read_bytes()[:4000])
    with pytest.raises(BadInputError, match="broken.pte is not a loadable ExecuTorch program"):
        open_runtime("executorch", broken, "cpu")


def test_asking_whether_executorch_runs_does_not_import_it():
    """Every parity and bench lists the runtimes; importing ExecuTorch to answer cost each one seconds."""
    code = (
        "import sys; from runtimes import available; from exporters import get_exporter; "
        "print(available('executorch')[0], get_exporter('executorch').available()[0], "
        "sorted(m for m in sys.modules if m.startswith(('executorch.exir', 'executorch.runtime'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(not EXECUTORCH_MISSING)] * 2 + ["[]"]


@needs_executorch
def test_an_executorch_that_does_not_import_is_one_line_when_a_program_loads(cpu_export_dir, monkeypatch):
    import importlib.util
    import types

    from exporters import executorch_common

    broken = types.ModuleType("executorch.runtime")  # installed (it has a spec) but without its contents
    broken.__spec__ = importlib.util.find_spec("executorch.runtime")
    executorch_common._runtime.cache_clear()
    monkeypatch.setitem(sys.modules, "executorch.runtime", broken)
    try:
        with pytest.raises(UnavailableError, match=r"executorch does not import \(.*\); reinstall it"):
            open_runtime("executorch", cpu_export_dir / "model.pte", "cpu")
    finally:
        executorch_common._runtime.cache_clear()


def test_ort_files_are_checked_flatbuffers_that_onnxruntime_runs(cpu_export_dir):
    for name, source in (("model.ort", "model.onnx"), ("model.int8-cpu.ort", "model.int8-cpu.onnx")):
        check_ort_file(cpu_export_dir / name)
        entry = _entry(cpu_export_dir, name)
        assert (entry["format"], entry["runtime"]) == ("ort", "onnxruntime")
        assert entry["settings"]["checked_with"].startswith("onnxruntime")
        assert any(key.startswith("ai.onnx:") for key in entry["settings"]["required_operators"])
        with (
            open_runtime("onnxruntime", cpu_export_dir / name, "cpu", threads=1) as ort_file,
            open_runtime("onnxruntime", cpu_export_dir / source, "cpu", threads=1) as onnx_file,
        ):
            assert ort_file.card == onnx_file.card  # the card survives in the model's metadata
            batch = _batch(ort_file.card)
            got, expected = ort_file.infer(batch), onnx_file.infer(batch)
        if "int8" in name:
            assert np.array_equal(got, expected)  # the same integer kernels after the same optimizations
        else:
            assert np.allclose(got, expected, atol=1e-4)


def test_a_file_that_is_not_an_ort_flatbuffer_is_refused_in_one_line(cpu_export_dir, tmp_path):
    protobuf = tmp_path / "model.ort"
    protobuf.write_bytes((cpu_export_dir / "model.onnx").read_bytes())
    with pytest.raises(BadInputError, match="not an ONNX Runtime format model"):
        check_ort_file(protobuf)
    truncated = tmp_path / "truncated.ort"
    truncated.write_bytes((cpu_export_dir / "model.ort").read_bytes()[:3000])
    with pytest.raises(BadInputError, match="damaged ONNX Runtime format model"):
        check_ort_file(truncated)
    result = run_cli("infer", truncated, "--dataset", "mnist5k", "--first", "2")
    assert_one_line_error(result, 2, "truncated.ort")


def test_parity_names_each_new_row_and_says_why_one_is_missing(cpu_export_dir):
    runtimes = ["onnxruntime", "openvino", "executorch"]
    report = run_parity(cpu_export_dir, runtimes=runtimes, precisions=["fp32", "bf16", "int8"], limit=40)
    rows = {row.label: row for row in report.rows}
    for label in ("onnxruntime fp32", "onnxruntime fp32 (ort)", "onnxruntime int8 (cpu)", "onnxruntime int8 (ort)"):
        assert rows[label].status == "ok", rows[label]
    assert rows["onnxruntime fp32 (ort)"].artifact == "model.ort"
    for label in ("openvino fp32", "openvino int8", "executorch fp32", "executorch int8"):
        runtime = label.split()[0]
        if (runtime == "openvino" and OPENVINO_MISSING) or (runtime == "executorch" and EXECUTORCH_MISSING):
            assert rows[label].status == "unavailable" and rows[label].reason
        else:
            assert rows[label].status == "ok", rows[label]
    bf16 = rows["openvino bf16"]
    assert bf16.status in ("ok", "unavailable") and (bf16.status == "ok" or bf16.reason)


@needs_executorch
def test_bench_times_a_pte_up_to_its_batch_limit_and_says_why_not_above(cpu_export_dir):
    from toolkit.bench import run_bench
    from toolkit.bench_config import BenchSettings

    settings = BenchSettings(batch_sizes="1,40", warmup=0, iters=2, threads=1)
    report = run_bench(cpu_export_dir, settings, runtimes=["executorch"])
    assert {(r.artifact, r.batch) for r in report.rows} == {("model.pte", 1), ("model.int8.pte", 1)}
    reasons = {u["reason"] for u in report.unavailable if u["runtime"] == "executorch"}
    assert reasons == {
        "batch 40 is above the 32 that model.pte takes",
        "batch 40 is above the 32 that model.int8.pte takes",
    }


@needs_executorch
@needs_openvino
def test_infer_classifies_test_images_with_the_edge_runtimes(cpu_export_dir):
    for runtime, device in (("openvino", "CPU (f32)"), ("executorch", "CPU (XNNPACK)")):
        result = run_cli(
            "infer", cpu_export_dir, "--runtime", runtime, "--precision", "int8", "--dataset", "mnist5k", "--first", "4"
        )
        assert result.returncode == 0, result.stderr
        assert f"{runtime} int8 on {device}" in result.stdout and "accuracy: " in result.stdout


def test_read_card_finds_the_card_inside_each_edge_file_alone(cpu_export_dir, tmp_path):
    from runtimes.cards import read_card

    names = ["model.int8-cpu.ort"]
    names += [] if OPENVINO_MISSING else ["model.openvino.xml", "model.openvino.bin"]
    names += [] if EXECUTORCH_MISSING else ["model.pte"]
    for name in names:  # copied without the manifest: the card must come from the file itself
        shutil.copy(cpu_export_dir / name, tmp_path / name)
    for name in (n for n in names if not n.endswith(".bin")):
        assert read_card(tmp_path / name).to_dict() == read_manifest(cpu_export_dir)["card"], name


@needs_openvino
@needs_executorch
def test_edge_files_pass_the_export_gate_lossy_ones_on_held_out_images(cpu_export_dir):
    """The gate holds every edge file to its precision's parity thresholds: FP32 on the 16 exact-check images,
    FP16 and INT8 on the session export's 64 held-out test images (calibration images come from train)."""
    edge = {e["file"]: e for e in read_manifest(cpu_export_dir)["artifacts"] if e["format"] in EDGE_FORMATS}
    assert {"model.int8.openvino.xml", "model.int8.pte", "model.int8-cpu.ort", "model.fp16.openvino.xml"} <= set(edge)
    for name, entry in edge.items():
        validation, gate = entry["validation"], entry["validation"]["gate"]
        assert gate["status"] == "passed" and gate["failed"] == [], name
        assert validation["images"] == (16 if entry["precision"] == "fp32" else 64), name
        assert gate["inputs"] == f"mnist5k test, {validation['images']} images", name
        if entry["precision"] == "int8":
            assert entry["settings"]["calibration"]["source"] == "mnist5k train, 16 images", name
