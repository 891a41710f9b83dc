"""Hostile and careless pictures: decompression bombs, giant scans, 16-bit files, class folders with line breaks.

The giant files are built here, a row at a time: a black-and-white PNG of one
colour deflates about 8000:1, so a 180-megapixel picture is a 22 kB file
that Pillow would decode into 180 MB (540 MB as RGB). Nothing giant is ever decoded by a passing test:
each check below happens on the header.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtimes.onnx_app import Predictor, PredictorError
from toolkit.card import InputSpec
from toolkit.data import load_dataset
from toolkit.errors import BadInputError
from toolkit.preprocess import convert_image

from conftest import REPO, assert_one_line_error, run_cli

BOMB_SIDE = 13_400  # 179.6 MP: above twice Pillow's limit, where Pillow raises DecompressionBombError
GIANT_SIDE = 12_000  # 144 MP: above Pillow's limit, where Pillow only warns and decodes it anyway
BIG_SIDE = 8_000  # 64 MP: under every per-image limit (Pillow 89 MP, a card side 8192); only the total is too much
SAMPLES_16BIT = np.array([[0, 128, 129, 1000], [30000, 40000, 65534, 65535]], dtype=np.uint16)
SCALED_16BIT = [[0, 0, 1, 4], [117, 156, 255, 255]]  # round(v * 255 / 65535)


def one_colour_png(path: Path, width: int, height: int, white: bool = False) -> Path:
    """A valid black-or-white PNG (1 bit a pixel), written a row at a time: never the whole picture in memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    deflate = zlib.compressobj(9)
    row = b"\x00" + (b"\xff" if white else b"\x00") * ((width + 7) // 8)  # filter byte "none", then the pixels
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )
    return path


def small_png(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8), mode="L").save(path)
    return path


def traced_peak(call) -> tuple[object, int]:
    """(what ``call`` raised or returned, the peak of NumPy/Python memory it allocated, in bytes)."""
    tracemalloc.start()
    try:
        try:
            outcome = call()
        except BadInputError as e:
            outcome = e
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def bomb_png(tmp_path_factory) -> Path:
    return one_colour_png(tmp_path_factory.mktemp("bomb") / "bomb.png", BOMB_SIDE, BOMB_SIDE)


# ---------------------------------------------------------------- image folders


def test_decompression_bomb_in_an_image_folder_is_one_line_and_exit_2(bomb_png, tmp_path):
    root = tmp_path / "images"
    small_png(root / "cats" / "0.png", 10)
    small_png(root / "dogs" / "0.png", 200)
    (root / "dogs" / "1.png").write_bytes(bomb_png.read_bytes())
    assert bomb_png.stat().st_size < 40_000  # small on disk, 180 MB decoded
    result = run_cli("train", "--dataset", f"imagefolder:{root}", "--out", tmp_path / "run", timeout=120)
    assert_one_line_error(result, 2, f"{root / 'dogs' / '1.png'} is larger than Pillow decodes safely")
    assert "megapixels rtool reads from one image; shrink it" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_giant_first_image_is_refused_by_name_before_any_allocation(tmp_path):
    """Pillow only warns at 144 MP; the old loader then sized the whole set by that first file (N x 144 MB)."""
    root = tmp_path / "images"
    giant = one_colour_png(root / "a" / "0-giant.png", GIANT_SIDE, GIANT_SIDE, white=True)
    for k in range(3):
        small_png(root / "a" / f"{k + 1}.png", 10)
        small_png(root / "b" / f"{k}.png", 200)
    assert giant.stat().st_size < 40_000
    refused, peak = traced_peak(lambda: load_dataset(f"imagefolder:{root}"))
    assert isinstance(refused, BadInputError), f"accepted: {refused}"
    assert str(refused).startswith(f"{giant} is 12000x12000 pixels (144 megapixels), more than the 89 megapixels")
    assert "shrink it" in str(refused) and "remove it" in str(refused)
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MB allocated before the refusal"


