"""`rtool infer` on folders and globs: every image found, a file path in every row, notes summarised once,
CSV and grid files, and one clear line for what names no image."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtimes import open_runtime
from toolkit.data import load_dataset
from toolkit.errors import BadInputError
from toolkit.imagefiles import find_images
from toolkit.infer import run_infer
from toolkit.preprocess import convert_image, prepare_batch

from conftest import assert_one_line_error, run_cli

# (relative path, (width, height), mode): JPEG and PNG of mixed sizes and modes, in class folders and deeper
PICTURES = [
    ("cats/a.jpg", (64, 48), "RGB"),
    ("cats/b.png", (28, 28), "L"),
    ("cats/old/c.jpeg", (120, 200), "RGB"),
    ("dogs/d.png", (45, 30), "RGBA"),
    ("dogs/e.JPG", (64, 48), "RGB"),
    ("dogs/f.png", (56, 56), "P"),
    ("top.png", (28, 28), "L"),
]


def draw(size: tuple[int, int], mode: str, seed: int) -> Image.Image:
    """A digit from the test set, resized and converted: something an MNIST model gives varied answers to."""
    digit = load_dataset("mnist5k").test.images[seed * 37, 0].numpy()
    return Image.fromarray(digit, mode="L").resize(size).convert(mode)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for seed, (name, size, mode) in enumerate(PICTURES):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        draw(size, mode, seed).save(root / name)
    (root / "cats" / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork, not a JPEG")
    (root / ".thumbs").mkdir()
    draw((28, 28), "L", 9).save(root / ".thumbs" / "hidden.png")
    (root / "dogs" / "notes.txt").write_text("not an image")
    return root


def expected_rows(model_file: Path, files: list[Path], k: int) -> list[list[str]]:
    """What each file's row must hold, computed here file by file with the eager model: (class, probability)."""
    rows = []
    with open_runtime("eager", model_file.parent / "model.pt", "cpu") as rt:
        for path in files:
            with Image.open(path) as image:
                logits = rt.infer(prepare_batch(convert_image(image, rt.card.input)[None], rt.card.input))[0]
            probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            rows.append([(rt.card.class_names[j], float(probs[j])) for j in np.argsort(-probs, kind="stable")[:k]])
    return rows


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_a_folder_is_searched_with_its_sub_folders_into_a_csv_row_per_image(cpu_export_dir, photos, tmp_path):
    out = tmp_path / "predictions.csv"
    result = run_cli("infer", cpu_export_dir / "model.onnx", photos, "--csv", out, "--topk", "3")
    assert result.returncode == 0, result.stderr
    files = sorted(photos / name for name, _, _ in PICTURES)  # no hidden file, no hidden folder, no notes.txt
    rows = read_csv(out.read_text())
    assert [row["path"] for row in rows] == [str(f) for f in files]
    assert list(rows[0]) == ["path", "predicted", "probability", "class_2", "probability_2", "class_3", "probability_3"]
    for row, expected in zip(rows, expected_rows(cpu_export_dir / "model.onnx", files, 3)):
        got = [(row["predicted"], row["probability"]), (row["class_2"], row["probability_2"])]
        got.append((row["class_3"], row["probability_3"]))
        assert [c for c, _ in got] == [c for c, _ in expected], row["path"]
        assert [float(p) for _, p in got] == pytest.approx([p for _, p in expected], abs=2e-5)
    # the table names every file by its path; the notes are one line for all five converted images
    assert all(str(f) in result.stdout for f in files) and f"csv written to {out}" in result.stdout
    notes = result.stderr.splitlines()  # nothing else on stderr: no progress bar, no blank line, outside a terminal
    assert len(notes) == 1, notes
    assert notes[0] == (
        f"rtool: note: 5 of 7 images converted to 28x28 L as the model card says: 2 were 64x48 RGB (e.g. "
        f"{photos / 'cats' / 'a.jpg'}), 1 was 120x200 RGB (e.g. {photos / 'cats' / 'old' / 'c.jpeg'}), 1 was "
        f"45x30 RGBA (e.g. {photos / 'dogs' / 'd.png'}), and 1 of other sizes or modes"
    )


def test_globs_files_and_folders_mix_each_image_once(cpu_export_dir, photos):
    result = run_cli(
        "infer",
        cpu_export_dir / "model.onnx",
        f"{photos}/**/*.jp*g",  # quoted on a shell: rtool expands it, ** across sub-folders (case-sensitive)
        photos / "dogs",
        photos / "cats" / "a.jpg",  # already matched by the glob
        "--csv",
        "-",
    )
    assert result.returncode == 0, result.stderr
    paths = [row["path"] for row in read_csv(result.stdout)]
    assert paths == [
        str(photos / "cats" / "a.jpg"),
        str(photos / "cats" / "old" / "c.jpeg"),
        str(photos / "dogs" / "d.png"),
        str(photos / "dogs" / "e.JPG"),
        str(photos / "dogs" / "f.png"),
    ]  # e.JPG comes from the folder, not the glob; glob.glob skips hidden files too: no ._a.jpg
    assert "┃" not in result.stdout  # --csv - replaces the table on stdout


