"""`rtool export --format web`, the `browser` runtime and `rtool web serve`, in a real headless Chromium.

The page comes from the session's `pipeline_export` (`--format all` writes web/ at fp32 and int8), so only a tiny
RGB page is built here. One Chromium serves the whole session (the runtime's shared browser); pages are opened
once per module where tests can share them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from exporters.onnx_common import save_single_file
from exporters.web import ORT_FILES, PAGE_FILES, onnxruntime_web, pinned_version, web_graph, write_page
from runtimes import available, open_runtime
from runtimes.browser_runtime import SharedBrowser
from runtimes.web_server import BackgroundServer
from toolkit.card import InputSpec
from toolkit.checkpoint import make_card
from toolkit.data import load_dataset
from toolkit.errors import BadInputError
from toolkit.preprocess import convert_image, prepare_batch

from conftest import REPO, assert_one_line_error

IMAGES = 64  # test images through the page, as the issue asks


@pytest.fixture(scope="session")
def web_dir(pipeline_export, cpu_export_dir) -> Path:
    """The exported page's folder; the browser tests fail (never skip) where Chromium or the page is missing."""
    ok, why = available("browser")
    assert ok, f"the browser runtime must run here (`make install` sets it up): {why}"
    skipped = [s["reason"] for s in pipeline_export.skipped if s["format"] == "web"]
    assert not skipped, f"--format all skipped the web page: {skipped[0]}"
    return cpu_export_dir / "web"


@pytest.fixture(scope="module")
def test_pixels() -> np.ndarray:
    """uint8 (IMAGES, 1, 28, 28): evenly spaced mnist5k test digits."""
    images = load_dataset("mnist5k").test.images.numpy()
    return images[np.linspace(0, len(images) - 1, IMAGES).round().astype(int)]


@pytest.fixture(scope="module")
def fp32_page(web_dir):
    with open_runtime("browser", web_dir / "model.onnx") as runtime:
        yield runtime


def python_onnxruntime(path: Path, pixels: np.ndarray) -> np.ndarray:
    """The file's output in Python's ONNX Runtime (CPU) for uint8 (N, C, H, W) pixels."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))})[0]


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_export_writes_a_self_contained_page(cpu_export_dir, web_dir):
    manifest = json.loads((cpu_export_dir / "manifest.json").read_text())
    web = {a["file"]: a for a in manifest["artifacts"] if a["format"] == "web"}
    assert {f: (web[f]["runtime"], web[f]["precision"]) for f in ("web/model.onnx", "web/model.int8.onnx")} == {
        "web/model.onnx": ("browser", "fp32"),
        "web/model.int8.onnx": ("browser", "int8"),
    }
    page = {*(f"web/{n}" for n in PAGE_FILES), "web/card.json", *(f"web/ort/{n}" for n in ORT_FILES)}
    assert page <= set(web) and all(web[f]["runtime"] == "static" for f in page)
    assert sorted(p.relative_to(cpu_export_dir).as_posix() for p in web_dir.rglob("*") if p.is_file()) == sorted(web)
    ort_web, _ = onnxruntime_web()
    for name in ORT_FILES:  # the pinned package's files, byte for byte
        assert (web_dir / "ort" / name).read_bytes() == (ort_web / "dist" / name).read_bytes()
    document = json.loads((web_dir / "card.json").read_text())
    installed = json.loads((ort_web / "package.json").read_text())["version"]
    assert document["onnxruntime_web"] == pinned_version() == installed == "1.30.0"
    assert document["models"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert document["card"]["class_names"] == [str(d) for d in range(10)] and document["card"]["input"]["height"] == 28
    for name in PAGE_FILES:  # no network: nothing is fetched from another host
        assert not re.search(r"https?://|//cdn", (web_dir / name).read_text()), name
    for name in ("model.onnx", "model.int8.onnx"):
        model = onnx.load(str(web_dir / name))
        assert model.ir_version <= 13
        (graph_input,), (graph_output,) = model.graph.input, model.graph.output
        dims = [d.dim_value or None for d in graph_input.type.tensor_type.shape.dim]
        assert (graph_input.type.tensor_type.elem_type, dims[1:]) == (onnx.TensorProto.UINT8, [28, 28, 1])
        assert graph_output.name == "probabilities"
    size = sum(p.stat().st_size for p in web_dir.rglob("*") if p.is_file())
    assert size < 20e6, f"the page folder is {size / 1e6:.1f} MB"


def test_web_models_are_the_onnx_files_behind_preprocessing(cpu_export_dir, web_dir, test_pixels):
    """model.onnx / model.int8-cpu.onnx fed toolkit.preprocess's batch, then a softmax, equal the web files."""
    for web_name, plain_name, tolerance in (
        ("model.onnx", "model.onnx", 1e-6),
        ("model.int8.onnx", "model.int8-cpu.onnx", 1e-5),
    ):
        session = ort.InferenceSession(str(cpu_export_dir / plain_name), providers=["CPUExecutionProvider"])
        batch = prepare_batch(test_pixels, InputSpec(1, 28, 28, [0.1311], [0.3083]))
        expected = softmax(session.run(None, {"input": batch})[0])
        np.testing.assert_allclose(python_onnxruntime(web_dir / web_name, test_pixels), expected, atol=tolerance)


