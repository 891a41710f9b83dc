"""Every runtime behind one interface: same logits as eager, cards read from the files, clear refusals."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import onnx
import pytest

import runtimes
from runtimes import infer_in_batches, open_runtime
from runtimes import onnxruntime_runtime as ortr
from runtimes.cards import read_card, resolve_artifact
from runtimes.tensorrt_runtime import engine_stamp, stamp_problem
from toolkit.card import MANIFEST_NAME, ONNX_METADATA_KEY
from toolkit.data import load_dataset
from toolkit.errors import BadInputError, UnavailableError, UnsafeFileError
from toolkit.preprocess import prepare_batch

from conftest import needs_executorch, needs_openvino

# (runtime, file, max |logit - eager| allowed as a fraction of the eager logits' range, min top-1 agreement)
CASES = [
    ("torchscript", "model.ts", 1e-4, 1.0),
    ("pt2", "model.pt2", 1e-4, 1.0),
    ("onnxruntime", "model.onnx", 1e-4, 1.0),
    ("onnxruntime", "model.fp16.onnx", 2e-3, 0.95),
    ("onnxruntime", "model.int8-cpu.onnx", 0.1, 0.9),
    # S8S8 for TensorRT, calibrated on 16 images, run as parity runs it where TensorRT is missing: its Q/DQ in
    # float (x86 S8S8 kernels may saturate in int16, which differs by CPU and says nothing about the file)
    ("onnxruntime", "model.int8-trt.onnx", 0.25, 0.9),
    ("onnxruntime", "model.ort", 1e-4, 1.0),
    ("onnxruntime", "model.int8-cpu.ort", 0.1, 0.9),
    pytest.param("openvino", "model.openvino.xml", 1e-4, 1.0, marks=needs_openvino),
    pytest.param("openvino", "model.fp16.openvino.xml", 2e-3, 0.95, marks=needs_openvino),
    pytest.param("openvino", "model.int8.openvino.xml", 0.1, 0.9, marks=needs_openvino),
    pytest.param("executorch", "model.pte", 1e-4, 1.0, marks=needs_executorch),
    pytest.param("executorch", "model.int8.pte", 0.1, 0.9, marks=needs_executorch),
]
RUN_OPTIONS = {"model.int8-trt.onnx": {"simulate_qdq": True}}


@pytest.fixture(scope="module")
def batch(cpu_export_dir) -> np.ndarray:
    """32 mnist5k test images spread over all classes, preprocessed from the exported card."""
    test = load_dataset("mnist5k").test
    pick = np.linspace(0, len(test) - 1, 32).astype(int)
    return prepare_batch(test.images.numpy()[pick], read_card(cpu_export_dir / "model.onnx").input)


@pytest.fixture(scope="module")
def eager_logits(cpu_export_dir, batch) -> np.ndarray:
    with open_runtime("eager", cpu_export_dir / "model.pt", "cpu") as rt:
        return rt.infer(batch)


@pytest.mark.parametrize("name,file,tolerance,agreement", CASES, ids=[getattr(c, "values", c)[1] for c in CASES])
def test_runtime_matches_eager(cpu_export_dir, batch, eager_logits, name, file, tolerance, agreement):
    with open_runtime(name, cpu_export_dir / file, "cpu", threads=1, **RUN_OPTIONS.get(file, {})) as rt:
        logits = rt.infer(batch)
        assert rt.card.class_names == [str(d) for d in range(10)]
    assert logits.dtype == np.float32 and logits.shape == eager_logits.shape
    scale = float(eager_logits.max() - eager_logits.min())
    assert np.abs(logits - eager_logits).max() <= tolerance * scale
    assert (logits.argmax(1) == eager_logits.argmax(1)).mean() >= agreement


def test_card_is_read_from_every_file(cpu_export_dir, untrained_checkpoint):
    expected = read_card(untrained_checkpoint)
    for file in ("model.pt", "model.ts", "model.pt2", "model.onnx", "model.fp16.onnx", "model.int8-cpu.onnx"):
        card = read_card(cpu_export_dir / file)
        assert (card.model, card.class_names, card.input) == (expected.model, expected.class_names, expected.input), (
            file
        )


def test_preprocessing_follows_the_card_in_the_file(cpu_export_dir, tmp_path):
    """Change mean/std in an ONNX file's card: the runtime reports the new card, and inputs built from it differ."""
    model = onnx.load(str(cpu_export_dir / "model.onnx"))
    card = json.loads(next(p.value for p in model.metadata_props if p.key == ONNX_METADATA_KEY))
    card["input"].update(mean=[0.5], std=[0.25])
    onnx.helper.set_model_props(model, {ONNX_METADATA_KEY: json.dumps(card)})
    onnx.save(model, str(tmp_path / "model.onnx"))
    pixels = np.full((1, 1, 28, 28), 200, dtype=np.uint8)
    with open_runtime("onnxruntime", tmp_path / "model.onnx") as rt:
        assert rt.card.input.mean == [0.5] and rt.card.input.std == [0.25]
        x = prepare_batch(pixels, rt.card.input)
    np.testing.assert_allclose(x, (200 / 255 - 0.5) / 0.25, rtol=1e-6)