def test_json_names_the_files_and_the_grid_is_a_png(cpu_export_dir, photos, tmp_path):
    grid, out = tmp_path / "grid.png", tmp_path / "rows.csv"
    result = run_cli(
        "infer", cpu_export_dir, photos / "cats", "--json", "--save-grid", grid, "--csv", out, "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["grid"] == str(grid) and doc["csv"] == str(out)
    assert [p["source"] for p in doc["predictions"]] == [str(photos / n) for n in ("cats/a.jpg", "cats/b.png")] + [
        str(photos / "cats" / "old" / "c.jpeg")
    ]
    assert [r["predicted"] for r in read_csv(out.read_text())] == [p["predicted"] for p in doc["predictions"]]
    with Image.open(grid) as image:
        image.verify()
    with Image.open(grid) as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 150


def test_grid_titles_name_class_folder_and_file(cpu_export_dir, photos, tmp_path, monkeypatch):
    from toolkit import plots

    seen = {}
    real = plots.image_grid
    monkeypatch.setattr(plots, "image_grid", lambda *a: seen.update(titles=a[1], pixels=a[0]) or real(*a))
    from toolkit.infer import save_grid

    result = run_infer(cpu_export_dir / "model.onnx", [photos / "dogs"])
    save_grid(result, tmp_path / "grid.png")
    assert [t.splitlines()[1] for t in seen["titles"]] == ["dogs/d.png", "dogs/e.JPG", "dogs/f.png"]
    assert seen["pixels"].shape == (3, 1, 28, 28)  # what the model saw


def test_many_files_are_read_a_batch_at_a_time(cpu_export_dir, tmp_path, monkeypatch):
    """Rows past the first batch are right, and only the grid's share of pixels is kept."""
    import toolkit.infer as infer

    monkeypatch.setattr(infer, "BATCH", 4)
    monkeypatch.setattr(infer, "GRID_LIMIT", 6)
    digits = load_dataset("mnist5k").test.images[:11, 0].numpy()
    for i, pixels in enumerate(digits):
        Image.fromarray(pixels, mode="L").save(tmp_path / f"{i:02d}.png")
    result = run_infer(cpu_export_dir / "model.onnx", [tmp_path])
    whole = run_infer(cpu_export_dir / "model.onnx", dataset="mnist5k", first=11)
    assert [p.predicted for p in result.predictions] == [p.predicted for p in whole.predictions]
    assert [p.probability for p in result.predictions] == pytest.approx([p.probability for p in whole.predictions])
    assert result.pixels.shape == (6, 1, 28, 28) and np.array_equal(result.pixels, digits[:6, None])
    assert result.notes == []  # every file already 28x28 grey: nothing to say


def test_data_set_rows_are_named_by_file_or_by_index(cpu_export_dir, tmp_path):
    root = tmp_path / "digits"
    images, labels = load_dataset("mnist5k").test.images[:60, 0].numpy(), load_dataset("mnist5k").test.labels[:60]
    for k, (pixels, label) in enumerate(zip(images, labels.tolist())):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(root / str(label) / f"{k}.png")
    assert len({int(v) for v in labels}) == 10  # every class folder exists, as the model's 10 classes need
    result = run_infer(cpu_export_dir / "model.onnx", dataset=f"imagefolder:{root}", first=8)
    for p in result.predictions:  # each row is the file it was read from, and its label is its folder's
        assert Path(p.source).is_file() and Path(p.source).parent.name == p.actual
    named = run_infer(cpu_export_dir / "model.onnx", dataset="mnist5k", first=3)
    assert [p.source for p in named.predictions] == ["mnist5k test[0]", "mnist5k test[1]", "mnist5k test[2]"]


def test_find_images_refuses_what_names_no_image(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    (tmp_path / "text" / ".hidden.png").write_bytes(b"")
    cases = {
        str(tmp_path / "empty"): "holds no image files (looked for .bmp",
        str(tmp_path / "text"): "holds no image files",
        str(tmp_path / "*.png"): "matches no files; check the pattern",
        str(tmp_path / "text" / "*"): "matches 1 files or folders but no image files",
        str(tmp_path / "missing.png"): "does not exist; give image files, folders of images or a glob",
    }
    for arg, words in cases.items():
        with pytest.raises(BadInputError, match=words.replace("(", r"\(")):
            find_images([arg])


@pytest.mark.parametrize("bad", ["empty folder", "glob", "unreadable"])
def test_bad_inputs_exit_2_in_one_line_and_write_no_csv(cpu_export_dir, photos, tmp_path, bad):
    folder = tmp_path / "in"
    folder.mkdir()
    args, words = {
        "empty folder": (folder, "holds no image files"),
        "glob": (f"{tmp_path}/*.webp", "matches no files"),
        "unreadable": (photos, "broken.png is not a usable image"),
    }[bad]
    if bad == "unreadable":  # a damaged file among good ones
        folder = tmp_path / "mixed"
        import shutil

        shutil.copytree(photos, folder)
        (folder / "zz").mkdir()
        (folder / "zz" / "broken.png").write_bytes((photos / "cats" / "b.png").read_bytes()[:60])
        args = folder
    out = tmp_path / "out.csv"
    result = run_cli("infer", cpu_export_dir / "model.onnx", args, "--csv", out, "--save-grid", tmp_path / "g.png")
    assert_one_line_error(result, 2, words)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == []  # no CSV, no grid, no temporary file
