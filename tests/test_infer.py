"""`rtool infer`: images and data sets through every runtime, as a user runs it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from runtimes import open_runtime
from toolkit.data import load_dataset
from toolkit.errors import BadInputError, RtoolError
from toolkit.infer import run_infer
from toolkit.preprocess import convert_image, prepare_batch

from conftest import assert_one_line_error, needs_executorch, needs_openvino, run_cli


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory):
    """A real test digit saved as a 45x30 RGBA PNG: another size and mode than the model's 28x28 grey."""
    pixels = load_dataset("mnist5k").test.images[500, 0].numpy()
    rgba = Image.fromarray(pixels, mode="L").resize((45, 30)).convert("RGBA")
    path = tmp_path_factory.mktemp("images") / "digit.png"
    rgba.save(path)
    return path


def test_png_of_another_size_and_mode_is_converted_with_a_note(cpu_export_dir, digit_png):
    result = run_cli("infer", cpu_export_dir / "model.onnx", digit_png, "--topk", "3", "--json")
    assert result.returncode == 0, result.stderr
    note = f"rtool: note: {digit_png} is 45x30 RGBA; converted to 28x28 L as the model card says"
    assert result.stderr.strip() == note
    doc = json.loads(result.stdout)
    (prediction,) = doc["predictions"]
    assert len(prediction["topk"]) == 3 and prediction["actual"] is None and doc["accuracy"] is None
    with Image.open(digit_png) as image, open_runtime("eager", cpu_export_dir / "model.pt", "cpu") as rt:
        logits = rt.infer(prepare_batch(convert_image(image, rt.card.input)[None], rt.card.input))
    assert prediction["predicted"] == rt.card.class_names[int(logits.argmax())]
    probs = np.exp(logits[0] - logits[0].max()) / np.exp(logits[0] - logits[0].max()).sum()
    assert prediction["probability"] == pytest.approx(float(probs.max()), abs=1e-4)


def test_first_16_test_images_int8_table(cpu_export_dir):
    result = run_cli(
        "infer",
        cpu_export_dir,
        "--runtime",
        "onnxruntime",
        "--precision",
        "int8",
        "--dataset",
        "mnist5k",
        "--first",
        "16",
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "mnist5k test[" in line]
    assert len(rows) == 16
    assert "model.int8-cpu.onnx: onnxruntime int8 on CPUExecutionProvider" in result.stdout
    correct = sum(" yes " in row for row in rows)
    assert sum(" NO " in row for row in rows) == 16 - correct
    assert f"accuracy: {correct}/16 = {correct / 16:.1%}" in result.stdout


@pytest.mark.parametrize(
    "runtime,precision",
    [
        ("eager", "fp32"),
        ("torchscript", "fp32"),
        ("pt2", "fp32"),
        ("onnxruntime", "fp32"),
        ("onnxruntime", "fp16"),
        ("onnxruntime", "int8"),
        pytest.param("openvino", "fp32", marks=needs_openvino),
        pytest.param("openvino", "int8", marks=needs_openvino),
        pytest.param("executorch", "fp32", marks=needs_executorch),
        pytest.param("executorch", "int8", marks=needs_executorch),
    ],
)
def test_every_runtime_predicts_the_first_test_images(cpu_export_dir, runtime, precision):
    result = run_infer(
        cpu_export_dir, runtime=runtime, precision=precision, dataset="mnist5k", first=16, threads=1, device="cpu"
    )
    eager = run_infer(cpu_export_dir / "model.pt", dataset="mnist5k", first=16, device="cpu")
    labels = load_dataset("mnist5k").test.labels[:16].tolist()
    assert [p.actual for p in result.predictions] == [str(label) for label in labels]
    agree = np.mean([a.predicted == b.predicted for a, b in zip(result.predictions, eager.predictions)])
    assert agree >= (0.9 if precision == "int8" else 1.0)
    assert result.correct == sum(p.predicted == p.actual for p in result.predictions)
    assert result.accuracy == result.correct / 16 and result.precision == precision


