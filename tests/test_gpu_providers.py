"""--device and ONNX Runtime's GPU providers: what can be proven on any machine, and the real sessions on a GPU.

The option names rtool passes to the TensorRT and CUDA providers are checked
against the installed onnxruntime-gpu provider libraries themselves (an
unknown name makes ONNX Runtime refuse the session), and the provider choice
is checked on rtool's real exported files.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

import runtimes
from runtimes import onnxruntime_runtime as ortr
from runtimes import open_runtime
from toolkit.devices import DeviceSettings, parse_device
from toolkit.errors import BadInputError, UnavailableError
from toolkit.safety import check_onnx_file

from conftest import assert_one_line_error

GPUS, NO_GPU = runtimes.cuda_gpus()


def provider_library(name: str) -> Path:
    import onnxruntime

    return Path(onnxruntime.__file__).parent / "capi" / f"libonnxruntime_providers_{name}.so"


@pytest.mark.parametrize(
    "text, parsed", [("auto", ("auto", 0)), ("cpu", ("cpu", 0)), ("cuda", ("cuda", 0)), ("cuda:3", ("cuda", 3))]
)
def test_devices_parse(text, parsed):
    assert parse_device(text) == parsed
    assert DeviceSettings(text).device == text


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:-1", "CUDA", "cuda:1:2", "", "mps"])
def test_unknown_devices_are_refused(text, rtool, cpu_export_dir):
    with pytest.raises(BadInputError, match="choose auto, cpu, cuda or cuda:N"):
        parse_device(text)
    if text:
        assert_one_line_error(rtool("bench", cpu_export_dir, "--device", text), 2, "unknown device")


@pytest.mark.skipif(GPUS > 0, reason="a CUDA GPU is present: the request would be met")
def test_a_gpu_that_is_not_there_says_so(cpu_export_dir):
    with pytest.raises(UnavailableError, match="--device cuda:1 asked for, but no CUDA GPU"):
        runtimes.cuda_index("cuda:1")
    with pytest.raises(UnavailableError, match="--device cuda:0 asked for"):
        runtimes.resolve_device("cuda:0")
    assert runtimes.resolve_device("auto") == "cpu"
    with pytest.raises(UnavailableError, match="TensorRT is not installed|no CUDA GPU"):
        open_runtime("tensorrt", cpu_export_dir / "model.onnx", "cuda:0")


@pytest.mark.parametrize(
    "file, kind",
    [
        ("model.onnx", ("fp32", None)),
        ("model.fp16.onnx", ("fp16", None)),
        ("model.int8-cpu.onnx", ("int8", "cpu")),
        ("model.int8-trt.onnx", ("int8", "tensorrt")),
    ],
)
def test_graph_kind_of_every_exported_onnx(cpu_export_dir, file, kind):
    assert ortr.graph_kind(check_onnx_file(cpu_export_dir / file)) == kind


def test_tensorrt_provider_options(tmp_path):
    trt, cuda, cpu = ortr.PREFERENCE
    options = dict(
        ortr.provider_settings(
            [trt, cuda, cpu],
            device_id=1,
            kind=("int8", "tensorrt"),
            input_name="input",
            shape=(1, 28, 28),
            batch_range=(1, 8, 64),
            cache=tmp_path,
        )
    )
    assert options[trt]["device_id"] == 1 and options[cuda] == {"device_id": 1, "use_tf32": 0}
    assert (options[trt]["trt_int8_enable"], options[trt]["trt_fp16_enable"]) == (True, False)
    assert options[trt]["trt_profile_min_shapes"] == "input:1x1x28x28"
    assert options[trt]["trt_profile_opt_shapes"] == "input:8x1x28x28"
    assert options[trt]["trt_profile_max_shapes"] == "input:64x1x28x28"
    assert options[trt]["trt_engine_cache_path"] == str(tmp_path / "engines")
    assert options[trt]["trt_timing_cache_path"] == str(tmp_path / "timing")
    assert options[cpu] == {}
    free_size = dict(
        ortr.provider_settings(
            [trt], device_id=0, kind=("fp16", None), input_name="x", shape=None, batch_range=(1, 8, 64), cache=tmp_path
        )
    )
    assert not any(key.startswith("trt_profile") for key in free_size[trt]) and free_size[trt]["trt_fp16_enable"]


def test_provider_options_come_from_the_exported_graph(cpu_export_dir, tmp_path, monkeypatch):
    """What a session on GPU 1 would be given for rtool's FP16 file (the GPU itself stands in: none here)."""
    from exporters.onnx_common import INPUT_NAME

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(ortr, "cuda_index", lambda device: int(device.partition(":")[2] or 0))
    runtime = ortr.OnnxRuntimeRuntime(batch_range="2:4:16")
    path = cpu_export_dir / "model.fp16.onnx"
    model = check_onnx_file(path)
    settings = dict(runtime.provider_list(path, model, ortr.graph_kind(model), list(ortr.PREFERENCE), "cuda:1"))
    trt = settings["TensorrtExecutionProvider"]
    assert trt["device_id"] == 1 and settings["CUDAExecutionProvider"]["device_id"] == 1
    assert trt["trt_fp16_enable"] is True and trt["trt_int8_enable"] is False
    assert (trt["trt_profile_min_shapes"], trt["trt_profile_max_shapes"]) == (
        f"{INPUT_NAME}:2x1x28x28",
        f"{INPUT_NAME}:16x1x28x28",
    )
    assert Path(trt["trt_engine_cache_path"]).is_dir() and Path(trt["trt_timing_cache_path"]).is_dir()
    assert Path(trt["trt_engine_cache_path"]).parent == ortr.tensorrt_cache(path, 1)
    assert runtime.tensorrt_batch == (2, 4, 16)
    cpu_only = ["CPUExecutionProvider"]
    assert runtime.provider_list(path, model, ("fp16", None), cpu_only, "cpu") == cpu_only