def test_infer_in_batches_splits_to_the_runtime_limit(cpu_export_dir, batch, eager_logits):
    calls = []
    with open_runtime("onnxruntime", cpu_export_dir / "model.onnx", threads=1) as rt:
        rt.max_batch = 5
        run = rt._run
        rt._run = lambda b: calls.append(len(b)) or run(b)
        with pytest.raises(BadInputError, match="exceeds this model's limit of 5"):
            rt.infer(batch)
        logits = infer_in_batches(rt, batch)
    assert calls == [5] * 6 + [2]
    np.testing.assert_allclose(logits, eager_logits, atol=1e-4)


@pytest.mark.parametrize(
    "bad,message",
    [
        (np.full((1, 1, 28, 28), np.nan, dtype=np.float32), "NaN/Inf"),
        (np.full((2, 1, 28, 28), np.inf, dtype=np.float32), "NaN/Inf"),
        (np.zeros((1, 3, 28, 28), dtype=np.float32), "takes \\(N, 1, 28, 28\\)"),
        (np.zeros((1, 28, 28), dtype=np.float32), "batch has shape"),
        (np.zeros((1, 1, 28, 28), dtype=np.uint8), "expected float input"),
        ([[0.0]], "expected a numpy array"),
    ],
)
def test_bad_input_arrays_are_refused(cpu_export_dir, bad, message):
    with open_runtime("onnxruntime", cpu_export_dir / "model.onnx") as rt:
        with pytest.raises(BadInputError, match=message):
            rt.infer(bad)


def test_float64_input_is_accepted_and_empty_batch_gives_no_rows(cpu_export_dir, batch, eager_logits):
    with open_runtime("torchscript", cpu_export_dir / "model.ts", "cpu") as rt:
        np.testing.assert_allclose(rt.infer(batch[:3].astype(np.float64)), eager_logits[:3], atol=1e-4)
        assert rt.infer(batch[:0]).shape == (0, 10)


@pytest.mark.parametrize(
    "runtime,file,hint",
    [
        ("torchscript", "model.onnx", "--runtime onnxruntime"),
        ("onnxruntime", "model.ts", "--runtime torchscript"),
        ("pt2", "model.pt", "--runtime eager"),
        ("eager", "model.pt2", "--runtime pt2"),
    ],
)
def test_file_of_another_runtime_is_refused(cpu_export_dir, runtime, file, hint):
    with pytest.raises(BadInputError, match=hint):
        open_runtime(runtime, cpu_export_dir / file)


@pytest.mark.parametrize(
    "runtime,name",
    [("onnxruntime", "model.onnx"), ("torchscript", "model.ts"), ("pt2", "model.pt2"), ("eager", "model.pt")],
)
def test_corrupt_model_file_is_refused(tmp_path, runtime, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(BadInputError, match=f"{name} is not a (readable|loadable)"):
        open_runtime(runtime, path)


def test_truncated_archive_is_refused(cpu_export_dir, tmp_path):
    data = (cpu_export_dir / "model.pt2").read_bytes()
    (tmp_path / "model.pt2").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match="model.pt2 is not a readable torch.export file"):
        open_runtime("pt2", tmp_path / "model.pt2")