@pytest.mark.parametrize("name", ["model.onnx", "model.int8.onnx"])
def test_page_predicts_what_python_onnxruntime_predicts(name, web_dir, fp32_page, test_pixels):
    """Test digits through the page's own code path (canvas, pixel reading, its onnxruntime-web session)."""
    spec = fp32_page.card.input
    if name == "model.onnx":
        probabilities = np.exp(fp32_page.infer(prepare_batch(test_pixels, spec)))
    else:
        with open_runtime("browser", web_dir / name) as runtime:
            probabilities = np.exp(runtime.infer(prepare_batch(test_pixels, spec)))
    expected = python_onnxruntime(web_dir / name, test_pixels)
    assert probabilities.shape == (IMAGES, 10)
    assert np.array_equal(probabilities.argmax(axis=1), expected.argmax(axis=1))
    # FP32: float rounding. INT8: the wasm build's int8 kernels round differently from x86's (measured <= 0.006).
    np.testing.assert_allclose(probabilities, expected, atol=1e-5 if name == "model.onnx" else 0.02)


def shown_results(page) -> list[tuple[str, float, float]]:
    """(class, percent shown, bar width in % of its track) of each row of the page's top-5 list."""
    return page.eval_on_selector_all(
        "#results li",
        """items => items.map(li => [li.querySelector('.name').textContent,
            parseFloat(li.querySelector('.pct').textContent),
            100 * li.querySelector('.fill').getBoundingClientRect().width
                / li.querySelector('.bar').getBoundingClientRect().width])""",
    )


def test_page_draws_top5_bars_and_latency(web_dir, fp32_page, test_pixels, tmp_path):
    shown = fp32_page.show(test_pixels[0], tmp_path / "page.png")
    expected = python_onnxruntime(web_dir / "model.onnx", test_pixels[:1])[0]
    order = np.argsort(-expected, kind="stable")[:5]
    rows = shown_results(fp32_page.page)
    assert [r[0] for r in rows] == [str(i) for i in order] == [t["name"] for t in shown["top"]]
    for (_, percent, width), p in zip(rows, expected[order]):
        assert percent == pytest.approx(round(100 * float(p), 1), abs=0.051)
        assert width == pytest.approx(100 * float(p), abs=1.0)  # the bar is drawn at its probability
    assert re.fullmatch(r"\d+\.\d ms in the model \(onnxruntime-web, wasm\)", fp32_page.page.text_content("#latency"))
    assert (tmp_path / "page.png").read_bytes()[:4] == b"\x89PNG"
    assert Image.open(tmp_path / "page.png").size[0] == 800
    assert fp32_page.page.is_visible("#draw-area")  # 1-channel 28x28: the page offers a drawing canvas