def test_a_set_too_large_for_memory_loads_as_files_without_decoding_a_pixel(tmp_path):
    """Each file is allowed (64 MP); decoded at that size the set would take more than a quarter of memory. Image
    folders are read lazily (a batch at a time, at the input size), so loading one decodes nothing."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    count = memory // 4 // (BIG_SIDE * BIG_SIDE) + 2  # files at 64 MB each once decoded
    root = tmp_path / "images"
    one_colour_png(root / "a" / "0.png", BIG_SIDE, BIG_SIDE)
    tiny = small_png(tmp_path / "tiny.png", 50).read_bytes()
    (root / "b").mkdir()
    for k in range(count):
        (root / ("a" if k % 2 else "b") / f"{k + 1}.png").write_bytes(tiny)
    loaded, peak = traced_peak(lambda: load_dataset(f"imagefolder:{root}"))
    assert len(loaded.train) + len(loaded.test) == count + 1
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MB allocated to load it"


def test_an_in_memory_set_at_a_huge_input_size_is_refused_before_it_is_allocated(tmp_path):
    """mnist5k is held in memory: at 4096x4096 its 3,600 training images would take 60 GB."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    result = run_cli("train", "--input-size", "4096", "--out", tmp_path / "run")
    assert_one_line_error(result, 2, "mnist5k train would take 60.4 GB in memory: 3600 images at 4096x4096")
    assert f"more than 1/4 of this machine's {memory / 1e9:.0f} GB; choose a smaller --input-size" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "kind, words",
    [
        ("giant", f"is {GIANT_SIDE}x{GIANT_SIDE} pixels (144 megapixels), more than the 89 megapixels rtool reads"),
        (
            "bomb",
            "is larger than Pillow decodes safely (a possible decompression bomb), more than the 89 megapixels "
            "rtool reads",
        ),
    ],
)
def test_infer_refuses_a_giant_picture_in_a_folder_before_decoding_it(cpu_export_dir, bomb_png, tmp_path, kind, words):
    """Pillow only warns at 144 MP and would decode it (144 MB, 432 MB as RGB); infer refuses it as training does."""
    from toolkit.infer import run_infer

    small_png(tmp_path / "shots" / "a.png", 10)
    picture = tmp_path / "shots" / "b" / "big.png"
    if kind == "giant":
        one_colour_png(picture, GIANT_SIDE, GIANT_SIDE, white=True)
    else:
        picture.parent.mkdir()
        picture.write_bytes(bomb_png.read_bytes())
    refused, peak = traced_peak(lambda: run_infer(cpu_export_dir / "model.onnx", [tmp_path / "shots"]))
    assert isinstance(refused, BadInputError), f"accepted: {refused}"
    assert (
        str(refused) == f"{picture} {words} from one image; shrink it (every image is resized to one size anyway) "
        "or remove it"
    )
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MB allocated before the refusal"


@pytest.mark.parametrize(
    "name, shown",
    [
        ("cats\nDROP", "cats\\nDROP"),
        ("tab\there", "tab\\there"),
        ("esc\x1b[31mred", "esc\\x1b[31mred"),
        ("line\u2028sep", "line\\u2028sep"),
        ("right\u202eleft", "right\\u202eleft"),
    ],
)
def test_class_folder_with_a_control_character_is_refused_in_one_line(tmp_path, name, shown):
    root = tmp_path / "images"
    small_png(root / name / "0.png", 10)
    small_png(root / "dogs" / "0.png", 200)
    with pytest.raises(BadInputError) as refused:
        load_dataset(f"imagefolder:{root}")
    message = str(refused.value)
    assert message.startswith(f"class folder {root}/{shown} has a control character or undecodable byte")
    assert "rename the folder" in message and len(message.splitlines()) == 1


def test_class_names_in_other_scripts_and_emoji_are_kept(tmp_path):
    names = ["chat noir", "猫", "👨\u200d👩\u200d👧 family", "ناو\u200cبر"]  # spaces, CJK, ZWJ emoji, ZWNJ
    for k, name in enumerate(names):
        small_png(tmp_path / name / "0.png", 40 * k)
        small_png(tmp_path / name / "1.png", 40 * k)
    assert load_dataset(f"imagefolder:{tmp_path}").class_names == sorted(names)


