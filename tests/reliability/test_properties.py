"""Properties over generated inputs: preprocessing, command-line parsing, and loaders fed random or damaged bytes.

- Any uint8 image, of any size and any colour mode Pillow reads from files, becomes exactly the card's
  (C, H, W) uint8 pixels, a finite float32 model input, and back the same pixels.
- Any value for the numeric and name flags ends in exit 2 and one `rtool: error:` line (the commands are
  pointed at missing files, so nothing trains or exports), never a traceback: the real entry point
  (``toolkit.cli.main``) runs in-process inside click's CliRunner isolation.
- Random bytes and damaged copies of real files under every model file ending, and as images: the loaders
  raise only RtoolError (one line, exit 2 on the command line) or load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from runtimes import open_runtime, runtime_for_file
from runtimes.cards import read_card
from runtimes.onnxruntime_runtime import pixels_from_input
from toolkit.card import InputSpec
from toolkit.cli import main
from toolkit.errors import RtoolError
from toolkit.infer import load_images, summarise_reads
from toolkit.preprocess import conform_pixels, convert_image, normalize

# Every mode Pillow decodes image files into ("La" and other premultiplied modes exist only in memory).
FILE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F")
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def images(draw) -> Image.Image:
    height, width = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    pixels = draw(arrays(np.uint8, (height, width, 3)))
    return Image.fromarray(pixels).convert(draw(st.sampled_from(FILE_MODES)))


@st.composite
def specs(draw) -> InputSpec:
    channels = draw(st.sampled_from([1, 3]))
    unit = st.floats(0.0, 1.0, allow_nan=False)
    return InputSpec(
        channels=channels,
        height=draw(st.integers(1, 40)),
        width=draw(st.integers(1, 40)),
        mean=[draw(unit) for _ in range(channels)],
        std=[draw(st.floats(0.05, 1.0)) for _ in range(channels)],
    )


@FAST
@given(image=images(), spec=specs())
def test_any_image_becomes_the_cards_input_and_back(image, spec):
    pixels = convert_image(image, spec)
    assert pixels.shape == spec.shape and pixels.dtype == np.uint8 and pixels.flags.c_contiguous
    batch = normalize(pixels[None], spec)
    assert batch.dtype == np.float32 and batch.shape == (1, *spec.shape) and np.isfinite(batch).all()
    assert np.array_equal(pixels_from_input(batch, spec).transpose(0, 3, 1, 2)[0], pixels)


@FAST
@given(spec=specs(), data=st.data())
def test_any_pixel_array_conforms(spec, data):
    """conform_pixels: any (N, 1 or 3, H, W) uint8 batch -> the card's shape; already conforming -> untouched."""
    shape = (
        data.draw(st.integers(1, 3)),
        data.draw(st.sampled_from([1, 3])),
        data.draw(st.integers(1, 40)),
        data.draw(st.integers(1, 40)),
    )
    pixels = data.draw(arrays(np.uint8, shape))
    out = conform_pixels(pixels, spec)
    assert out.shape == (shape[0], *spec.shape) and out.dtype == np.uint8
    if shape[1:] == spec.shape:
        assert out is pixels


# ---------------------------------------------------------------- command line


def run_main(args: list[str]) -> tuple[int, str, str]:
    """The real entry point in-process: (exit code, stdout, stderr); anything but SystemExit propagates."""
    with CliRunner().isolation() as (out, err, _):
        try:
            main(args)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        return code, out.getvalue().decode(), err.getvalue().decode()


values = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12),
    st.sampled_from(
        [
            "0",
            "-1",
            "1",
            "3",
            "1e3",
            "nan",
            "inf",
            " 3",
            "0x10",
            "\u0663",
            "all",
            "fp32",
            "int8",
            "onnx",
            "fp16,int8",
            "onnx,tensorrt",
            "--help",
            "-",
            "",
        ]
    ),
)


def valid_or(*good: str) -> st.SearchStrategy[str]:
    """Half the time a value the flag takes, so the later checks (not only parsing) are reached too."""
    return st.one_of(st.sampled_from(good), values)