@pytest.mark.parametrize("name, provider", [("tensorrt", 0), ("cuda", 1)])
def test_option_names_exist_in_the_installed_provider(tmp_path, name, provider):
    """ONNX Runtime refuses a session with an unknown provider option: every name rtool passes is one the
    installed provider library knows (read from the library itself)."""
    library = provider_library(name)
    if not library.is_file():
        pytest.skip(f"this onnxruntime build has no {library.name} (a CPU-only onnxruntime)")
    data = library.read_bytes()
    settings = ortr.provider_settings(
        [ortr.PREFERENCE[provider]],
        device_id=0,
        kind=("fp16", None),
        input_name="input",
        shape=(1, 28, 28),
        batch_range=(1, 8, 64),
        cache=tmp_path,
    )
    for key in settings[0][1]:
        assert b"\0" + key.encode() + b"\0" in data, f"{key} is not an option of {library.name}"


def test_onnxruntime_tensorrt_provider_needs_tensorrt_10(monkeypatch):
    """onnxruntime-gpu 1.31.1 links libnvinfer.so.10: rtool[tensorrt] pins TensorRT 10 for CUDA 13."""
    major = ortr.ort_tensorrt_major()
    if major is None:
        pytest.skip("this onnxruntime build has no TensorRT provider library")
    assert major == 10
    pins = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"tensorrt-cu13==10.' in pins
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here: the message for a missing or mismatched one cannot be shown")
    except ImportError:
        pass
    assert ortr._tensorrt_library() == "TensorRT is not installed (pip install 'rtool[tensorrt]')"
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.4.0.106"))
    assert ortr._tensorrt_library().startswith(
        "ONNX Runtime's TensorRT provider needs TensorRT 10 (libnvinfer.so.10) but TensorRT 11.4.0.106 is installed"
    )


def test_engine_cache_is_keyed_by_the_file_content(cpu_export_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    one = ortr.tensorrt_cache(cpu_export_dir / "model.onnx", 0)
    two = ortr.tensorrt_cache(cpu_export_dir / "model.fp16.onnx", 0)
    assert one.parent == two.parent and one != two
    assert one.is_relative_to(tmp_path / "rtool" / "onnxruntime-tensorrt")
    assert f"trt{ortr.ort_tensorrt_major()}" in one.parent.name


# --- on a GPU -------------------------------------------------------------------------------------------------

ORT_CUDA = ortr.provider_status()["CUDAExecutionProvider"]
ORT_TRT = ortr.provider_status()["TensorrtExecutionProvider"]


@pytest.mark.gpu
@pytest.mark.skipif(bool(ORT_CUDA), reason=f"ONNX Runtime's CUDA provider is unusable here: {ORT_CUDA}")
def test_cuda_provider_gets_device_and_exact_fp32(cpu_export_dir):
    with open_runtime("onnxruntime", cpu_export_dir / "model.onnx", f"cuda:{GPUS - 1}") as rt:
        assert rt.device == "CUDAExecutionProvider"
        options = rt.session.get_provider_options()["CUDAExecutionProvider"]
        assert options["device_id"] == str(GPUS - 1) and options["use_tf32"] == "0"
        with open_runtime("onnxruntime", cpu_export_dir / "model.onnx", "cpu") as reference:
            batch = np.random.default_rng(0).standard_normal((8, *rt.card.input.shape)).astype(np.float32)
            expected = reference.infer(batch)
        np.testing.assert_allclose(rt.infer(batch), expected, atol=1e-4 * float(np.ptp(expected)))


@pytest.mark.tensorrt
@pytest.mark.skipif(bool(ORT_TRT), reason=f"ONNX Runtime's TensorRT provider is unusable here: {ORT_TRT}")
def test_tensorrt_provider_builds_once_and_caches(cpu_export_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = cpu_export_dir / "model.fp16.onnx"
    with open_runtime("onnxruntime", path, "auto") as rt:
        assert rt.device == "TensorrtExecutionProvider" and rt.max_batch == 64
        options = rt.session.get_provider_options()["TensorrtExecutionProvider"]
        assert options["trt_engine_cache_path"] == str(ortr.tensorrt_cache(path, 0) / "engines")
        assert options["trt_fp16_enable"] == "1"
        batch = np.random.default_rng(0).standard_normal((64, *rt.card.input.shape)).astype(np.float32)
        first = rt.infer(batch)
        rt.infer(batch[:3])  # inside the profile: no rebuild
    engines = sorted((ortr.tensorrt_cache(path, 0) / "engines").iterdir())
    assert engines, "no engine was cached"
    stamps = {p: p.stat().st_mtime_ns for p in engines}
    with open_runtime("onnxruntime", path, "auto") as rt:  # a new session loads the cached engine
        np.testing.assert_allclose(rt.infer(batch), first, atol=1e-3 * float(np.ptp(first)))
    assert {p: p.stat().st_mtime_ns for p in engines} == stamps


@pytest.mark.gpu
@pytest.mark.skipif(GPUS == 0, reason=NO_GPU or "-")
def test_torch_runtimes_on_cuda_run_true_fp32():
    import torch

    assert runtimes.resolve_device("auto") == "cuda:0"
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert runtimes.resolve_device(f"cuda:{GPUS - 1}") == f"cuda:{GPUS - 1}"
    with pytest.raises(UnavailableError, match=f"this machine has {GPUS} CUDA GPU"):
        runtimes.cuda_index(f"cuda:{GPUS}")