def test_keyboard_chooses_an_image_and_the_page_reads_it_as_pillow_does(web_dir, fp32_page, tmp_path):
    """Tab to the drop zone, Enter opens the file chooser (clicks the page's file input); a colour PNG chosen
    there is turned grey with Pillow's weights. The click is counted in the page rather than waited for as
    Chromium's file chooser event, which headless Chromium now and then never sends (a 120 s timeout in CI)."""
    path = tmp_path / "colour.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (28, 28, 3), dtype=np.uint8), "RGB").save(path)
    pixels = convert_image(Image.open(path), fp32_page.card.input)[None]
    expected = python_onnxruntime(web_dir / "model.onnx", pixels)[0]
    page = fp32_page.page
    page.bring_to_front()  # the visitor's tab: the keys go to the active page
    page.evaluate("document.getElementById('results').replaceChildren(); document.activeElement.blur()")
    page.evaluate("() => { window.fileClicks = 0; document.getElementById('file').onclick = () => fileClicks++; }")
    for _ in range(8):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "drop":
            break
    assert page.evaluate("document.activeElement.id") == "drop", "the drop zone is not reachable by keyboard"
    page.keyboard.press("Enter")
    assert page.evaluate("window.fileClicks") == 1, "Enter on the drop zone did not open the file chooser"
    page.set_input_files("#file", str(path))  # what choosing the file in the chooser does
    page.wait_for_function("document.querySelectorAll('#results li').length === 5")
    name, percent, _ = shown_results(page)[0]
    assert name == str(int(expected.argmax()))
    assert percent == pytest.approx(round(100 * float(expected.max()), 1), abs=0.051)


def test_drawing_a_digit_classifies_it(fp32_page):
    page = fp32_page.page
    page.evaluate("document.getElementById('results').replaceChildren()")
    box = page.locator("#draw").bounding_box()
    page.mouse.move(box["x"] + 140, box["y"] + 40)
    page.mouse.down()
    for y in range(60, 250, 20):  # a vertical stroke: a "1"
        page.mouse.move(box["x"] + 140, box["y"] + y)
    page.mouse.up()
    page.wait_for_function("document.querySelectorAll('#results li').length === 5")
    grey = page.evaluate(
        "Array.from(document.getElementById('model-input').getContext('2d').getImageData(0, 0, 28, 28).data)"
    )
    lit = np.flatnonzero(np.asarray(grey[::4]).reshape(28, 28).max(axis=0) > 128)
    assert len(lit) and 10 <= lit.mean() <= 17, "the stroke is framed in the middle, as MNIST frames digits"


def page_error(folder: Path) -> str:
    """The error box's text once the page at ``folder`` gives up (or '' if it loaded)."""
    server = BackgroundServer(folder)
    page = SharedBrowser.get().new_page()
    try:
        page.goto(server.url + "index.html")
        page.wait_for_function("!document.getElementById('error').hidden", timeout=60_000)
        assert page.get_attribute("#error", "role") == "alert"
        return page.text_content("#error")
    finally:
        page.close()
        server.close()


def test_page_says_when_the_model_cannot_load(web_dir, tmp_path):
    broken = Path(shutil.copytree(web_dir, tmp_path / "web"))
    (broken / "model.onnx").write_bytes(b"this is not an ONNX model" * 100)
    message = page_error(broken)
    assert "The model could not be loaded: model.onnx is not a model onnxruntime-web can run" in message
    assert "rtool export CHECKPOINT --format web" in message
    script = broken / "classifier.js"  # its exports still link; evaluating it throws
    script.write_text("throw new Error('half-copied file');\n" + script.read_text())
    assert "The page could not start: Uncaught Error: half-copied file" in page_error(broken)
    shutil.rmtree(broken / "ort")
    assert "The page could not start: its scripts" in page_error(broken)
    with pytest.raises(BadInputError, match="not in an exported web page"):
        open_runtime("browser", REPO / "tests" / "conftest.py")


