"""Shared fixtures: a real `rtool` subprocess runner and small checkpoints."""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest
import torch
from long_build import build_lock

from toolkit.card import InputSpec
from toolkit.checkpoint import make_card, save_checkpoint
from toolkit.models import create_model

if TYPE_CHECKING:
    from exporters.pipeline import ExportResult

REPO = Path(__file__).resolve().parents[1]
# Edge targets run where their packages are installed (`make` installs both); elsewhere their tests skip.
OPENVINO_MISSING = "" if importlib.util.find_spec("openvino") else "openvino is not installed (pip install openvino)"
EXECUTORCH_MISSING = "" if importlib.util.find_spec("executorch") else "executorch is not installed (rtool[edge])"
needs_openvino = pytest.mark.skipif(bool(OPENVINO_MISSING), reason=OPENVINO_MISSING)
needs_executorch = pytest.mark.skipif(bool(EXECUTORCH_MISSING), reason=EXECUTORCH_MISSING)


def edge_files() -> tuple[set[str], set[str]]:
    """(manifest entries, their companion files) the edge targets add to an export of every format here."""
    entries, companions = {"model.ort", "model.int8-cpu.ort"}, set()
    if not OPENVINO_MISSING:
        from exporters.openvino_common import precision_support

        stems = ["model", "model.fp16", "model.int8"] + (["model.bf16"] if precision_support("bf16")[0] else [])
        entries |= {f"{s}.openvino.xml" for s in stems}
        companions |= {f"{s}.openvino.bin" for s in stems}
    if not EXECUTORCH_MISSING:
        entries |= {"model.pte", "model.int8.pte"}
    return entries, companions


# `make test` runs pytest-xdist workers (one per core): each worker and the CLI processes it starts use one thread.
XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
TEST_THREADS = min(2, max(1, (os.cpu_count() or 2) // XDIST_WORKERS))
if XDIST_WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(TEST_THREADS))

Built = TypeVar("Built")


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    """Two cores on CI: keep each test process from oversubscribing them."""
    torch.set_num_threads(TEST_THREADS)


def built_once(tmp_path_factory, name: str, build: Callable[[Path], Built]) -> Built:
    """Build a session fixture once per test run, whatever the number of xdist workers.

    The first worker (or the background build `start_long_builds` started) builds it into a folder every worker
    sees and pickles the result; the others wait on a file lock and load it (pytest-xdist's documented recipe),
    so the costly exports are not made once per worker.
    """
    if XDIST_WORKERS == 1:
        return build(tmp_path_factory.mktemp(name))
    return locked_build(shared_folder(tmp_path_factory), name, build)


def shared_folder(tmp_path_factory) -> Path:
    """The folder of the builds all xdist workers share: beside the workers' own temporary folders."""
    shared = tmp_path_factory.getbasetemp().parent / "built-once"
    shared.mkdir(exist_ok=True)
    return shared


def locked_build(shared: Path, name: str, build: Callable[[Path], Built]) -> Built:
    """``load_or_build`` holding ``name``'s lock: one process builds, the others wait and load."""
    with build_lock(shared, name):
        return load_or_build(shared, name, build)


def load_or_build(shared: Path, name: str, build: Callable[[Path], Built]) -> Built:
    """The pickled result of an earlier build, or a new build (call it holding ``name``'s lock)."""
    result_file = shared / f"{name}.pickle"
    if result_file.is_file():
        return pickle.loads(result_file.read_bytes())
    folder = shared / name
    folder.mkdir(exist_ok=True)  # left by a build that failed: this one fails the same way
    built = build(folder)
    result_file.write_bytes(pickle.dumps(built))
    return built


def run_rtool(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "toolkit.cli", *map(str, args)],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the real entry point (``toolkit.cli.main``) in this process: the same parsing, errors and exit codes
    as the console script, without paying the PyTorch import per call. ``timeout`` is accepted for the same
    signature as ``run_rtool`` and not enforced."""
    import contextlib
    import io

    from toolkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    os.environ.update({"COLUMNS": "200", **(env or {})})
    os.chdir(cwd or REPO)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main([str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["rtool", *map(str, args)], code, out.getvalue(), err.getvalue())


@pytest.fixture
def rtool():
    """The CLI in-process (fast); tests that need a real process call ``run_rtool``."""
    return run_cli


def assert_one_line_error(result: subprocess.CompletedProcess, code: int = 2, contains: str = "") -> None:
    """Bad input: the given exit code, one line on stderr, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rtool: error:"), lines[0]
    assert contains.lower() in lines[0].lower(), lines[0]


MNIST_SPEC = InputSpec(channels=1, height=28, width=28, mean=[0.1311], std=[0.3083])


def build_untrained_checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1, num_classes=10)
    card = make_card("resnet20", class_names=[str(d) for d in range(10)], input_spec=MNIST_SPEC, dataset="mnist5k")
    return save_checkpoint(folder / "untrained.pt", model, card)


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory) -> Path:
    """An untrained resnet20 with an mnist5k card: fast, and a real rtool checkpoint."""
    return built_once(tmp_path_factory, "ckpt", build_untrained_checkpoint)