def assert_rejected(args: list[str]) -> None:
    code, out, err = run_main(args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (args, code, out, err)
    assert len(lines) == 1 and lines[0].startswith("rtool: error:"), (args, err)
    assert "Traceback" not in out + err and "internal error" not in err, (args, err)
    event(" ".join(lines[0].split()[2:5]))  # which check stopped it (--hypothesis-show-statistics)


@FAST
@given(epochs=valid_or("1", "12", "1000000"), batch_size=valid_or("1", "128"), lr=valid_or("0.1", "1e-3"))
def test_train_flags(tmp_path_factory, epochs, batch_size, lr):
    """Whatever the numbers, the run folder is taken: every case stops at parsing or at that check."""
    taken = tmp_path_factory.getbasetemp() / "taken-run"
    taken.mkdir(exist_ok=True)
    (taken / "notes.txt").write_text("not a run")
    assert_rejected(["train", "--epochs", epochs, "--batch-size", batch_size, "--lr", lr, "--out", str(taken)])


@FAST
@given(
    first=valid_or("1", "16", "1000000"),
    precision=valid_or("fp32", "fp16", "int8"),
    topk=valid_or("1", "5"),
    runtime=valid_or("onnxruntime", "eager", "tensorrt"),
)
def test_infer_flags(first, precision, topk, runtime):
    assert_rejected(
        [
            "infer",
            "/nonexistent/model.onnx",
            "--dataset",
            "mnist5k",
            "--first",
            first,
            "--precision",
            precision,
            "--topk",
            topk,
            "--runtime",
            runtime,
        ]
    )


@FAST
@given(
    formats=valid_or("onnx", "all", "torchscript,pt2", "tensorrt"),
    precision=valid_or("fp32", "fp16,int8"),
    calib=valid_or("1", "256"),
    batch_range=valid_or("1:8:64", "4:4:4"),
)
def test_export_flags(formats, precision, calib, batch_range):
    assert_rejected(
        [
            "export",
            "/nonexistent/best.pt",
            "--format",
            formats,
            "--precision",
            precision,
            "--calib-size",
            calib,
            "--batch-range",
            batch_range,
        ]
    )


@FAST
@given(
    limit=valid_or("1", "500"),
    precisions=valid_or("fp32", "int8,fp16"),
    threshold=valid_or("int8.agreement=99.5", "fp32.max_abs_diff=none", "fp16.accuracy_drop=0.5"),
)
def test_parity_flags(limit, precisions, threshold):
    assert_rejected(
        ["parity", "/nonexistent/export", "--limit", limit, "--precisions", precisions, "--threshold", threshold]
    )


@pytest.mark.parametrize(
    "command", ["train", "export", "infer", "eval", "parity", "bench", "summary", "models", "compare", "demo"]
)
def test_help_of_every_command(command):
    code, out, err = run_main([command, "--help"])
    assert code == 0 and out.startswith("Usage: rtool ") and not err, (command, code, err)


# ---------------------------------------------------------------- loaders fed random or damaged bytes

SUFFIXES = (".onnx", ".pt", ".ts", ".pt2")
REAL = ("model.onnx", "model.int8-cpu.onnx", "model.pt", "model.ts", "model.pt2")


def damaged(data: bytes, rng: np.random.Generator, kind: int) -> bytes:
    """Bytes flipped here and there, cut short, or a run overwritten."""
    out = bytearray(data)
    if kind == 0:
        for _ in range(int(rng.integers(1, 16))):
            out[int(rng.integers(len(out)))] = int(rng.integers(256))
    elif kind == 1:
        out = out[: int(rng.integers(1, len(out)))]
    else:
        start = int(rng.integers(len(out)))
        out[start : start + 64] = rng.bytes(64)
    return bytes(out)


def load_and_run(path) -> None:
    read_card(path)
    with open_runtime(runtime_for_file(path), path, "cpu") as rt:
        rt.infer(np.zeros((1, *rt.card.input.shape), dtype=np.float32))


def test_model_loaders_raise_only_rtool_errors(tmp_path, cpu_export_dir):
    rng = np.random.default_rng(2024)
    cases = {f"random{i}{SUFFIXES[i % 4]}": rng.bytes(int(rng.integers(0, 4096))) for i in range(20)}
    for name in REAL:
        data = (cpu_export_dir / name).read_bytes()
        cases.update({f"damaged{k}-{name}": damaged(data, rng, k % 3) for k in range(6)})
    outcomes = {"loaded": 0, "refused": 0}
    for number, (name, data) in enumerate(cases.items()):
        path = tmp_path / f"case{number}{Path(name).suffix}"  # the ending picks the runtime
        path.write_bytes(data)
        try:
            load_and_run(path)
            outcomes["loaded"] += 1
        except RtoolError as e:
            assert "\n" not in str(e), (name, str(e))
            outcomes["refused"] += 1
        except Exception as e:  # noqa: BLE001 - the point: nothing else may come out
            pytest.fail(f"{name}: {type(e).__name__}: {e}")
    assert outcomes["refused"] >= 20 + len(REAL)  # all random files, and most damaged ones
    print(f"model loader fuzz: {len(cases)} files, {outcomes}")


def test_image_loading_raises_only_rtool_errors(tmp_path, digit_png):
    rng = np.random.default_rng(7)
    spec = InputSpec(channels=1, height=28, width=28, mean=[0.1311], std=[0.3083])
    sources = {"png": digit_png.read_bytes()}
    for fmt in ("JPEG", "GIF", "TIFF", "BMP"):
        Image.open(digit_png).save(tmp_path / f"digit.{fmt.lower()}", fmt)
        sources[fmt.lower()] = (tmp_path / f"digit.{fmt.lower()}").read_bytes()
    cases = {f"random{i}.png": rng.bytes(int(rng.integers(0, 2048))) for i in range(10)}
    for fmt, data in sources.items():
        cases.update({f"damaged{k}.{fmt}": damaged(data, rng, k % 3) for k in range(6)})
    refused = 0
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        try:
            pixels, reads = load_images([tmp_path / name], spec)
            notes = summarise_reads(reads, spec)
            assert pixels.shape == (1, *spec.shape) and all("\n" not in n for n in notes), name
        except RtoolError as e:
            assert "\n" not in str(e), (name, str(e))
            refused += 1
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{name}: {type(e).__name__}: {e}")
    assert refused >= 10
    print(f"image loader fuzz: {len(cases)} files, {refused} refused")
