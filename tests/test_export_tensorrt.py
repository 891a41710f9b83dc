"""TensorRT engines: what can be proven without TensorRT here, and the real build where it exists."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporters.tensorrt import INSTALL_HINT, available, onnx_source, parse_batch_range
from toolkit.errors import BadInputError, UnavailableError

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
    skipped = {(s["format"], s["precision"]): s["reason"] for s in pipeline_export.skipped}
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
    for artifact in engines.values():
        assert artifact.settings["tensorrt_version"] == tensorrt.__version__
        assert artifact.settings["compute_capability"] == f"{major}.{minor}"
        assert artifact.settings["batch_range"] == [1, 4, 8]
        assert artifact.validation["top1_agreement"] >= 0.8
    assert (tmp_path / "timing.cache").stat().st_size > 0