@pytest.fixture(scope="session")
def cpu_export_dir(pipeline_export) -> Path:
    """The folder of `pipeline_export`: every format this machine builds, with manifest.json (do not modify)."""
    return pipeline_export.manifest_path.parent


@pytest.fixture(scope="session")
def app_images(tmp_path_factory) -> list[Path]:
    """PNG files as an app gets them: real test digits at the card's 28x28 grey, and others to convert."""
    from PIL import Image

    from toolkit.data import load_dataset

    folder = tmp_path_factory.mktemp("app_images")
    digits = load_dataset("mnist5k").test.images[:400:50, 0].numpy()  # 8 digits from across the test set
    paths = []
    for i, pixels in enumerate(digits[:5]):
        paths.append(folder / f"digit{i}.png")
        Image.fromarray(pixels, mode="L").save(paths[-1])
    converted = [
        Image.fromarray(digits[5], mode="L").resize((45, 30)).convert("RGBA"),  # wider, RGBA
        Image.fromarray(digits[6], mode="L").resize((20, 36)).convert("RGB"),  # taller: rows shrink first
        Image.fromarray(digits[7], mode="L").resize((56, 56)).convert("P"),
    ]  # palette, twice the size
    for name, image in zip(("rgba45x30.png", "rgb20x36.png", "palette56.png"), converted):
        paths.append(folder / name)
        image.save(paths[-1])
    return paths


# An RGB card that resizes the shorter side to 36 and crops the centre 24x32 (card format 2).
CROP_SPEC = InputSpec(3, 24, 32, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], resize="center_crop", resize_size=36)