# ---------------------------------------------------------------- 16-bit pictures


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    """A 16-bit PNG (Pillow mode I;16) and a 16-bit PGM (mode I) become round(v * 255 / 65535)."""
    png = tmp_path / "deep.png"
    Image.fromarray(SAMPLES_16BIT).save(png)
    pgm = tmp_path / "deep.pgm"
    pgm.write_bytes(b"P5\n4 2\n65535\n" + SAMPLES_16BIT.astype(">u2").tobytes())
    grey, rgb = InputSpec(1, 2, 4, [0.0], [1.0]), InputSpec(3, 2, 4, [0.0] * 3, [1.0] * 3)
    for path, mode in ((png, "I;16"), (pgm, "I")):
        with Image.open(path) as image:
            assert image.mode == mode
            assert convert_image(image, grey)[0].tolist() == SCALED_16BIT
            assert all(channel.tolist() == SCALED_16BIT for channel in convert_image(image, rgb))


def test_16_bit_pngs_in_an_image_folder_are_scaled(tmp_path):
    for cls, rows in (("dark", SAMPLES_16BIT // 4), ("light", SAMPLES_16BIT)):
        for k in range(2):
            (tmp_path / cls).mkdir(exist_ok=True)
            Image.fromarray(np.ascontiguousarray(np.roll(rows, k))).save(tmp_path / cls / f"{k}.png")
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.channels == 1
    grey = InputSpec(1, 2, 4, [0.0], [1.0])  # at their own size: nothing resized
    light = [
        image[0].tolist()
        for split in (data.train, data.test)
        for image, label in zip(split.pixels(None, grey), split.labels)
        if label == 1
    ]
    assert sorted(light) == sorted([SCALED_16BIT, np.roll(SCALED_16BIT, 1).tolist()])


def test_app_predictor_scales_16_bit_pngs_as_rtool_does(tmp_path, embed_export_dir):
    samples = (np.arange(28 * 28, dtype=np.uint32).reshape(28, 28) * 83).astype(np.uint16)  # 0 .. 64989
    path = tmp_path / "deep.png"
    Image.fromarray(samples).save(path)
    expected = ((samples.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    predictor = Predictor(embed_export_dir / "model.raw-softmax.onnx")  # uint8 pixels at the card's 28x28 in
    assert np.array_equal(predictor.preprocess([path])[0, :, :, 0], expected)
    assert np.array_equal(convert_image(Image.open(path), InputSpec(1, 28, 28, [0.0], [1.0]))[0], expected)


# ---------------------------------------------------------------- the copy-into-your-app predictor


@pytest.fixture(scope="module")
def giant_jpegs(tmp_path_factory) -> dict[str, Path]:
    """Real grey JPEG files of one colour: 96 MP (Pillow warns) and 180 MP (Pillow raises)."""
    folder = tmp_path_factory.mktemp("giant_jpegs")
    files = {}
    for name, (width, height) in (("96mp", (12_000, 8_000)), ("180mp", (15_000, 12_000))):
        files[name] = folder / f"photo-{name}.jpg"
        Image.new("L", (width, height), 128).save(files[name], quality=50)
    return files


LIMIT_WORDS = "more than Pillow's decompression-bomb limit of 89,478,485 pixels (PIL.Image.MAX_IMAGE_PIXELS)"


@pytest.mark.parametrize(
    "name, words", [("96mp", f"is 12000x8000 pixels, {LIMIT_WORDS}"), ("180mp", f"has {LIMIT_WORDS}")]
)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # an app's own: Pillow warns, we refuse
def test_app_predictor_refuses_giant_jpegs_in_one_line(embed_export_dir, giant_jpegs, name, words):
    image = giant_jpegs[name]
    result = subprocess.run(
        [sys.executable, "-m", "runtimes.onnx_app", str(embed_export_dir / "model.onnx"), str(image)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"onnx_app: error: image {image} {words}; shrink it, or raise that limit in your app if you trust its images"
    ]
    with pytest.raises(PredictorError, match="decompression-bomb limit"):
        Predictor(embed_export_dir / "model.onnx").predict([image])


def test_app_predictor_follows_an_apps_own_pillow_limit(embed_export_dir, giant_jpegs, monkeypatch):
    """An app that trusts its images raises Pillow's limit, as the message says; the 96 MP photo is then read."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000_000)
    [[(label, probability)]] = Predictor(embed_export_dir / "model.onnx").predict([giant_jpegs["96mp"]])
    assert label in [str(d) for d in range(10)] and 0 < probability <= 1
