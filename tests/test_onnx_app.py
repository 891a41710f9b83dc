"""The torch-free predictor (runtimes/onnx_app.py): what an app with only onnxruntime, NumPy and Pillow gets."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from exporters.onnx_common import onnx_metadata
from runtimes import open_runtime
from runtimes.onnx_app import Predictor, PredictorError
from toolkit.card import ONNX_METADATA_KEY, InputSpec
from toolkit.checkpoint import make_card
from toolkit.preprocess import convert_image, prepare_batch

from conftest import EXIF_TURNS, REPO

TOP_K = 3

# Put first on PYTHONPATH: makes `import torch` / `import torchvision` fail in that interpreter.
BLOCKER = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"{name} is blocked: this process must run without PyTorch")
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def eager_top_k(checkpoint: Path, images: list[Path], k: int = TOP_K) -> list[list[tuple[str, float]]]:
    """The reference: the PyTorch model on the images as rtool preprocesses them, softmax, top k."""
    with open_runtime("eager", checkpoint, "cpu") as rt:
        spec = rt.card.input
        pixels = np.stack([convert_image(Image.open(p), spec) for p in images])
        logits = rt.infer(prepare_batch(pixels, spec)).astype(np.float64)
        names = rt.card.class_names
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(names[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]


def assert_same_predictions(got: list[list[tuple[str, float]]], expected: list[list[tuple[str, float]]]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert [c for c, _ in g] == [c for c, _ in e], (g, e)
        assert [p for _, p in g] == pytest.approx([p for _, p in e], abs=1e-5)


def from_json(stdout: str) -> list[list[tuple[str, float]]]:
    return [[(p["class"], p["probability"]) for p in item["predictions"]] for item in json.loads(stdout)]


def package_dirs(*modules: str) -> list[Path]:
    """Where each installed package lives, plus the bundled shared libraries wheels keep beside them."""
    found = [Path(next(iter(importlib.util.find_spec(m).submodule_search_locations))) for m in modules]
    site = found[0].parent
    return found + [p for p in site.glob("*.libs") if p.name.split(".")[0].lower() in ("numpy", "pillow")]


@pytest.mark.parametrize("model_file", ["model.onnx", "model.raw-softmax.onnx"])
def test_module_runs_with_torch_unimportable_and_matches_eager(
    embed_export_dir, app_images, untrained_checkpoint, tmp_path, model_file
):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked" in probe.stderr  # the blocker really works
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtimes.onnx_app",
            str(embed_export_dir / model_file),
            *map(str, app_images),
            "--top-k",
            str(TOP_K),
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert_same_predictions(from_json(result.stdout), eager_top_k(untrained_checkpoint, app_images))


def test_one_copied_file_needs_only_onnxruntime_numpy_pillow(
    embed_export_dir, app_images, untrained_checkpoint, tmp_path
):
    """An app vendors onnx_app.py alone; Python runs isolated (-I -S): no site-packages, no rtool, no torch."""
    app = tmp_path / "app"
    packages = tmp_path / "packages"
    app.mkdir()
    packages.mkdir()
    shutil.copy(REPO / "runtimes" / "onnx_app.py", app / "onnx_app.py")
    for location in package_dirs("onnxruntime", "numpy", "PIL"):
        (packages / location.name).symlink_to(location, target_is_directory=True)
    script = f"""
import json, sys
sys.path[:0] = [{str(app)!r}, {str(packages)!r}]
from onnx_app import Predictor
for banned in ("torch", "torchvision", "toolkit", "runtimes", "exporters"):
    try:
        __import__(banned)
        sys.exit(f"{{banned}} was importable")
    except ImportError:
        pass