def test_onnx_without_card_is_refused(cpu_export_dir, tmp_path):
    model = onnx.load(str(cpu_export_dir / "model.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    with pytest.raises(BadInputError, match="carries no rtool model card"):
        open_runtime("onnxruntime", tmp_path / "bare.onnx")


# --- ONNX Runtime providers -------------------------------------------------------------------------


def test_providers_choose_only_what_is_usable(monkeypatch):
    monkeypatch.setattr(ortr, "cuda_gpus", lambda: (0, "no CUDA GPU: no NVIDIA driver found"))
    status = ortr.provider_status()
    assert status["CPUExecutionProvider"] == ""
    assert ortr.choose_providers() == (["CPUExecutionProvider"], [])
    providers, notes = ortr.choose_providers("cuda")
    assert providers == ["CPUExecutionProvider"]
    assert notes == [
        "CUDAExecutionProvider unusable here (no CUDA GPU: no NVIDIA driver found): using CPUExecutionProvider"
    ]
    with pytest.raises(UnavailableError, match="--device cuda"):
        ortr.choose_providers(None, "cuda")
    with pytest.raises(BadInputError, match="unknown provider 'rocm'"):
        ortr.choose_providers("rocm")


def test_providers_in_order_tensorrt_cuda_cpu_when_a_gpu_exists(monkeypatch):
    import onnxruntime as ort

    trt, cuda, cpu = ortr.PREFERENCE
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(ortr.PREFERENCE))
    monkeypatch.setattr(ortr, "cuda_gpus", lambda: (1, ""))
    monkeypatch.setattr(ortr, "_tensorrt_library", lambda: "")
    assert ortr.choose_providers() == (list(ortr.PREFERENCE), [])
    assert ortr.choose_providers("cuda") == ([cuda, cpu], [])
    assert ortr.choose_providers(None, "cpu") == ([cpu], [])
    # by graph: TensorRT for FP16 and its INT8 form, CUDA (TF32 off) for FP32, the CPU for the CPU's INT8 form
    assert ortr.choose_providers(None, "auto", ("fp16", None))[0] == [trt, cuda, cpu]
    assert ortr.choose_providers(None, "cuda:0", ("int8", "tensorrt"))[0] == [trt, cuda, cpu]
    assert ortr.choose_providers(None, "auto", ("fp32", None))[0] == [cuda, cpu]
    assert ortr.choose_providers(None, "auto", ("int8", "cpu"))[0] == [cpu]
    assert ortr.choose_providers(None, "cuda", ("int8", "cpu"))[0] == [cuda, cpu]
    assert ortr.choose_providers("tensorrt", "auto", ("fp32", None))[0] == [trt, cpu]  # asked for by name
    monkeypatch.setattr(ortr, "_tensorrt_library", lambda: "TensorRT is not installed")
    assert ortr.choose_providers() == ([cuda, cpu], [])
    assert ortr.choose_providers(None, "auto", ("fp16", None))[0] == [cuda, cpu]


@pytest.mark.skipif(runtimes.cuda_gpus()[0] > 0, reason="a CUDA GPU is present: no fallback to show")
def test_asking_for_cuda_without_gpu_falls_back_in_one_quiet_line(cpu_export_dir, capfd):
    with open_runtime("onnxruntime", cpu_export_dir / "model.onnx", provider="cuda") as rt:
        assert rt.device == "CPUExecutionProvider"
        assert len(rt.notes) == 1 and rt.notes[0].startswith("CUDAExecutionProvider unusable here (no CUDA GPU")
    captured = capfd.readouterr()
    assert "onnxruntime" not in captured.err and "onnxruntime" not in captured.out


@pytest.mark.skipif(runtimes.cuda_gpus()[0] > 0, reason="a CUDA GPU is present: CUDA would really start")
def test_provider_that_fails_to_start_is_reported_without_the_log(cpu_export_dir, monkeypatch, capfd):
    """If the checks pass but ONNX Runtime still cannot start CUDA, say so in one line, not its error log."""
    monkeypatch.setattr(ortr, "provider_status", lambda: {p: "" for p in ortr.PREFERENCE})
    monkeypatch.delenv("RTOOL_DEBUG", raising=False)
    with open_runtime("onnxruntime", cpu_export_dir / "model.onnx", provider="cuda") as rt:
        assert rt.device == "CPUExecutionProvider"
        assert rt.notes == [
            "CUDAExecutionProvider failed to start (set RTOOL_DEBUG=1 for ONNX Runtime's log): "
            "using CPUExecutionProvider"
        ]
    captured = capfd.readouterr()
    assert "onnxruntime" not in captured.err, captured.err


def test_session_options_threads_and_optimized_model(cpu_export_dir, tmp_path):
    optimized = tmp_path / "optimized.onnx"
    with open_runtime("onnxruntime", cpu_export_dir / "model.onnx", threads=1, optimized_model_path=optimized) as rt:
        options = rt.session.get_session_options()
        assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
        assert rt.session.get_session_options().graph_optimization_level.name == "ORT_ENABLE_ALL"
    assert optimized.stat().st_size > 0
    with open_runtime("onnxruntime", cpu_export_dir / "model.onnx") as rt:
        assert rt.session.get_session_options().intra_op_num_threads == runtimes.physical_cores()


# --- export folders and manifests -----------------------------------------------------------------------


def test_resolve_artifact_picks_runtime_and_precision(cpu_export_dir):
    assert resolve_artifact(cpu_export_dir).name == "model.onnx"
    assert resolve_artifact(cpu_export_dir, "onnxruntime", "int8").name == "model.int8-cpu.onnx"
    assert resolve_artifact(cpu_export_dir, "onnxruntime", "int8", "cpu").name == "model.int8-cpu.onnx"
    assert resolve_artifact(cpu_export_dir, "onnxruntime", "fp16").name == "model.fp16.onnx"
    assert resolve_artifact(cpu_export_dir, "eager", "fp32").name == "model.pt"
    with pytest.raises(BadInputError, match=r"has no torchscript int8 file; it holds: model\.pt \(eager fp32\)"):
        resolve_artifact(cpu_export_dir, "torchscript", "int8")


def test_resolve_artifact_refuses_changed_missing_or_escaping_files(cpu_export_dir, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(cpu_export_dir, folder)
    with open(folder / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(UnsafeFileError, match="sha256 differs"):
        resolve_artifact(folder, "onnxruntime", "fp32")
    (folder / "model.ts").unlink()
    with pytest.raises(BadInputError, match="lists model.ts but the file is missing"):
        resolve_artifact(folder, "torchscript", "fp32")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["artifacts"][0]["file"] = "../../etc/passwd"
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(UnsafeFileError, match="outside its folder"):
        resolve_artifact(folder, "eager", "fp32")
    with pytest.raises(BadInputError, match="no manifest.json"):
        resolve_artifact(tmp_path, "onnxruntime", "fp32")


def test_an_entry_without_sha256_is_refused_not_skipped(cpu_export_dir, tmp_path):
    """A manifest entry that records no sha256 cannot vouch for its file: it is refused wherever files are run."""
    from toolkit.parity import run_parity

    folder = tmp_path / "export"
    shutil.copytree(cpu_export_dir, folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    for entry in manifest["artifacts"]:
        if entry["file"] == "model.onnx":
            del entry["sha256"]
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(UnsafeFileError, match="lists model.onnx without a sha256"):
        resolve_artifact(folder, "onnxruntime", "fp32")
    report = run_parity(folder, runtimes=["onnxruntime"], precisions=["fp32"], limit=10)
    [row] = [r for r in report.rows if r.artifact == "model.onnx"]
    assert row.status == "failed" and "without a sha256" in row.reason


# --- TensorRT ------------------------------------------------------------------------------------------


def test_tensorrt_says_why_it_is_unavailable(cpu_export_dir):
    ok, reason = runtimes.available("tensorrt")
    if ok:
        pytest.skip("TensorRT and a GPU are present")
    assert "TensorRT is not installed (pip install 'rtool[tensorrt]')" in reason or "no CUDA GPU" in reason
    with pytest.raises(UnavailableError, match="runtime 'tensorrt' is not available here"):
        open_runtime("tensorrt", cpu_export_dir / "model.onnx")


STAMP = {"tensorrt_version": "10.13.0.35", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_engine_stamp_is_read_from_settings_or_validation():
    entry = {
        "settings": {"tensorrt_version": "10.13.0.35"},
        "validation": {"gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0]},
    }
    assert engine_stamp(entry) == STAMP


@pytest.mark.parametrize(
    "here,problem",
    [
        (("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0"), ""),
        # same compute capability, another GPU model: TensorRT would only warn (below rtool's log level)
        (("10.13.0.35", "NVIDIA H100 PCIe", "9.0"), "built on NVIDIA H100 80GB HBM3 (compute capability 9.0) but"),
        (("11.0.0.1", "NVIDIA H100 80GB HBM3", "9.0"), "built with TensorRT 10.13.0.35 but this is TensorRT 11.0.0.1"),
        (("10.13.0.35", "NVIDIA A100-SXM4-80GB", "8.0"), "compute capability 9.0) but this GPU is NVIDIA A100"),
    ],
)
def test_mismatched_engine_is_refused_with_the_reason(here, problem):
    found = stamp_problem(STAMP, *here)
    assert (problem in found) if problem else found == ""
    assert "records no TensorRT version / GPU name / compute capability" in stamp_problem({}, *here)
    without_name = {k: v for k, v in STAMP.items() if k != "gpu_name"}
    assert stamp_problem(without_name, *here).startswith("its manifest records no GPU name")


@pytest.mark.tensorrt
@pytest.mark.skipif(not runtimes.available("tensorrt")[0], reason=runtimes.available("tensorrt")[1] or "-")
def test_tensorrt_engine_matches_eager(untrained_checkpoint, tmp_path, batch, eager_logits):
    from exporters.pipeline import export_model

    result = export_model(untrained_checkpoint, "tensorrt", "fp16,int8", tmp_path / "export", calib_size=16)
    for precision in ("fp16", "int8"):
        with open_runtime("tensorrt", resolve_artifact(result.manifest_path.parent, "tensorrt", precision)) as rt:
            assert rt.max_batch and rt.device.startswith("cuda")
            logits = infer_in_batches(rt, np.concatenate([batch] * 2))[: len(batch)]
        assert (logits.argmax(1) == eager_logits.argmax(1)).mean() >= 0.9, precision


@pytest.mark.gpu
@pytest.mark.skipif(runtimes.cuda_gpus()[0] == 0, reason=runtimes.cuda_gpus()[1] or "-")
@pytest.mark.parametrize("name,file", [("eager", "model.pt"), ("torchscript", "model.ts"), ("pt2", "model.pt2")])
def test_torch_runtimes_on_cuda_match_cpu(cpu_export_dir, batch, eager_logits, name, file):
    with open_runtime(name, cpu_export_dir / file, "cuda") as rt:
        assert rt.device.startswith("cuda")
        np.testing.assert_allclose(rt.infer(batch), eager_logits, atol=1e-3 * float(np.ptp(eager_logits)))


def test_onnx_with_embedded_preprocessing_and_softmax(untrained_checkpoint, tmp_path, batch, eager_logits):
    """A graph that takes uint8 NHWC pixels and returns probabilities (as --embed-preprocessing/--embed-softmax
    write): the runtime still takes the float32 batch and returns logits, up to a constant per row."""
    import torch

    from toolkit.checkpoint import load_model

    model, card = load_model(untrained_checkpoint)
    spec = card.input

    class RawSoftmax(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = pixels.permute(0, 3, 1, 2).float() / 255.0
            x = (x - torch.tensor(spec.mean).reshape(1, -1, 1, 1)) / torch.tensor(spec.std).reshape(1, -1, 1, 1)
            return torch.softmax(self.model(x), dim=1)

    path = tmp_path / "model.raw-softmax.onnx"
    example = torch.zeros((2, spec.height, spec.width, spec.channels), dtype=torch.uint8)
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated, and quick
        warnings.simplefilter("ignore")
        torch.onnx.export(
            RawSoftmax(),
            example,
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["probabilities"],
            dynamic_axes={"input": {0: "batch"}},
        )
    graph = onnx.load(str(path))
    stored = card.to_dict()
    stored["output"] = "probabilities"
    stored["input"].update(layout="NHWC", dtype="uint8", preprocessing="in_graph")
    onnx.helper.set_model_props(graph, {ONNX_METADATA_KEY: json.dumps(stored)})
    onnx.save(graph, str(path))
    with open_runtime("onnxruntime", path, threads=1) as rt:
        assert rt.raw_pixels and rt.card.output == "probabilities"
        logits = rt.infer(batch)
    shift = lambda z: z - z.max(axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(shift(logits), shift(eager_logits), atol=1e-4 * float(np.ptp(eager_logits)))


def test_onnxruntime_workers_stop_spinning_when_a_call_returns(cpu_export_dir, batch):
    """ONNX Runtime's workers spin on after a call unless told (about 50 ms of CPU per call here), taking the
    cores from whatever runs next: in `rtool bench`, the next runtime's timed calls."""
    import resource
    import time

    def cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    assert ortr.session_options().get_session_config_entry("session.force_spinning_stop") == "1"
    with open_runtime("onnxruntime", cpu_export_dir / "model.int8-cpu.onnx", "cpu", threads=2) as rt:
        rt.infer(batch)
        burnt = []
        for _ in range(3):
            rt.infer(batch)
            began = cpu_seconds()
            time.sleep(0.2)
            burnt.append(cpu_seconds() - began)
    assert min(burnt) < 0.01, burnt
