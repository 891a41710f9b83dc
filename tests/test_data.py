"""The data layer: the embedded mnist5k, and every torchvision data set read from tiny files in its real format.

torchvision checks the md5 of each CIFAR-10, SVHN and STL-10 file, so small
test files fail that check by design. The ``md5_check_off`` fixture is the
one test seam: in these tests only, torchvision's ``check_integrity`` becomes
an existence check, so the tiny files reach torchvision's real parsers and
rtool's conversion. ``test_tiny_files_without_the_seam_are_refused`` proves
users keep the check.
"""

from __future__ import annotations

import os
import pickle
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from toolkit.card import InputSpec
from toolkit.data import list_datasets, load_dataset, stratified_split
from toolkit.errors import BadInputError

RNG = np.random.default_rng(0)


@pytest.fixture
def md5_check_off(monkeypatch):
    """Test seam: torchvision's md5 check becomes "the file exists" (CIFAR-10, SVHN, STL-10 only)."""
    import torchvision.datasets.cifar
    import torchvision.datasets.stl10
    import torchvision.datasets.svhn

    def exists_only(fpath, md5=None):
        return os.path.isfile(fpath)

    for module in (torchvision.datasets.cifar, torchvision.datasets.svhn, torchvision.datasets.stl10):
        monkeypatch.setattr(module, "check_integrity", exists_only)


@pytest.fixture
def offline(monkeypatch):
    """No network, whatever machine runs the tests: every URL fails as it does here."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# ---------------------------------------------------------------- mnist5k


def test_mnist5k_is_a_fixed_stratified_4000_1000_split():
    data = load_dataset("mnist5k")
    assert data.name == "mnist5k" and data.class_names == [str(d) for d in range(10)]
    assert data.train.images.shape == (4000, 1, 28, 28) and data.test.images.shape == (1000, 1, 28, 28)
    assert data.train.images.dtype == torch.uint8 and data.train.labels.dtype == torch.int64
    assert torch.bincount(data.train.labels).tolist() == [400] * 10
    assert torch.bincount(data.test.labels).tolist() == [100] * 10
    assert data.train.images.max() == 255 and data.train.images.min() == 0
    again = load_dataset("mnist5k")
    assert torch.equal(data.train.images, again.train.images) and torch.equal(data.test.labels, again.test.labels)
    # no test image is also a training image
    train_rows = {bytes(x) for x in data.train.images.reshape(4000, -1).numpy()}
    assert sum(bytes(x) in train_rows for x in data.test.images.reshape(1000, -1).numpy()) == 0

    spec = data.input_spec()
    assert (spec.channels, spec.height, spec.width) == (1, 28, 28)
    assert 0.11 < spec.mean[0] < 0.15 and 0.28 < spec.std[0] < 0.34  # MNIST: 0.1307, 0.3081


def test_stratified_split_keeps_one_of_each_class_per_side():
    labels = np.array([0, 0, 1, 1, 1, 2])
    train, test = stratified_split(labels, test_fraction=0.2)
    assert sorted(labels[test].tolist()) == [0, 1]  # a class of one image stays in train
    assert sorted(set(labels[train].tolist())) == [0, 1, 2]
    assert set(train.tolist()).isdisjoint(test.tolist())


def test_registry_lists_every_data_set():
    assert set(list_datasets()) == {"mnist5k", "mnist", "kmnist", "fashionmnist", "cifar10", "svhn", "stl10"}
    with pytest.raises(BadInputError, match="unknown data set 'imagenet'"):
        load_dataset("imagenet")


# ---------------------------------------------------------------- MNIST / KMNIST / FashionMNIST (idx files)


def write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format: big-endian magic (0, 0, type 0x08 = ubyte, ndim), big-endian sizes, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_like(root: Path, folder: str, n_train: int = 6, n_test: int = 4):
    written = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
        written[prefix] = (images, labels)
    return written


@pytest.mark.parametrize(
    "name, folder, first_class",
    [("mnist", "MNIST", "0 - zero"), ("kmnist", "KMNIST", "o"), ("fashionmnist", "FashionMNIST", "T-shirt/top")],
)
def test_mnist_like_sets_read_raw_idx_files(tmp_path, name, folder, first_class):
    written = write_mnist_like(tmp_path, folder)
    data = load_dataset(name, tmp_path)
    assert data.class_names[0] == first_class and len(data.class_names) == 10
    for split, prefix in ((data.train, "train"), (data.test, "t10k")):
        images, labels = written[prefix]
        assert split.images.dtype == torch.uint8 and split.images.shape == (len(labels), 1, 28, 28)
        assert np.array_equal(split.images[:, 0].numpy(), images)
        assert split.labels.tolist() == labels.tolist()


def test_damaged_idx_file_is_one_clear_error(tmp_path):
    write_mnist_like(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"not an idx file at all")
    with pytest.raises(BadInputError, match=r"could not read data set 'mnist'.*--download"):
        load_dataset("mnist", tmp_path)


# ---------------------------------------------------------------- CIFAR-10 (python pickled batches)

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, per_batch: int = 3, n_test: int = 4) -> dict[str, np.ndarray]:
    """cifar-10-batches-py: dicts with 'data' (N, 3072: R, G, B planes, rows of 32) and 'labels'."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = RNG.integers(0, 10, size=n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump(
                {"batch_label": name, "labels": labels, "data": data, "filenames": [f"img_{k}.png" for k in range(n)]},
                f,
                protocol=2,
            )
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return batches