def test_parity_has_browser_rows(cpu_export_dir, rtool, tmp_path):
    result = rtool("parity", cpu_export_dir, "--runtimes", "browser", "--limit", "16", "--json", tmp_path / "p.json")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {r["precision"]: r for r in json.loads((tmp_path / "p.json").read_text())["rows"]}
    assert set(rows) == {"fp32", "int8"}
    for row in rows.values():
        assert row["status"] == "ok" and row["compared_as"] == "log-probabilities" and "Chromium" in row["device"]
    assert rows["fp32"]["agreement"] == 100.0 and rows["fp32"]["max_abs_diff_rel"] < 1e-5
    assert re.search(r"browser\s+fp32\s+ok", result.stdout) and re.search(r"browser\s+int8\s+ok", result.stdout)


def test_bench_times_the_browser(cpu_export_dir, rtool, tmp_path):
    args = ("--runtimes", "browser", "--precisions", "fp32", "--batch-sizes", "1,4", "--iters", "2", "--warmup", "1")
    result = rtool("bench", cpu_export_dir, *args, "--json", tmp_path / "b.json")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [(r["runtime"], r["precision"], r["batch"]) for r in rows] == [("browser", "fp32", b) for b in (1, 4)]
    assert all(0 < r["p50_ms"] <= r["p99_ms"] and "Chromium" in r["device"] for r in rows)


def test_missing_chromium_is_an_unavailable_row_with_the_command(cpu_export_dir, monkeypatch, rtool, tmp_path):
    monkeypatch.setenv("RTOOL_CHROMIUM", str(tmp_path / "no-chromium"))
    ok, why = available("browser")
    assert not ok and "apt-get install -y chromium" in why
    result = rtool("parity", cpu_export_dir, "--runtimes", "browser", "--limit", "1", "--json", tmp_path / "p.json")
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert [(r["status"], "apt-get install -y chromium" in r["reason"]) for r in rows] == [("unavailable", True)] * 2


def test_web_export_without_onnxruntime_web_says_what_to_run(untrained_checkpoint, monkeypatch, rtool, tmp_path):
    monkeypatch.setenv("RTOOL_ONNXRUNTIME_WEB", str(tmp_path))
    result = rtool("export", untrained_checkpoint, "--format", "web", "--out", tmp_path / "out")
    assert_one_line_error(result, 2, "npm ci --prefix")
    assert not (tmp_path / "out" / "web").exists()


def test_web_serve_serves_the_page_on_localhost(cpu_export_dir, web_dir):
    command = [sys.executable, "-m", "toolkit.cli", "web", "serve", str(cpu_export_dir), "--port", "0"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = server.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        assert f"serving {web_dir}" in line
        with urllib.request.urlopen(url + "index.html", timeout=30) as response:
            assert 'src="app.js"' in response.read().decode()
        with urllib.request.urlopen(url + "ort/ort.wasm.min.mjs", timeout=30) as response:
            assert response.headers["Content-Type"].startswith("text/javascript")
        with urllib.request.urlopen(url + "ort/ort-wasm-simd-threaded.wasm", timeout=30) as response:
            assert response.headers["Content-Type"] == "application/wasm"
        for hidden in ("ort/", "../manifest.json"):  # no listings, nothing outside the folder
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(url + hidden, timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_web_serve_refuses_a_folder_without_a_page(tmp_path, rtool):
    assert_one_line_error(rtool("web", "serve", tmp_path), 2, "holds no exported page")
    assert_one_line_error(rtool("web", "serve", tmp_path / "missing"), 2, "is not a folder")


def tiny_page(folder: Path, spec: InputSpec) -> np.ndarray:
    """A page in ``folder`` for a one-MatMul RGB model of 4 classes on ``spec``; returns the weights."""
    card = make_card("tiny", class_names=["cat", "dog", "fox", "owl"], input_spec=spec)
    weights = np.random.default_rng(0).standard_normal((3 * spec.height * spec.width, 4)).astype(np.float32)
    nodes = [
        onnx.helper.make_node("Flatten", ["input"], ["flat"]),
        onnx.helper.make_node("MatMul", ["flat", "w"], ["logits"]),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "tiny",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 3, spec.height, spec.width])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 4])],
        [onnx.numpy_helper.from_array(weights, "w")],
    )
    inner = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=10)
    folder.mkdir()
    save_single_file(web_graph(inner, card), folder / "model.onnx")
    write_page(folder, card, {"fp32": "model.onnx"}, onnxruntime_web()[0])
    return weights


