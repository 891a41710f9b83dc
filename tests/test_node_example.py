"""examples/node: a Node.js app (onnxruntime-node) classifies PNGs exactly as `rtool infer` does, JPEGs within
a few pixel levels of it (jpeg-js's IDCT is not libjpeg's) and with the same classes.

Needs `node` and `npm`. The example's packages are installed once from its
package-lock.json (`npm ci`) into ~/.cache/rtool/node-example-HASH and found
through NODE_PATH, so a fresh checkout does not download them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toolkit.card import ONNX_METADATA_KEY, InputSpec
from toolkit.preprocess import convert_image, normalize

from conftest import REPO, run_rtool

EXAMPLE = REPO / "examples" / "node"
TOP_K = 3


def install_packages(npm: str) -> Path:
    """node_modules for the example's lock file, installed once per lock file."""
    lock = (EXAMPLE / "package.json").read_bytes() + (EXAMPLE / "package-lock.json").read_bytes()
    target = Path.home() / ".cache" / "rtool" / f"node-example-{hashlib.sha256(lock).hexdigest()[:16]}"
    if (target / "node_modules" / "onnxruntime-node").is_dir():
        return target / "node_modules"
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".node-example-", dir=target.parent))
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copy(EXAMPLE / name, staging / name)
        install = subprocess.run(
            [npm, "ci", "--onnxruntime-node-install=skip", "--no-audit", "--no-fund"],
            cwd=staging,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if install.returncode != 0:
            last = (install.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"npm could not install the example's packages (no registry access?): {last}")
        if not target.exists():
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / "node_modules"


@pytest.fixture(scope="module")
def node() -> tuple[str, dict[str, str]]:
    """(node binary, environment that finds the example's packages); skips with the reason where it cannot."""
    node_bin, npm_bin = shutil.which("node"), shutil.which("npm")
    if not node_bin or not npm_bin:
        pytest.skip(f"the Node.js example needs node and npm on PATH (node: {node_bin}, npm: {npm_bin})")
    return node_bin, {**os.environ, "NODE_PATH": str(install_packages(npm_bin))}


def classify(node: tuple[str, dict[str, str]], *args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [node[0], str(EXAMPLE / "classify.js"), *map(str, args)],
        env=node[1],
        capture_output=True,
        text=True,
        timeout=120,
    )


def node_eval(node: tuple[str, dict[str, str]], script: str) -> bytes:
    """Run ``script`` with the example loaded as ``c``; its stdout as bytes."""
    code = f"const c = require({json.dumps(str(EXAMPLE / 'classify.js'))});\n{script}"
    result = subprocess.run([node[0], "-e", code], env=node[1], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def node_predictions(stdout: str) -> list[list[tuple[str, float]]]:
    return [[(p["class"], p["probability"]) for p in item["predictions"]] for item in json.loads(stdout)]


def assert_same(got: list[list[tuple[str, float]]], expected: list[list[tuple[str, float]]]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert [c for c, _ in g] == [c for c, _ in e], (g, e)
        assert [p for _, p in g] == pytest.approx([p for _, p in e], abs=1e-5)


@pytest.fixture(scope="module")
def rtool_infer(embed_export_dir, app_images) -> list[list[tuple[str, float]]]:
    """What `rtool infer` (the Python ONNX Runtime runtime) predicts for the test images."""
    result = run_rtool(
        "infer",
        embed_export_dir / "model.onnx",
        *app_images,
        "--topk",
        TOP_K,
        "--json",
        "--runtime",
        "onnxruntime",
        "--provider",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    return [[(t["class"], t["probability"]) for t in p["topk"]] for p in json.loads(result.stdout)["predictions"]]


@pytest.mark.parametrize("model_file", ["model.onnx", "model.raw-softmax.onnx"])
def test_node_predicts_what_rtool_infer_predicts(node, embed_export_dir, app_images, rtool_infer, model_file):
    result = classify(node, embed_export_dir / model_file, *app_images, "--top-k", TOP_K, "--json")
    assert result.returncode == 0, result.stderr
    assert [item["image"] for item in json.loads(result.stdout)] == [str(p) for p in app_images]
    assert_same(node_predictions(result.stdout), rtool_infer)


def test_plain_output_names_each_image(node, embed_export_dir, app_images, rtool_infer):
    result = classify(node, embed_export_dir / "model.onnx", app_images[0])
    assert result.returncode == 0, result.stderr
    (cls, prob), *_ = rtool_infer[0]
    assert result.stdout.strip() == f"{app_images[0]}: {cls} ({prob:.4f})"


def test_node_reads_the_card_from_the_onnx_protobuf(node, embed_export_dir):
    import onnx

    for name in ("model.onnx", "model.raw-softmax.onnx"):
        path = embed_export_dir / name
        stored = {p.key: p.value for p in onnx.load(str(path)).metadata_props}[ONNX_METADATA_KEY]
        read = node_eval(
            node,
            f"const bytes = require('fs').readFileSync({json.dumps(str(path))});\n"
            f"process.stdout.write(JSON.stringify(c.readCard(bytes, 'm')));",
        )
        assert json.loads(read) == json.loads(stored)


@pytest.mark.parametrize(
    "spec",
    [
        InputSpec(1, 28, 28, [0.1311], [0.3083]),
        InputSpec(3, 24, 32, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        InputSpec(3, 77, 50, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]),
        InputSpec(3, 24, 32, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], resize="center_crop", resize_size=36),
        InputSpec(1, 28, 28, [0.5], [0.25], resize="center_crop", resize_size=31),  # odd margins: half to even
    ],
)
def test_node_preprocessing_is_bit_exact(node, app_images, spec):
    """Colour conversion, Pillow's bilinear resize (both pass orders), the centre crop and normalisation, value
    for value."""
    card = {"input": spec.to_dict()}
    paths = json.dumps([str(p) for p in app_images])
    out = node_eval(
        node,
        f"const card = {json.dumps(card)};\n"
        f"const t = c.toModelInput(c.preprocess({paths}, card), card);\n"
        f"process.stdout.write(Buffer.from(t.data.buffer));",
    )
    got = np.frombuffer(out, dtype=np.float32).reshape(len(app_images), *spec.shape)
    expected = normalize(np.stack([convert_image(Image.open(p), spec) for p in app_images]), spec)
    assert np.array_equal(got, expected)


def test_node_errors_are_one_line(node, embed_export_dir, app_images, tmp_path):
    import onnx

    proto = onnx.load(str(embed_export_dir / "model.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "nocard.onnx"))
    (tmp_path / "notes.txt").write_text("not a png")
    cases = [
        ((tmp_path / "nocard.onnx", app_images[0]), "has no rtool model card"),
        ((tmp_path / "missing.onnx", app_images[0]), "cannot be read"),
        ((embed_export_dir / "model.onnx", tmp_path / "notes.txt"), "this example reads PNG and JPEG files"),
    ]
    for args, message in cases:
        result = classify(node, *args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("classify: error:") and message in lines[0], lines


# ---------------------------------------------------------------- JPEG

JPEG_MAX_DIFF, JPEG_MEAN_DIFF = 4, 0.3  # measured: at most 3 levels, 0.03-0.24 on average (docs/embedding.md)


@pytest.fixture(scope="module")
def jpegs(app_images, tmp_path_factory) -> list[Path]:
    """JPEG files as cameras and editors write them: grey, colour at 4:2:0 / 4:2:2 / 4:4:4, progressive, odd
    sizes, and a real photo (matplotlib's sample of Grace Hopper, 512x600, 4:2:0)."""
    import matplotlib.cbook

    folder = tmp_path_factory.mktemp("jpegs")
    digits = [np.asarray(Image.open(p).convert("L")) for p in app_images[:5]]
    tinted = [np.stack([d, (d * 0.6).astype(np.uint8), 255 - d], axis=-1) for d in digits]  # real chroma
    made = [
        ("grey.jpg", Image.fromarray(digits[0], "L"), {"quality": 90}),
        ("rgb420-84.jpg", Image.fromarray(tinted[1]).resize((84, 84)), {"quality": 75, "subsampling": 2}),
        ("rgb422-45x31.jpg", Image.fromarray(tinted[2]).resize((45, 31)), {"quality": 90, "subsampling": 1}),
        ("rgb444.jpg", Image.fromarray(tinted[3]), {"quality": 95, "subsampling": 0}),
        (
            "progressive-57x29.jpg",
            Image.fromarray(tinted[4]).resize((57, 29)),
            {"quality": 85, "subsampling": 2, "progressive": True},
        ),
    ]
    paths = []
    for name, image, options in made:
        image.save(folder / name, **options)
        paths.append(folder / name)
    return paths + [Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))]


@pytest.mark.parametrize("color", ["L", "RGB"])
def test_node_decodes_jpegs_within_a_few_levels_of_pillow(node, jpegs, color):
    script = (
        f"for (const p of {json.dumps([str(p) for p in jpegs])}) "
        f"process.stdout.write(Buffer.from(c.loadImage(p, {json.dumps(color)}).data));"
    )
    got = node_eval(node, script)
    offset = 0
    for path in jpegs:
        expected = np.asarray(Image.open(path).convert(color)).astype(int)
        pixels = np.frombuffer(got, dtype=np.uint8, count=expected.size, offset=offset).reshape(expected.shape)
        offset += expected.size
        diff = np.abs(pixels.astype(int) - expected)
        assert diff.max() <= JPEG_MAX_DIFF and diff.mean() <= JPEG_MEAN_DIFF, (path.name, diff.max(), diff.mean())
    assert offset == len(got)


def test_node_turns_jpegs_upright_by_their_exif_orientation_as_rtool_does(node, exif_jpegs):
    """Orientations 1-8 of one photo: Node's pixels have the upright size and Pillow's upright pixels (within
    the JPEG decoders' few levels); a wrong turn would differ by far more, or in shape."""
    from toolkit.preprocess import upright

    files = [exif_jpegs[k] for k in sorted(exif_jpegs)]
    got = node_eval(
        node,
        f"for (const p of {json.dumps([str(p) for p in files])}) {{ const i = c.loadImage(p, 'RGB'); "
        "process.stdout.write(JSON.stringify([i.width, i.height]) + '\\n' + Buffer.from(i.data).toString('hex') "
        "+ '\\n'); }",
    ).decode()
    lines = got.splitlines()
    for k, path in enumerate(files):
        expected = np.asarray(upright(Image.open(path)).convert("RGB")).astype(int)
        width, height = json.loads(lines[2 * k])
        assert (height, width) == expected.shape[:2], path.name
        pixels = np.frombuffer(bytes.fromhex(lines[2 * k + 1]), dtype=np.uint8).reshape(expected.shape)
        diff = np.abs(pixels.astype(int) - expected)
        assert diff.max() <= JPEG_MAX_DIFF and diff.mean() <= JPEG_MEAN_DIFF, (path.name, diff.max(), diff.mean())


def test_node_predicts_on_jpegs_what_rtool_infer_predicts(node, embed_export_dir, jpegs):
    result = run_rtool(
        "infer",
        embed_export_dir / "model.onnx",
        *jpegs,
        "--topk",
        TOP_K,
        "--json",
        "--runtime",
        "onnxruntime",
        "--provider",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    expected = [[(t["class"], t["probability"]) for t in p["topk"]] for p in json.loads(result.stdout)["predictions"]]
    for model_file in ("model.onnx", "model.raw-softmax.onnx"):
        got = classify(node, embed_export_dir / model_file, *jpegs, "--top-k", TOP_K, "--json")
        assert got.returncode == 0, got.stderr
        for g, e in zip(node_predictions(got.stdout), expected, strict=True):
            assert g[0][0] == e[0][0], (g, e)  # the same class first
            assert [p for _, p in g] == pytest.approx([p for _, p in e], abs=2e-3)


def test_node_refuses_unusable_jpegs_and_giant_pictures_in_one_line(node, embed_export_dir, jpegs, tmp_path):
    """A CMYK JPEG, a cut one, and pictures above Pillow's bomb limit (refused from the header, not decoded)."""
    import zlib

    Image.open(jpegs[1]).convert("CMYK").save(tmp_path / "cmyk.jpg")
    (tmp_path / "cut.jpg").write_bytes(jpegs[1].read_bytes()[:200])
    Image.new("L", (9500, 9500), 128).save(tmp_path / "giant.jpg", quality=50)  # 90.25 MP, 1 MB
    rows = zlib.compress((b"\x00" + b"\x00" * (13_400 // 8 + 1)) * 13_400, 9)  # 1-bit black, 180 MP, 22 kB

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    (tmp_path / "giant.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", (13_400).to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0]))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )
    cases = [
        ("cmyk.jpg", "is a CMYK JPEG; save it as RGB"),
        ("cut.jpg", "cannot read image"),
        ("giant.jpg", "is 9500x9500 pixels, more than the 89478485 this example decodes"),
        ("giant.png", "is 13400x13400 pixels, more than the 89478485 this example decodes"),
    ]
    for name, message in cases:
        result = classify(node, embed_export_dir / "model.onnx", tmp_path / name)
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("classify: error:") and message in lines[0], lines


def test_node_predicts_on_non_square_jpegs_what_rtool_infer_predicts_with_a_crop_card(
    node, crop_export_dir, photo_jpegs
):
    """The card resizes the shorter side and crops the centre: Node, on both the float and the uint8 file, gives
    rtool infer's classes and probabilities (within what the JPEG decoders' few levels move them)."""
    result = run_rtool(
        "infer", crop_export_dir / "model.onnx", *photo_jpegs, "--topk", TOP_K, "--json", "--provider", "cpu"
    )
    assert result.returncode == 0, result.stderr
    expected = [[(t["class"], t["probability"]) for t in p["topk"]] for p in json.loads(result.stdout)["predictions"]]
    for model_file in ("model.onnx", "model.raw.onnx"):
        got = classify(node, crop_export_dir / model_file, *photo_jpegs, "--top-k", TOP_K, "--json")
        assert got.returncode == 0, got.stderr
        for g, e in zip(node_predictions(got.stdout), expected, strict=True):
            assert g[0][0] == e[0][0], (g, e)
            # A dense layer over every pixel sums every decoder difference: 2.8e-3 measured; a stretched
            # image instead of the crop moves these probabilities by 0.012 to 0.85.
            assert [p for _, p in g] == pytest.approx([p for _, p in e], abs=5e-3)
