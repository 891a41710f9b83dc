"""TensorRT engines: what can be proven without TensorRT here, and the real build where it exists."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporters.tensorrt import (
    INSTALL_HINT,
    available,
    default_timing_cache,
    load_timing_cache,
    onnx_source,
    parse_batch_range,
    save_timing_cache,
)
from runtimes.tensorrt_runtime import summarize_layers, tensor_precision
from toolkit.card import MANIFEST_NAME
from toolkit.errors import BadInputError, CheckFailedError, UnavailableError, UnsafeFileError

from conftest import assert_one_line_error

TRT_OK, TRT_REASON = available()


@given(st.integers(1, 4096), st.integers(0, 4096), st.integers(0, 4096))
def test_batch_range_parses_any_ordered_triple(low, up1, up2):
    opt, high = low + up1, low + up1 + up2
    assert parse_batch_range(f"{low}:{opt}:{high}") == (low, opt, high)


@pytest.mark.parametrize("text", ["0:1:2", "8:4:16", "1:16:8", "a:b:c", "1:2", "1:2:3:4", "", "-1:2:3"])
def test_bad_batch_ranges_are_refused(text):
    if text == "":
        assert parse_batch_range(text) == parse_batch_range(None)  # empty means the default
        return
    with pytest.raises(BadInputError, match="MIN:OPT:MAX"):
        parse_batch_range(text)


def test_single_batch_size_means_a_fixed_profile():
    assert parse_batch_range("4") == (4, 4, 4)


@pytest.mark.parametrize(
    "major, precision, expected",
    [
        (10, "fp16", ("fp32", None, ["FP16"])),  # weakly typed: FP32 graph + builder flag
        (10, "int8", ("int8", "tensorrt", ["INT8"])),  # Q/DQ graph + builder flag
        (11, "fp16", ("fp16", None, [])),  # strongly typed: the FP16 graph, no flags exist
        (11, "int8", ("int8", "tensorrt", [])),  # strongly typed: the Q/DQ graph
        (12, "int8", ("int8", "tensorrt", [])),
    ],
)
def test_each_version_builds_from_the_right_onnx(major, precision, expected):
    assert onnx_source(major, precision) == expected


def test_old_tensorrt_and_fp32_engines_are_refused():
    with pytest.raises(UnavailableError, match="too old"):
        onnx_source(8, "fp16")
    with pytest.raises(BadInputError, match="fp16 or int8"):
        onnx_source(10, "fp32")


@pytest.mark.skipif(TRT_OK, reason="TensorRT and a GPU are present here; the real build test runs instead")
def test_unavailable_reason_names_what_is_missing_and_how_to_install():
    assert "TensorRT" in TRT_REASON or "GPU" in TRT_REASON
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert INSTALL_HINT in TRT_REASON and "rtool[tensorrt]" in TRT_REASON


@pytest.mark.skipif(TRT_OK, reason="TensorRT and a GPU are present here")
def test_format_tensorrt_exits_2_with_the_reason(rtool, untrained_checkpoint, tmp_path):
    result = rtool("export", untrained_checkpoint, "--format", "tensorrt", "--out", tmp_path / "out")
    assert_one_line_error(result, 2, "tensorrt")
    assert TRT_REASON in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(TRT_OK, reason="TensorRT and a GPU are present here")
def test_format_all_lists_engines_as_skipped(pipeline_export):
    skipped = {(s["format"], s["precision"]): s["reason"] for s in pipeline_export.skipped if s["format"] == "tensorrt"}
    assert skipped == {("tensorrt", "fp16"): TRT_REASON, ("tensorrt", "int8"): TRT_REASON}


@pytest.mark.tensorrt
@pytest.mark.skipif(not TRT_OK, reason=f"needs TensorRT and a CUDA GPU: {TRT_REASON}")
def test_engines_build_run_and_are_stamped(untrained_checkpoint, tmp_path):
    import tensorrt
    import torch

    from exporters.pipeline import export_model

    result = export_model(
        untrained_checkpoint,
        "tensorrt",
        "fp16,int8",
        tmp_path,
        batch_range="1:4:8",
        calib_size=16,
        workspace=1,
        timing_cache=str(tmp_path / "timing.cache"),
    )
    engines = {a.path.name: a for a in result.artifacts if a.format == "tensorrt"}
    assert set(engines) == {"model.fp16.engine", "model.int8.engine"}
    major, minor = torch.cuda.get_device_capability(0)
    trt_major = int(tensorrt.__version__.split(".")[0])
    for artifact in engines.values():
        assert artifact.settings["tensorrt_version"] == tensorrt.__version__
        assert artifact.settings["compute_capability"] == f"{major}.{minor}"
        assert artifact.settings["gpu_name"] == torch.cuda.get_device_name(0)
        # TensorRT 10 (what rtool[tensorrt] pins): weakly typed, builder flags; 11: strongly typed, none
        flags = {"fp16": ["FP16"], "int8": ["INT8"]}[artifact.precision] if trt_major == 10 else []
        assert artifact.settings["builder_flags"] == flags and artifact.settings["strongly_typed"] == (not flags)
        assert artifact.settings["batch_range"] == [1, 4, 8]
        assert artifact.validation["top1_agreement"] >= 0.8
    assert (tmp_path / "timing.cache").stat().st_size > 0


# --- timing cache -------------------------------------------------------------------------------------------------


def test_timing_cache_is_one_per_tensorrt_version_and_gpu_model(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    h100 = default_timing_cache("10.16.1.11", "NVIDIA H100 80GB HBM3", "9.0")
    assert h100 == tmp_path / "rtool" / "tensorrt-10.16.1.11-nvidia-h100-80gb-hbm3-sm90.timing-cache"
    assert default_timing_cache("10.16.1.11", "NVIDIA H100 PCIe", "9.0") != h100  # same compute capability
    assert default_timing_cache("11.4.0.106", "NVIDIA H100 80GB HBM3", "9.0") != h100


class BuilderConfigStandIn:
    """The two IBuilderConfig calls load_timing_cache makes, behaving as TensorRT documents them: a cache
    TensorRT cannot parse comes back as None (set_timing_cache(None) was the TypeError), and set_timing_cache
    returns False for a cache from another version or device. TensorRT itself cannot run on this machine."""

    def __init__(self, foreign: bytes = b"", empty_fails: bool = False) -> None:
        self.foreign, self.empty_fails, self.set = foreign, empty_fails, []

    def create_timing_cache(self, data: bytes):
        if data == b"":
            return None if self.empty_fails else ("cache", b"")
        return ("cache", data) if data.startswith(b"TRTC") else None

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        if cache is None:
            raise TypeError("set_timing_cache(): incompatible function arguments")
        self.set.append(cache)
        return not (self.foreign and cache[1] == self.foreign)


def test_timing_cache_that_tensorrt_cannot_use_is_replaced_with_a_warning(tmp_path):
    path = tmp_path / "t.timing-cache"
    config = BuilderConfigStandIn()
    assert load_timing_cache(config, path) == (("cache", b""), "")  # no file yet: an empty cache, quietly
    path.write_bytes(b"TRTC good")
    assert load_timing_cache(config, path) == (("cache", b"TRTC good"), "")
    path.write_bytes(b"\x00garbage, truncated")
    cache, warning = load_timing_cache(config, path)
    assert cache == ("cache", b"") and config.set[-1] == ("cache", b"")
    assert warning == f"timing cache {path} is unreadable (corrupt or truncated): building without it; it is " + (
        "replaced after this build"
    )
    path.write_bytes(b"TRTC other gpu")
    cache, warning = load_timing_cache(BuilderConfigStandIn(foreign=b"TRTC other gpu"), path)
    assert cache == ("cache", b"") and "from another TensorRT version or GPU" in warning
    path.write_bytes(b"\x00garbage")
    with pytest.raises(CheckFailedError, match="could not start an empty timing cache"):
        load_timing_cache(BuilderConfigStandIn(empty_fails=True), path)


def test_timing_cache_that_cannot_be_written_is_a_warning(tmp_path):
    class Serialized:
        def get_timing_cache(self):
            return self

        def serialize(self):
            return b"TRTC"

    (tmp_path / "file").write_text("a file where a folder should be")
    warning = save_timing_cache(Serialized(), tmp_path / "file" / "t.timing-cache")
    assert warning.startswith("could not write the timing cache") and "next build starts without it" in warning
    assert save_timing_cache(Serialized(), tmp_path / "ok" / "t.timing-cache") == ""
    assert (tmp_path / "ok" / "t.timing-cache").read_bytes() == b"TRTC"


# --- engine inspector ---------------------------------------------------------------------------------------------

# The engine inspector's JSON as NVIDIA documents it for ProfilingVerbosity.DETAILED (TensorRT developer guide,
# "Engine Inspector"): one dict per layer, each tensor with its "Format/Datatype".
INSPECTOR_JSON = {
    "Layers": [
        {
            "Name": "input_quantize",
            "LayerType": "Reformat",
            "Inputs": [{"Name": "input", "Format/Datatype": "Row major linear FP32"}],
            "Outputs": [{"Name": "q", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
        },
        {
            "Name": "conv1 + relu",
            "LayerType": "CaskConvolution",
            "ParameterType": "Convolution",
            "Inputs": [{"Name": "q", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format."}],
            "Outputs": [{"Name": "c1", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format."}],
        },
        {
            "Name": "conv2",
            "LayerType": "CaskConvolution",
            "ParameterType": "Convolution",
            "Inputs": [{"Name": "c1", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
            "Outputs": [{"Name": "c2", "Format/Datatype": "Float"}],
        },
        {"Name": "fc", "LayerType": "CaskGemmMatrixMultiply", "Inputs": [{"Format/Datatype": "Float"}]},
    ],
    "Bindings": ["input", "logits"],
}


def test_layer_report_counts_int8_convolutions():
    report = summarize_layers(json.dumps(INSPECTOR_JSON))
    assert (report["layers"], report["convolutions"], report["int8_convolutions"]) == (4, 2, 1)
    assert report["not_int8"] == ["conv2"]
    assert report["input_precisions"] == {"fp32": 2, "int8": 1, "fp16": 1}
    assert [tensor_precision(t) for t in ("Half", "N/A due to dynamic shapes", "Row major linear BF16")] == [
        "fp16",
        "unknown",
        "bf16",
    ]


@pytest.mark.parametrize("info", ['{"Layers": ["conv1 + relu", "conv2"], "Bindings": []}', "not json", "{}"])
def test_engine_without_layer_details_is_refused(info):
    with pytest.raises(BadInputError, match="no layer details"):
        summarize_layers(info)


# --- on a GPU with TensorRT ---------------------------------------------------------------------------------------

needs_tensorrt = [
    pytest.mark.tensorrt,
    pytest.mark.skipif(not TRT_OK, reason=f"needs TensorRT and a GPU: {TRT_REASON}"),
]


@pytest.fixture(scope="module")
def engine_export(untrained_checkpoint, tmp_path_factory):
    """fp16 and int8 engines of the untrained resnet20 over the profile 2:4:8 (so batches below and above exist)."""
    from exporters.pipeline import export_model

    out = tmp_path_factory.mktemp("engines")
    cache = out.parent / f"{out.name}.timing-cache"
    return export_model(
        untrained_checkpoint, "tensorrt", "fp16,int8", out, batch_range="2:4:8", calib_size=16, timing_cache=str(cache)
    )


def tensorrt_test(function):
    """Marked `tensorrt`, and skipped with the reason where TensorRT or a GPU is missing."""
    for mark in needs_tensorrt:
        function = mark(function)
    return function


@tensorrt_test
def test_engines_pass_the_gate_on_held_out_images_and_a_wrong_engine_is_refused(
    engine_export, untrained_checkpoint, tmp_path, monkeypatch
):
    """The export gate holds engines to their precision's parity thresholds like every file: each is measured on
    the held-out test images, and one whose logits disagree with eager is not written (exit 1 from the CLI)."""
    import exporters.tensorrt as tensorrt_exporter
    from exporters.pipeline import export_model

    for artifact in (a for a in engine_export.artifacts if a.format == "tensorrt"):
        gate = artifact.validation["gate"]
        assert gate["status"] == "passed" and gate["inputs"] == "mnist5k test, 500 images", artifact.path.name
    real = tensorrt_exporter.run_engine
    monkeypatch.setattr(tensorrt_exporter, "run_engine", lambda *args: -real(*args))  # argmax becomes argmin
    out = tmp_path / "refused"
    with pytest.raises(CheckFailedError, match="model.int8.engine misses the int8 parity thresholds .* agreement"):
        export_model(untrained_checkpoint, "tensorrt", "int8", out, batch_range="2:4:8", calib_size=16)
    assert not (out / "model.int8.engine").exists() and not (out / MANIFEST_NAME).exists()


@tensorrt_test
def test_int8_engine_runs_its_convolutions_in_int8(engine_export):
    from runtimes import open_runtime

    folder = engine_export.manifest_path.parent
    with open_runtime("tensorrt", folder / "model.int8.engine") as rt:
        int8 = rt.layer_report()
    with open_runtime("tensorrt", folder / "model.fp16.engine") as rt:
        fp16 = rt.layer_report()
    assert int8["convolutions"] >= 19, int8  # resnet20: 19 convolutions (option A shortcuts have none)
    assert int8["int8_convolutions"] >= 0.9 * int8["convolutions"], int8["not_int8"]
    assert fp16["convolutions"] >= 19 and fp16["int8_convolutions"] == 0, fp16


@tensorrt_test
def test_batches_below_and_above_the_profile(engine_export, untrained_checkpoint):
    from runtimes import infer_in_batches, open_runtime

    folder = engine_export.manifest_path.parent
    rng = np.random.default_rng(0)
    with open_runtime("eager", untrained_checkpoint, "cpu") as eager:
        batch = rng.standard_normal((20, *eager.card.input.shape)).astype(np.float32)
        expected = eager.infer(batch)
    with open_runtime("tensorrt", folder / "model.fp16.engine") as rt:
        assert (rt.min_batch, rt.max_batch) == (2, 8)
        one = rt.infer(batch[:1])  # below the profile's minimum: padded to 2, the padding dropped
        np.testing.assert_allclose(one, expected[:1], atol=2e-2 * float(np.ptp(expected)))
        with pytest.raises(BadInputError, match="exceeds this model's limit of 8"):
            rt.infer(batch[:9])
        every = infer_in_batches(rt, batch)  # above it: in pieces of at most 8
    assert every.shape == expected.shape and (every.argmax(1) == expected.argmax(1)).mean() >= 0.9


@tensorrt_test
def test_cli_export_and_infer_with_tensorrt(untrained_checkpoint, tmp_path, rtool):
    out = tmp_path / "export"
    formats = ("--format", "tensorrt", "--precision", "fp16,int8", "--batch-range", "1:8:16", "--calib-size", "16")
    result = rtool("export", untrained_checkpoint, *formats, "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    assert {a["file"] for a in json.loads(result.stdout)["artifacts"]} >= {"model.fp16.engine", "model.int8.engine"}
    for precision in ("fp16", "int8"):
        args = ("infer", out, "--runtime", "tensorrt", "--precision", precision, "--dataset", "mnist5k")
        result = rtool(*args, "--first", "16", "--json")
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        assert "TensorRT" in document["device"] and len(document["predictions"]) == 16


@tensorrt_test
def test_corrupt_timing_cache_is_rebuilt_with_a_warning(untrained_checkpoint, tmp_path):
    from exporters.pipeline import export_model

    cache = tmp_path / "t.timing-cache"
    cache.write_bytes(b"\x00 not a timing cache")
    result = export_model(untrained_checkpoint, "tensorrt", "fp16", tmp_path / "e", timing_cache=str(cache))
    assert any(note.startswith(f"timing cache {cache} is unreadable") for note in result.notes), result.notes
    assert cache.stat().st_size > 100 and not cache.read_bytes().startswith(b"\x00 not")
    again = export_model(untrained_checkpoint, "tensorrt", "fp16", tmp_path / "f", timing_cache=str(cache))
    assert not any("timing cache" in note for note in again.notes)


@tensorrt_test
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("tensorrt_version", "0.0.0", "built with TensorRT 0.0.0"),
        ("gpu_name", "NVIDIA Other GPU", "built on NVIDIA Other GPU"),
        ("sha256", None, "without a sha256"),
    ],
)
def test_engine_stamped_for_elsewhere_is_refused(engine_export, tmp_path, field, value, message):
    from runtimes import open_runtime

    folder = tmp_path / "export"
    shutil.copytree(engine_export.manifest_path.parent, folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    entry = next(a for a in manifest["artifacts"] if a["file"] == "model.fp16.engine")
    if value is None:
        del entry[field]
    else:
        entry["settings"][field] = value
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises((UnavailableError, UnsafeFileError), match=message):
        open_runtime("tensorrt", folder / "model.fp16.engine")