def test_json_and_grid(cpu_export_dir, tmp_path):
    grid = tmp_path / "grid.png"
    result = run_cli(
        "infer",
        cpu_export_dir,
        "--runtime",
        "torchscript",
        "--dataset",
        "mnist5k",
        "--first",
        "10",
        "--json",
        "--save-grid",
        grid,
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["runtime"] == "torchscript" and doc["model_file"].endswith("model.ts") and doc["grid"] == str(grid)
    assert len(doc["predictions"]) == 10 and doc["total"] == 10
    assert doc["correct"] == sum(p["correct"] for p in doc["predictions"])
    assert doc["accuracy"] == pytest.approx(doc["correct"] / 10)
    with Image.open(grid) as image:
        assert image.format == "PNG" and image.width > 400
        rgb = np.asarray(image.convert("RGB")).astype(int)
    red = ((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum()
    assert (red > 0) == (doc["correct"] < 10)  # wrong predictions are marked in red, right ones are not


def test_provider_fallback_is_one_note_without_the_onnxruntime_log(cpu_export_dir, tmp_path):
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8), mode="L").save(tmp_path / "blank.png")
    result = run_cli("infer", cpu_export_dir / "model.onnx", tmp_path / "blank.png", "--provider", "cuda")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    if "unusable here" not in result.stderr:
        pytest.skip("CUDA is usable here: nothing falls back")
    assert lines == [next(line for line in lines if "CUDAExecutionProvider unusable here" in line)]
    assert "blank.png" in result.stdout


@pytest.fixture(scope="module")
def junk(tmp_path_factory):
    folder = tmp_path_factory.mktemp("junk")
    noise = np.random.default_rng(1).bytes(4096)
    for name in ("model.onnx", "model.ts", "model.pt2"):
        (folder / name).write_bytes(noise)
    (folder / "notes.png").write_text("this is not an image")
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8), mode="L").save(folder / "ok.png")
    return folder


# Every bad input, through the API (fast): one line, the RtoolError that the CLI turns into exit code 2.
BAD_INPUTS = {
    "not-image": (["{export}/model.onnx", "{junk}/notes.png"], "notes.png is not a usable image"),
    "not-model": (["{junk}/ok.png", "{junk}/ok.png"], "no runtime opens 'ok.png'"),
    "runtime-mismatch": (
        ["{export}/model.onnx", "--runtime", "torchscript", "{junk}/ok.png"],
        "model.onnx is not a torchscript file (expected .ts); it opens with --runtime onnxruntime",
    ),
    "corrupt-onnx": (["{junk}/model.onnx", "{junk}/ok.png"], "model.onnx is not a loadable ONNX model"),
    "corrupt-ts": (["{junk}/model.ts", "{junk}/ok.png"], "model.ts is not a readable TorchScript file"),
    "corrupt-pt2": (["{junk}/model.pt2", "{junk}/ok.png"], "model.pt2 is not a readable torch.export file"),
    "tensorrt": (
        ["{export}", "--runtime", "tensorrt", "--dataset", "mnist5k", "--first", "4"],
        "runtime 'tensorrt' is not available here",
    ),
    "first-too-large": (
        ["{export}", "--dataset", "mnist5k", "--first", "5000"],
        "--first 5000 is more than the 1000 test images",
    ),
    "no-images": (["{export}"], "nothing to predict"),
    "missing-model": (["{junk}/missing.onnx", "{junk}/ok.png"], "does not exist"),
    "precision-mismatch": (
        ["{export}/model.onnx", "--precision", "int8", "{junk}/ok.png"],
        "model.onnx is fp32, not int8",
    ),
    "missing-combination": (
        ["{export}", "--runtime", "eager", "--precision", "fp16", "{junk}/ok.png"],
        "has no eager fp16 file; it holds: model.pt (eager fp32)",
    ),
}
CLI_CHECKED = ("not-image", "runtime-mismatch", "corrupt-onnx", "tensorrt", "first-too-large", "no-images")


def as_call(args: list[str]) -> tuple[list[str], dict]:
    """CLI arguments -> (positional, keyword arguments) of run_infer."""
    positional, options, rest = [], {}, iter(args)
    for arg in rest:
        if arg.startswith("--"):
            value = next(rest)
            options[arg[2:]] = int(value) if arg == "--first" else value
        else:
            positional.append(arg)
    return positional, options


def skip_if_tensorrt_runs(case: str) -> None:
    from runtimes import available

    if case == "tensorrt" and available("tensorrt")[0]:
        pytest.skip("TensorRT is available here")


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_error(cpu_export_dir, junk, case):
    skip_if_tensorrt_runs(case)
    args, message = BAD_INPUTS[case]
    (model, *images), options = as_call([a.format(export=cpu_export_dir, junk=junk) for a in args])
    with pytest.raises(RtoolError) as raised:
        run_infer(model, images, **options)
    assert raised.value.exit_code == 2 and message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("case", CLI_CHECKED)
def test_bad_input_on_the_command_line_exits_2_with_one_line(cpu_export_dir, junk, case):
    skip_if_tensorrt_runs(case)
    args, message = BAD_INPUTS[case]
    assert_one_line_error(run_cli("infer", *(a.format(export=cpu_export_dir, junk=junk) for a in args)), 2, message)


def test_api_refuses_mixed_or_incomplete_requests(cpu_export_dir, junk):
    with pytest.raises(BadInputError, match="not both"):
        run_infer(cpu_export_dir, [junk / "ok.png"], dataset="mnist5k")
    with pytest.raises(BadInputError, match="--first needs --dataset"):
        run_infer(cpu_export_dir, [junk / "ok.png"], first=3)