@pytest.fixture(scope="session")
def crop_export_dir(tmp_path_factory) -> Path:
    """Two small ONNX files with a CROP_SPEC card, built by hand in milliseconds: model.onnx (float NCHW in)
    and model.raw.onnx (uint8 NHWC pixels in, normalised in the graph), both a dense layer over every pixel,
    so each pixel's place matters; model.npy holds its weights for a NumPy reference."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from exporters.onnx_common import onnx_metadata
    from exporters.onnx_embed import card_dict

    out = tmp_path_factory.mktemp("crop_export")
    spec = CROP_SPEC
    weights = np.random.default_rng(3).normal(scale=0.05, size=(spec.channels * spec.height * spec.width, 5))
    np.save(out / "model.npy", weights.astype(np.float32))
    card = make_card("resnet20", class_names=["ant", "bee", "cat", "dog", "eel"], input_spec=spec)
    value, const = helper.make_tensor_value_info, numpy_helper.from_array
    dense = [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    raw_nodes = [
        helper.make_node("Cast", ["input"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["f", "scale"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["nhwc"]),
        helper.make_node("Transpose", ["nhwc"], ["x"], perm=[0, 3, 1, 2]),
    ]
    per_channel = {name: np.asarray(getattr(spec, name), np.float32).reshape(1, 1, 1, -1) for name in ("mean", "std")}
    for name, nodes, dtype, shape, meta, extra in (
        ("model.onnx", [helper.make_node("Identity", ["input"], ["x"])], TensorProto.FLOAT, spec.shape, card, []),
        (
            "model.raw.onnx",
            raw_nodes,
            TensorProto.UINT8,
            (spec.height, spec.width, spec.channels),
            card_dict(card),
            [const(np.float32(255.0), "scale")] + [const(v, k) for k, v in per_channel.items()],
        ),
    ):
        graph = helper.make_graph(
            nodes + dense,
            "crop",
            [value("input", dtype, ["N", *shape])],
            [value("logits", TensorProto.FLOAT, ["N", 5])],
            [const(weights.astype(np.float32), "w"), *extra],
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
        helper.set_model_props(proto, onnx_metadata(meta))
        onnx.save(proto, str(out / name))
    return out


@pytest.fixture(scope="session")
def photo_jpegs(tmp_path_factory) -> list[Path]:
    """Non-square colour JPEGs as cameras and editors write them: a real photo (matplotlib's Grace Hopper,
    512x600, 4:2:0), landscape 4:2:2, portrait progressive, and a wide 4:4:4 one."""
    import matplotlib.cbook
    from PIL import Image

    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    folder = tmp_path_factory.mktemp("photo_jpegs")
    made = [
        ("landscape-90x50.jpg", photo.resize((90, 50)), {"quality": 90, "subsampling": 1}),
        ("portrait-33x80.jpg", photo.resize((33, 80)), {"quality": 85, "subsampling": 2, "progressive": True}),
        ("wide-121x41.jpg", photo.crop((0, 200, 484, 364)).resize((121, 41)), {"quality": 95, "subsampling": 0}),
    ]
    paths = [Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))]
    for name, image, options in made:
        image.save(folder / name, **options)
        paths.append(folder / name)
    return paths


# EXIF orientation -> the transposition that makes the picture upright (Pillow's ImageOps.exif_transpose)
EXIF_TURNS = {1: None, 2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270"}
EXIF_TURNS |= {7: "TRANSVERSE", 8: "ROTATE_90"}


@pytest.fixture(scope="session")
def exif_jpegs(tmp_path_factory) -> dict[int, Path]:
    """One landscape 45x30 colour JPEG saved with each EXIF orientation 1-8: the same compressed pixels, a tag
    saying how to turn them (as a phone writes a portrait photo: sideways, plus a tag)."""
    import matplotlib.cbook
    from PIL import Image

    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    photo = photo.crop((0, 100, 512, 441)).resize((45, 30))
    folder = tmp_path_factory.mktemp("exif_jpegs")
    paths = {}
    for orientation in EXIF_TURNS:
        exif = Image.Exif()
        exif[0x0112] = orientation
        paths[orientation] = folder / f"orientation-{orientation}.jpg"
        photo.save(paths[orientation], quality=95, subsampling=0, exif=exif.tobytes())
    return paths


EMBED_EXPORT_ARGS = (
    "--format",
    "onnx,triton",
    "--precision",
    "fp32,fp16",
    "--embed-preprocessing",
    "--embed-softmax",
    "--triton-model-name",
    "digits",
    "--triton-max-batch",
    "16",
    "--gate-images",
    "64",
)


@pytest.fixture(scope="session")
def embed_export_dir(untrained_checkpoint, tmp_path_factory) -> Path:
    """`rtool export` as a user runs it for apps: model.onnx, model.fp16.onnx, model.raw-softmax.onnx (uint8
    NHWC in, probabilities out) and a Triton repository (triton/digits: that variant, triton/digits_fp16)."""

    def build(out: Path) -> Path:
        result = run_rtool("export", untrained_checkpoint, *EMBED_EXPORT_ARGS, "--out", out, "--json")
        assert result.returncode == 0, result.stderr
        return out

    return built_once(tmp_path_factory, "embed_export", build)


@pytest.fixture(scope="session")
def inprocess_export_dir(untrained_checkpoint, tmp_path_factory) -> Path:
    """rtool's exporters called in one process with one cache: the Triton exporter with its defaults
    (triton/resnet20, plain FP32) and model.raw.onnx (preprocessing in the graph, logits out)."""
    from exporters import ExportContext
    from exporters.onnx_embed import export_embedded
    from exporters.triton import export as export_triton
    from toolkit.checkpoint import load_model

    model, card = load_model(untrained_checkpoint)

    def build(out: Path) -> Path:
        context = ExportContext()
        export_triton(model, card, out, precision="fp32", target=None, context=context)
        export_embedded(model, card, out, context)
        return out

    return built_once(tmp_path_factory, "inprocess_export", build)


def build_pipeline_export(checkpoint: Path, folder: Path) -> ExportResult:
    from exporters.pipeline import export_model

    return export_model(checkpoint, "all", None, folder / "export", calib_size=16, gate_images=64)


@pytest.fixture(scope="session")
def pipeline_export(untrained_checkpoint, tmp_path_factory) -> ExportResult:
    """The untrained checkpoint through `export_model(..., "all")`: every format this machine builds.

    Small calibration (16 images) and gate (64 held-out images) keep it quick; tests must not change files in
    it (copy the folder first).
    """
    return built_once(tmp_path_factory, "pipeline", functools.partial(build_pipeline_export, untrained_checkpoint))


# Short but real: enough training for INT8 to keep the eager model's predictions.
DEMO_ARGS = ("--epochs", "4", "--test-limit", "500", "--gate-images", "200", "--bench-iters", "3", "--quiet")
DEMO_USER_FILES = {"train/my.py": "print('mine')", "export/customer.onnx": "the user's own model", "notes.txt": "mine"}


def build_demo_run(folder: Path) -> tuple[Path, subprocess.CompletedProcess]:
    out = folder / "demo"
    for name, text in DEMO_USER_FILES.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    return out, run_rtool("demo", "--out", out, "--overwrite", *DEMO_ARGS, timeout=900)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`rtool demo --overwrite` run once as a user runs it, into a folder already holding a user's files.

    Its trained model (resnet20, 4 epochs, seed 0) and export folder also serve the parity and INT8 tests, so
    the run (all its workers) trains that model once.
    """
    return built_once(tmp_path_factory, "demo", build_demo_run)