def test_cifar10_reads_python_batches(tmp_path, md5_check_off):
    batches = write_cifar10(tmp_path)
    data = load_dataset("cifar10", tmp_path)
    assert data.class_names == CIFAR_CLASSES
    train_rows = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert data.train.images.shape == (15, 3, 32, 32) and data.test.images.shape == (4, 3, 32, 32)
    assert np.array_equal(data.train.images.numpy(), train_rows.reshape(15, 3, 32, 32))
    # one pixel by hand: image 0, green plane, row 2, column 5
    assert data.train.images[0, 1, 2, 5].item() == train_rows[0, 1024 + 2 * 32 + 5]
    assert data.train.labels.tolist() == train_labels
    assert data.test.labels.tolist() == batches["test_batch"][1]
    assert data.channels == 3 and data.image_size == (32, 32)


def test_tiny_files_without_the_seam_are_refused(tmp_path):
    """torchvision's md5 check stays on for users: tiny (or damaged) files read as "not found"."""
    write_cifar10(tmp_path)
    with pytest.raises(BadInputError) as error:
        load_dataset("cifar10", tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and "--download" in message and "not found" in message


# ---------------------------------------------------------------- SVHN (.mat)


def write_svhn(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train_32x32.mat / test_32x32.mat: X (32, 32, 3, N) uint8, y (N, 1) with 10 meaning the digit 0."""
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in (("train", 5), ("test", 3)):
        x = RNG.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [9], [10], [5]][:n], dtype=np.uint8)
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        written[split] = (x, y)
    return written


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path, md5_check_off):
    written = write_svhn(tmp_path)
    data = load_dataset("svhn", tmp_path)
    assert data.class_names == [str(d) for d in range(10)]
    x, _ = written["train"]
    assert data.train.images.shape == (5, 3, 32, 32)
    assert np.array_equal(data.train.images.numpy(), x.transpose(3, 2, 0, 1))
    assert data.train.images[4, 2, 7, 3].item() == x[7, 3, 2, 4]  # image 4, blue, row 7, column 3
    assert data.train.labels.tolist() == [0, 1, 9, 0, 5]
    assert data.test.labels.tolist() == [0, 1, 9]


# ---------------------------------------------------------------- STL-10 (binaries, column-major)

STL_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def write_stl10(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """stl10_binary/*_X.bin: N x 3 x 96 x 96 uint8, each plane column-major; *_y.bin: labels 1..10."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    written = {}
    for split, n in (("train", 3), ("test", 2)):
        images = RNG.integers(0, 256, size=(n, 3, 96, 96), dtype=np.uint8)  # N, C, H, W
        labels = np.array([1, 10, 4][:n], dtype=np.uint8)
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        (folder / f"{split}_y.bin").write_bytes(labels.tobytes())
        written[split] = (images, labels)
    (folder / "unlabeled_X.bin").write_bytes(b"")  # part of the real archive; torchvision checks it is there
    (folder / "class_names.txt").write_text("\n".join(STL_CLASSES) + "\n")
    return written


def test_stl10_reads_binaries(tmp_path, md5_check_off):
    written = write_stl10(tmp_path)
    data = load_dataset("stl10", tmp_path)
    assert data.class_names == STL_CLASSES
    images, labels = written["train"]
    assert data.train.images.shape == (3, 3, 96, 96)
    assert np.array_equal(data.train.images.numpy(), images)  # rows are rows, not columns
    assert data.train.labels.tolist() == (labels.astype(int) - 1).tolist() == [0, 9, 3]
    assert np.array_equal(data.test.images.numpy(), written["test"][0])


# ---------------------------------------------------------------- missing, offline


@pytest.mark.parametrize("name", ["mnist", "kmnist", "fashionmnist", "cifar10", "svhn", "stl10"])
def test_missing_data_set_names_the_folder_and_download(tmp_path, name):
    with pytest.raises(BadInputError) as error:
        load_dataset(name, tmp_path / "empty")
    message = str(error.value)
    assert str(tmp_path / "empty") in message and "--download" in message and "\n" not in message


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_download_while_offline_is_one_clear_error(tmp_path, offline, name):
    with pytest.raises(BadInputError, match=rf"could not download '{name}' into {tmp_path}"):
        load_dataset(name, tmp_path, download=True)


# ---------------------------------------------------------------- image folders


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


RGB_6X8 = InputSpec(3, 6, 8, [0.0] * 3, [1.0] * 3)


def test_image_folder_with_class_folders_splits_80_20(tmp_path):
    for c, value in (("cat", 10), ("dog", 200)):
        for k in range(5):
            save_png(tmp_path / c / f"{k}.png", np.full((6, 8, 3), value + k, dtype=np.uint8))
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.class_names == ["cat", "dog"]
    assert (len(data.train), len(data.test), data.channels, data.image_size) == (8, 2, 3, None)  # files, any size
    assert torch.bincount(data.test.labels).tolist() == [1, 1]
    for split in (data.train, data.test):  # each image kept its own label
        for image, label in zip(split.pixels(None, RGB_6X8), split.labels):
            assert (image[0, 0, 0].item() < 100) == (label.item() == 0)
    again = load_dataset(f"imagefolder:{tmp_path}")
    assert data.test.files == again.test.files


def test_image_folder_with_train_and_test_folders(tmp_path):
    save_png(tmp_path / "train" / "a" / "1.png", np.full((4, 4), 7, dtype=np.uint8))
    save_png(tmp_path / "train" / "b" / "1.png", np.full((8, 8), 9, dtype=np.uint8))  # resized to the first
    save_png(tmp_path / "train" / "b" / "2.png", np.full((4, 4), 9, dtype=np.uint8))
    save_png(tmp_path / "test" / "a" / "1.png", np.full((4, 4), 5, dtype=np.uint8))
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.class_names == ["a", "b"]
    assert data.channels == 1  # every image grey: one channel
    assert data.train.labels.tolist() == [0, 1, 1] and data.test.labels.tolist() == [0]
    grey = InputSpec(1, 4, 4, [0.0], [1.0], "center_crop", 4)  # the 8x8 one is resized
    assert data.train.pixels(None, grey)[:, 0, 0, 0].tolist() == [7, 9, 9]
    assert data.test.pixels(None, grey).flatten().tolist() == [5] * 16


def test_image_folder_mixing_grey_and_colour_is_read_as_rgb(tmp_path):
    save_png(tmp_path / "a" / "1.png", np.full((4, 4), 100, dtype=np.uint8))
    save_png(tmp_path / "b" / "1.png", np.full((4, 4, 3), (255, 0, 0), dtype=np.uint8))
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.channels == 3
    spec = InputSpec(3, 4, 4, [0.0] * 3, [1.0] * 3)
    images = np.concatenate([data.train.pixels(None, spec), data.test.pixels(None, spec)])
    assert sorted(tuple(im[:, 0, 0].tolist()) for im in images) == [(100, 100, 100), (255, 0, 0)]


@pytest.mark.parametrize(
    "layout, words",
    [
        ({}, "has no class sub-folders"),
        ({"a/notes.txt": b"text"}, "holds no images"),
        ({"a/broken.png": b"not a png"}, "broken.png is not a readable image"),
        ({"train/a/1.png": None}, "has train/ but no val/, validation/ or test/"),
        ({"train/a/1.png": None, "val/b/1.png": None}, "val/b has no counterpart in .*train"),
        ({"train/a/1.png": None, "val/a/notes.txt": b"text"}, "holds no images of the classes"),
    ],
)
def test_bad_image_folders_say_what_is_wrong(tmp_path, layout, words):
    root = tmp_path / "images"
    root.mkdir()
    for rel, content in layout.items():
        path = root / rel
        if content is None:
            save_png(path, np.zeros((4, 4), dtype=np.uint8))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    with pytest.raises(BadInputError, match=words):
        load_dataset(f"imagefolder:{root}")


def test_image_folder_that_does_not_exist(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")
    with pytest.raises(BadInputError, match="needs a path"):
        load_dataset("imagefolder:")


def test_the_data_package_imports_one_way():
    """No import cycle inside toolkit.data (issue 14): the loaders import ``dataset``, never the package itself.

    Every import statement counts, also those inside functions; ``from toolkit.data import x`` imports the
    package (its ``__init__`` runs first), so a submodule must name the submodule it needs.
    """
    import ast

    import toolkit.data

    folder = Path(toolkit.data.__file__).parent
    modules = {p.stem: p for p in folder.glob("*.py")}
    name_of = {stem: "toolkit.data" if stem == "__init__" else f"toolkit.data.{stem}" for stem in modules}
    edges: dict[str, set[str]] = {name: set() for name in name_of.values()}
    for stem, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in edges:
                    target = target.rpartition(".")[0]
                if target and target != name_of[stem]:
                    edges[name_of[stem]].add(target)
    package_importers = sorted(m for m, targets in edges.items() if "toolkit.data" in targets)
    assert package_importers == [], f"these submodules import the toolkit.data package back: {package_importers}"
    seen: dict[str, int] = {}

    def visit(module: str, path: tuple[str, ...]) -> None:  # depth-first: a module met again on its own path
        assert module not in path, f"import cycle: {' -> '.join(path + (module,))}"
        if seen.get(module) != 1:
            for target in edges[module]:
                visit(target, path + (module,))
            seen[module] = 1

    for module in edges:
        visit(module, ())
