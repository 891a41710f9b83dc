"""examples/node: a Node.js app (onnxruntime-node) classifies PNGs exactly as `rtool infer` does.

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

from conftest import REPO, run_rtool
from toolkit.card import ONNX_METADATA_KEY, InputSpec
from toolkit.preprocess import convert_image, normalize

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
        install = subprocess.run([npm, "ci", "--onnxruntime-node-install=skip", "--no-audit", "--no-fund"],
                                 cwd=staging, capture_output=True, text=True, timeout=600)
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
    return subprocess.run([node[0], str(EXAMPLE / "classify.js"), *map(str, args)], env=node[1],
                          capture_output=True, text=True, timeout=120)


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
    result = run_rtool("infer", embed_export_dir / "model.onnx", *app_images, "--topk", TOP_K, "--json",
                       "--runtime", "onnxruntime", "--provider", "cpu")
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
        read = node_eval(node, f"const bytes = require('fs').readFileSync({json.dumps(str(path))});\n"
                               f"process.stdout.write(JSON.stringify(c.readCard(bytes, 'm')));")
        assert json.loads(read) == json.loads(stored)


@pytest.mark.parametrize("spec", [InputSpec(1, 28, 28, [0.1311], [0.3083]),
                                  InputSpec(3, 24, 32, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                                  InputSpec(3, 77, 50, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])])
def test_node_preprocessing_is_bit_exact(node, app_images, spec):
    """Colour conversion, Pillow's bilinear resize (both pass orders) and normalisation, value for value."""
    card = {"input": spec.to_dict()}
    paths = json.dumps([str(p) for p in app_images])
    out = node_eval(node, f"const card = {json.dumps(card)};\n"
                          f"const t = c.toModelInput(c.preprocess({paths}, card), card);\n"
                          f"process.stdout.write(Buffer.from(t.data.buffer));")
    got = np.frombuffer(out, dtype=np.float32).reshape(len(app_images), *spec.shape)
    expected = normalize(np.stack([convert_image(Image.open(p), spec) for p in app_images]), spec)
    assert np.array_equal(got, expected)


def test_node_errors_are_one_line(node, embed_export_dir, app_images, tmp_path):
    import onnx

    proto = onnx.load(str(embed_export_dir / "model.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "nocard.onnx"))
    (tmp_path / "notes.txt").write_text("not a png")
    cases = [((tmp_path / "nocard.onnx", app_images[0]), "has no rtool model card"),
             ((tmp_path / "missing.onnx", app_images[0]), "cannot be read"),
             ((embed_export_dir / "model.onnx", tmp_path / "notes.txt"), "this example reads PNG files")]
    for args, message in cases:
        result = classify(node, *args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("classify: error:") and message in lines[0], lines