def test_an_rgb_page(tmp_path):
    """A 3-channel card: the page reads RGB pixels and hides the digit canvas; its graph normalises per channel."""
    spec = InputSpec(3, 8, 6, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
    folder = tmp_path / "web"
    weights = tiny_page(folder, spec)
    pixels = np.random.default_rng(1).integers(0, 256, (16, 3, 8, 6), dtype=np.uint8)
    batch = prepare_batch(pixels, spec)
    expected = softmax(batch.reshape(16, -1) @ weights)
    np.testing.assert_allclose(python_onnxruntime(folder / "model.onnx", pixels), expected, atol=1e-5)
    with open_runtime("browser", folder / "model.onnx") as runtime:
        np.testing.assert_allclose(np.exp(runtime.infer(batch)), expected, atol=1e-5)
        assert runtime.page.is_hidden("#draw-area")
        assert runtime.page.text_content("#title") == "tiny: 4 classes"


@pytest.mark.parametrize(
    "size, orientation",
    [((10, 21), None), ((23, 10), None), ((21, 10), 6)],  # portrait, landscape; a sideways JPEG tagged "turn"
)
def test_a_center_crop_page_crops_a_chosen_photo_as_rtool_does(tmp_path, size, orientation):
    """A card with resize center_crop: the page draws the centre of a non-square photo, not the stretched whole,
    and a JPEG's EXIF orientation is applied as rtool applies it (``toolkit.preprocess.upright``).

    The photo's shorter side is already resize_size, so the crop is a 1:1 copy in the browser too and its
    pixels must equal Pillow's exactly (a resized photo goes through the browser's own resampling); the JPEG's
    within a level or two (Chromium's decoder).
    """
    spec = InputSpec(3, 8, 6, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], resize="center_crop", resize_size=10)
    folder = tmp_path / "web"
    tiny_page(folder, spec)
    smooth = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)  # JPEG keeps it closely
    photo = Image.fromarray(np.random.default_rng(4).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if orientation is None:
        path = tmp_path / "photo.png"
        photo.save(path)
    else:
        path, exif = tmp_path / "photo.jpg", Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(smooth.astype(np.uint8)).save(path, quality=100, subsampling=0, exif=exif.tobytes())
    expected = convert_image(Image.open(path), spec).transpose(1, 2, 0)
    with open_runtime("browser", folder / "model.onnx") as runtime:
        page = runtime.page
        page.set_input_files("#file", str(path))
        page.wait_for_function("document.querySelectorAll('#results li').length === 4")
        rgba = page.evaluate(
            "(() => { const c = document.getElementById('model-input');"
            " return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); })()"
        )
        assert "centre crop" in page.text_content("#about")
    drawn = np.array(rgba, dtype=np.uint8).reshape(spec.height, spec.width, 4)[..., :3]
    np.testing.assert_allclose(drawn, expected, atol=0 if orientation is None else 2)
    if orientation is not None:  # the tag ignored would give another picture
        sideways = convert_image(Image.fromarray(np.asarray(Image.open(path))), spec)  # pixels alone, no tag
        assert np.abs(sideways.transpose(1, 2, 0).astype(int) - drawn).max() > 2