predictor = Predictor({str(embed_export_dir / "model.onnx")!r})
print(json.dumps(predictor.predict({[str(p) for p in app_images]!r}, top_k={TOP_K})))
assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "toolkit", "runtimes", "onnx")]
"""
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    got = [[tuple(pair) for pair in image] for image in json.loads(result.stdout)]
    assert_same_predictions(got, eager_top_k(untrained_checkpoint, app_images))


def test_every_variant_predicts_alike(embed_export_dir, inprocess_export_dir, app_images):
    files = [
        embed_export_dir / "model.onnx",
        inprocess_export_dir / "model.raw.onnx",
        embed_export_dir / "model.raw-softmax.onnx",
        embed_export_dir / "triton" / "digits" / "1" / "model.onnx",
        inprocess_export_dir / "triton" / "resnet20" / "1" / "model.onnx",
    ]
    reference, *others = [Predictor(f).predict(app_images, top_k=10) for f in files]
    for got in others:
        assert_same_predictions(got, reference)
    assert all(sum(p for _, p in image) == pytest.approx(1.0) for image in reference)


def test_preprocessing_is_rtools_own(embed_export_dir, app_images):
    """Bit for bit what toolkit.preprocess makes, for every size and colour mode of the test images."""
    predictor = Predictor(embed_export_dir / "model.onnx")
    card = predictor.card
    spec = InputSpec(
        card["input"]["channels"],
        card["input"]["height"],
        card["input"]["width"],
        card["input"]["mean"],
        card["input"]["std"],
    )
    expected = prepare_batch(np.stack([convert_image(Image.open(p), spec) for p in app_images]), spec)
    got = predictor.preprocess(app_images)
    assert got.dtype == np.float32 and np.array_equal(got, expected)
    raw = Predictor(embed_export_dir / "model.raw-softmax.onnx").preprocess([Image.open(p) for p in app_images])
    assert raw.dtype == np.uint8 and raw.shape == (len(app_images), 28, 28, 1)
    assert np.array_equal(prepare_batch(raw.transpose(0, 3, 1, 2), spec), expected)


def rgb_model(path: Path) -> tuple[Path, InputSpec]:
    """A tiny RGB classifier (global average pool + dense) with an ImageNet-style card."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(1).normal(size=(3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "rgb",
        [value("input", TensorProto.FLOAT, ["N", 3, 24, 32])],
        [value("logits", TensorProto.FLOAT, ["N", 3])],
        [weights],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    spec = InputSpec(channels=3, height=24, width=32, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    helper.set_model_props(
        proto, onnx_metadata(make_card("resnet18", class_names=["cat", "dog", "fox"], input_spec=spec))
    )
    onnx.save(proto, str(path))
    return path, spec


def test_rgb_card_is_followed(app_images, tmp_path):
    path, spec = rgb_model(tmp_path / "rgb.onnx")
    predictor = Predictor(path)
    assert predictor.class_names == ["cat", "dog", "fox"]
    got = predictor.preprocess(app_images)
    expected = prepare_batch(np.stack([convert_image(Image.open(p), spec) for p in app_images]), spec)
    assert got.shape == (len(app_images), 3, 24, 32) and np.array_equal(got, expected)
    assert [len(p) for p in predictor.predict(app_images, top_k=5)] == [3] * len(app_images)  # k capped


def test_crop_card_gives_what_rtool_infer_and_numpy_give_on_non_square_jpegs(crop_export_dir, photo_jpegs):
    """Card format 2 (resize the shorter side, crop the centre): the app (float and uint8 files), `rtool infer`
    and a NumPy reference see the same pixels (a stretched image would not: checked) and predict alike."""
    from conftest import CROP_SPEC, run_cli

    result = run_cli(
        "infer", crop_export_dir / "model.onnx", *photo_jpegs, "--topk", TOP_K, "--json", "--provider", "cpu"
    )
    assert result.returncode == 0, result.stderr
    rtool = [[(t["class"], t["probability"]) for t in p["topk"]] for p in json.loads(result.stdout)["predictions"]]
    expected = prepare_batch(np.stack([convert_image(Image.open(p), CROP_SPEC) for p in photo_jpegs]), CROP_SPEC)
    logits = expected.reshape(len(photo_jpegs), -1).astype(np.float64) @ np.load(crop_export_dir / "model.npy")
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    names = ["ant", "bee", "cat", "dog", "eel"]
    reference = [[(names[j], float(row[j])) for j in np.argsort(-row, kind="stable")[:TOP_K]] for row in probs]
    assert_same_predictions(rtool, reference)
    for name in ("model.onnx", "model.raw.onnx"):
        assert_same_predictions(Predictor(crop_export_dir / name).predict(photo_jpegs, top_k=TOP_K), rtool)
    got = Predictor(crop_export_dir / "model.onnx").preprocess(photo_jpegs)
    assert got.shape == (len(photo_jpegs), 3, 24, 32) and np.array_equal(got, expected)
    stretched = InputSpec(3, 24, 32, CROP_SPEC.mean, CROP_SPEC.std)
    assert not np.array_equal(
        prepare_batch(convert_image(Image.open(photo_jpegs[0]), stretched)[None], stretched), got[:1]
    )


def upright_reference(path: Path) -> Image.Image:
    """The photo of ``exif_jpegs`` turned by hand from its untagged twin (same compressed pixels)."""
    orientation = int(path.stem.rsplit("-", 1)[1])
    plain = Image.open(path.with_name("orientation-1.jpg"))
    turn = EXIF_TURNS[orientation]
    return plain if turn is None else plain.transpose(getattr(Image.Transpose, turn))


@pytest.mark.parametrize("crop", [False, True])
def test_exif_orientation_is_applied_alike_by_rtool_training_and_the_app(exif_jpegs, tmp_path, crop):
    """A photo tagged "turn me" reaches the model upright in rtool (infer's and evaluation's convert_image,
    training's FileSplit.read) and in onnx_app, for a stretching and a cropping card; ignoring the tag would
    give other pixels (checked)."""
    from toolkit.data.imagefolder import FileSplit
    from toolkit.preprocess import resize_to_input

    path, spec = rgb_model(tmp_path / "rgb.onnx")
    if crop:
        spec = InputSpec(3, 24, 32, spec.mean, spec.std, resize="center_crop", resize_size=32)
    predictor = Predictor(path)
    predictor.resize, predictor.resize_size = spec.resize, spec.resize_size or 0
    files = [exif_jpegs[k] for k in sorted(exif_jpegs)]
    split = FileSplit(files, torch_labels(len(files)), 3)
    for i, file in enumerate(files):
        expected = convert_image(upright_reference(file), spec)
        assert np.array_equal(convert_image(Image.open(file), spec), expected), file.name
        read = split.read(i, "RGB", lambda image: resize_to_input(image, spec))
        assert np.array_equal(read, expected), file.name
        assert np.array_equal(predictor.preprocess([file])[0], prepare_batch(expected[None], spec)[0]), file.name
        assert np.array_equal(predictor.preprocess([Image.open(file)])[0], prepare_batch(expected[None], spec)[0])
    for turned in (exif_jpegs[6], exif_jpegs[3]):
        ignored = convert_image(Image.open(exif_jpegs[1]), spec)
        assert not np.array_equal(convert_image(Image.open(turned), spec), ignored)


def torch_labels(count: int):
    import torch

    return torch.zeros(count, dtype=torch.int64)


def test_single_image_and_pil_input(embed_export_dir, app_images):
    predictor = Predictor(embed_export_dir / "model.onnx", batch_size=2)
    by_path = predictor.predict(app_images, top_k=2)
    assert predictor.predict(app_images[0], top_k=2) == by_path[:1]
    assert predictor.predict([Image.open(p) for p in app_images], top_k=2) == by_path
    assert predictor.predict([]) == []


def without_card(source: Path, target: Path, card: str | None) -> Path:
    proto = onnx.load(str(source))
    del proto.metadata_props[:]
    if card is not None:
        onnx.helper.set_model_props(proto, {ONNX_METADATA_KEY: card})
    onnx.save(proto, str(target))
    return target


def test_unusable_files_are_refused_in_one_line(embed_export_dir, tmp_path):
    model = embed_export_dir / "model.onnx"
    card = json.loads(Predictor(model).session.get_modelmeta().custom_metadata_map[ONNX_METADATA_KEY])
    newer = dict(card, format_version=99)
    wrong_size = dict(card, input=dict(card["input"], height=32))
    raw_claims = dict(card, input=dict(card["input"], dtype="uint8", layout="NHWC"))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    cases = [
        (tmp_path / "missing.onnx", "does not exist"),
        (tmp_path / "junk.onnx", "cannot load"),
        (without_card(model, tmp_path / "nocard.onnx", None), "has no rtool model card"),
        (without_card(model, tmp_path / "badjson.onnx", "{"), "malformed"),
        (without_card(model, tmp_path / "newer.onnx", json.dumps(newer)), "newer than this predictor"),
        (without_card(model, tmp_path / "size.onnx", json.dumps(wrong_size)), "the card says NCHW [1, 32, 28]"),
        (without_card(model, tmp_path / "dtype.onnx", json.dumps(raw_claims)), "input is tensor(uint8)"),
    ]
    for path, message in cases:
        with pytest.raises(PredictorError) as raised:
            Predictor(path)
        assert message in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(PredictorError, match="cannot read image"):
        Predictor(model).predict([tmp_path / "junk.onnx"])


def test_command_line_errors_are_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "runtimes.onnx_app", str(tmp_path / "none.onnx"), "x.png"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    missing = tmp_path / "none.onnx"
    assert result.stderr.strip().splitlines() == [f"onnx_app: error: model file {missing} does not exist"]