def build_pipeline_in_background(shared: Path) -> None:
    checkpoint = locked_build(shared, "ckpt", build_untrained_checkpoint)
    load_or_build(shared, "pipeline", functools.partial(build_pipeline_export, checkpoint))


def build_demo_in_background(shared: Path) -> None:
    load_or_build(shared, "demo", build_demo_run)


# The longest shared builds, by the fixture that returns them (shortest first): under xdist they start in
# background processes as the run begins, and the test files that use them run last, so neither worker sits
# waiting while the other builds one.
LONG_BUILDS = {
    "pipeline_export": ("pipeline", build_pipeline_in_background),
    "demo_run": ("demo", build_demo_in_background),
}


@pytest.fixture(autouse=True, scope="session")
def start_long_builds(request, tmp_path_factory) -> Iterator[None]:
    """On worker gw0: start each long build this run's tests use (`tests/long_build.py`) before the first test,
    and keep this worker's session open until they end (the other worker may still wait for one)."""
    if os.environ.get("PYTEST_XDIST_WORKER") != "gw0":
        yield
        return
    used = {name for item in request.session.items for name in item.fixturenames}
    shared = shared_folder(tmp_path_factory)
    started = []
    for fixture, (name, _) in LONG_BUILDS.items():
        if fixture in used:
            with open(shared / f"{name}.log", "wb") as log:
                command = [sys.executable, str(Path(__file__).with_name("long_build.py")), str(shared), name]
                started.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    yield
    for process in started:
        process.wait()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files whose tests use a long build run after the others, those using the longest last (order kept
    otherwise; `make test` passes --no-loadscope-reorder so that xdist keeps it too)."""
    rank: dict[Path, int] = {}
    for item in items:
        uses = [i for i, fixture in enumerate(LONG_BUILDS) if fixture in item.fixturenames]
        rank[item.path] = max([rank.get(item.path, -1), *uses])
    items.sort(key=lambda item: rank[item.path])
