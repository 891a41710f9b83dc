"""A user's own images (``--dataset imagefolder:PATH``): one sub-folder per class, read lazily.

Layouts (docs/training.md): ``PATH/CLASS/*`` (a fixed 80/20 train/test split),
``PATH/train/CLASS`` with ``test/`` and/or ``val/`` (or ``validation/``). The
classes are those of the training folder; a class folder found only in val/ or
test/ is refused, never dropped. Without val/, training carves one from train
(``toolkit.train``).

Nothing is decoded when a folder is loaded: each split is a list of files
(``FileSplit``) that training reads in DataLoader workers and evaluation reads
a batch at a time, so memory does not grow with the number of images. Every
file's header is still checked at load time: a giant picture (a decompression
bomb, or a scan far beyond what a classifier needs) or a file that is no image
is refused by name before any work starts. Class names come from folder names
and end up in labels, cards and reports, so a name that would break a line is
refused too.
"""

from __future__ import annotations

import unicodedata
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from toolkit.card import InputSpec
from toolkit.data.dataset import Dataset, stratified_split
from toolkit.errors import BadInputError
from toolkit.imagefiles import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, is_image_name, shown, too_large
from toolkit.preprocess import SIXTEEN_BIT_MODES, convert_image, to_color, upright

GREY_MODES = {"1", "L", "LA"} | SIXTEEN_BIT_MODES
VAL_FOLDERS = ("val", "validation")
# Characters a class name may not hold: controls (newline, tab, escape...), invisible format marks
# (bidi overrides), undecodable bytes (surrogates) and line/paragraph separators. ZWNJ/ZWJ stay (scripts, emoji).
FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}
ALLOWED_FORMAT_MARKS = {"\u200c", "\u200d"}


def check_class_name(folder: Path) -> str:
    """The class name a folder gives, refused when it holds a character that would break a line or hide."""
    bad = [c for c in folder.name if unicodedata.category(c) in FORBIDDEN_CATEGORIES and c not in ALLOWED_FORMAT_MARKS]
    if bad:
        raise BadInputError(
            f"class folder {shown(folder)} has a control character or undecodable byte in its "
            f"name ({shown(''.join(dict.fromkeys(bad)))}); class names go into labels and "
            f"reports: rename the folder with printable characters only"
        )
    return folder.name


def _unreadable(path: Path, error: Exception) -> BadInputError:
    return BadInputError(f"{shown(path)} is not a readable image ({shown(error)}); remove it or replace it")


def open_image(path: Path) -> Image.Image:
    """Pillow's lazy open (header only), refused in one line when the file is no image or too large."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, naming the size
            image = Image.open(path)
    except Image.DecompressionBombError:
        raise too_large(path, None) from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise _unreadable(path, e) from None
    if image.width * image.height > MAX_IMAGE_PIXELS:
        image.close()
        raise too_large(path, image.size)
    return image


def read_pixels(path: Path, spec: InputSpec) -> np.ndarray:
    """One file -> uint8 (C, H, W) as the spec says; a file that fails to decode is named."""
    with open_image(path) as image:
        try:
            return convert_image(image, spec)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise _unreadable(path, e) from None


class FileSplit:
    """A split as image files and labels: pixels are read when asked for, never held.

    ``channels`` is the data set's own (1 when every image of it is grey, else 3). ``pixels`` reads
    images with the card's evaluation preprocessing; training reads them through ``read`` with its
    own (augmented) transform.
    """

    def __init__(self, files: list[Path], labels: torch.Tensor, channels: int) -> None:
        self.files, self.labels, self.channels = files, labels, channels

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, index: np.ndarray | torch.Tensor) -> FileSplit:
        index = np.asarray(index, dtype=np.int64)
        return FileSplit([self.files[i] for i in index], self.labels[torch.from_numpy(index)], self.channels)

    def pixels(self, index: np.ndarray | torch.Tensor | None, spec: InputSpec) -> np.ndarray:
        """uint8 (N, C, H, W) of the images at ``index`` (all when None), as the card's ``spec`` says."""
        chosen = range(len(self.files)) if index is None else np.asarray(index, dtype=np.int64)
        out = np.empty((len(chosen), *spec.shape), dtype=np.uint8)
        for k, i in enumerate(chosen):
            out[k] = read_pixels(self.files[i], spec)
        return out

    def read(self, i: int, color: str, transform: Callable[[Image.Image], Image.Image]) -> np.ndarray:
        """Image ``i`` as uint8 (C, H, W): converted to ``color`` ("L" or "RGB"), then ``transform`` applied
        (training's augmentation, which also brings it to the input size)."""
        with open_image(self.files[i]) as image:
            try:
                image = to_color(upright(image), color)
                image.load()
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                raise _unreadable(self.files[i], e) from None
        array = np.array(transform(image), dtype=np.uint8)  # a writable copy: torch.from_numpy takes it as is
        return np.ascontiguousarray(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))


def _layout(root: Path) -> dict[str, Path | None]:
    """The folders holding class folders: {"train": ..., "val": ..., "test": ...}; a flat root has only "flat"."""
    if not root.is_dir():
        raise BadInputError(
            f"image folder {shown(root)} does not exist; pass --dataset imagefolder:PATH with one sub-folder per class"
        )
    train = root / "train"
    vals = [root / d for d in VAL_FOLDERS if (root / d).is_dir()]
    if len(vals) > 1:
        raise BadInputError(f"image folder {shown(root)} has both val/ and validation/; keep one of them")
    val = vals[0] if vals else None
    test = root / "test" if (root / "test").is_dir() else None
    if train.is_dir() and (val or test):
        return {"train": train, "val": val, "test": test}
    if train.is_dir() and any(p.is_dir() for p in train.iterdir()):
        raise BadInputError(
            f"image folder {shown(root)} has train/ but no val/, validation/ or test/; add one, "
            f"or lay the images out as {shown(root)}/CLASS/image.png for a fixed 80/20 train/test split"
        )
    return {"flat": root}


def _class_folders(base: Path) -> list[str]:
    return sorted(check_class_name(p) for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(base: Path, classes: list[str]) -> list[tuple[Path, int]]:
    return [
        (f, i)
        for i, c in enumerate(classes)
        if (base / c).is_dir()
        for f in sorted((base / c).glob("*"))
        if is_image_name(f)
    ]


def _groups(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """Class names (from the training folder) and each split folder's (file, class index) pairs, checked."""
    folders = {name: path for name, path in _layout(root).items() if path is not None}
    class_root = folders.get("train", folders.get("flat"))
    classes = _class_folders(class_root)
    if not classes:
        raise BadInputError(
            f"image folder {shown(class_root)} has no class sub-folders; lay it out as "
            f"{shown(class_root)}/CLASS/image.png"
        )
    for base in folders.values():
        extra = [c for c in _class_folders(base) if c not in classes and _files(base, [c])]
        if extra:
            raise BadInputError(
                f"class folder {shown(base / extra[0])} has no counterpart in {shown(class_root)} (its classes: "
                f"{shown(', '.join(classes))}); a model cannot learn a class it never sees: add "
                f"{shown(class_root / extra[0])} or remove {shown(base / extra[0])}"
            )
    groups = {name: _files(base, classes) for name, base in folders.items()}
    if not any(groups.values()):
        raise BadInputError(f"image folder {shown(root)} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    for name, group in groups.items():
        if not group:
            raise BadInputError(
                f"{shown(folders[name])} holds no images of the classes {shown(', '.join(classes))} "
                f"(from {shown(class_root)})"
            )
    return classes, groups


def _channels(files: list[Path]) -> int:
    """1 when every file is grey, else 3; reads headers only (Pillow decodes pixels lazily), and refuses a file
    that is no image or too large, by name, before any pixel is decoded."""
    modes = set()
    for f in files:
        with open_image(f) as image:
            modes.add(image.mode)
    return 1 if modes <= GREY_MODES else 3


def load_image_folder(root: Path) -> Dataset:
    """The splits of an image folder as lists of files (nothing decoded; see the module's docstring).

    Without test/, the test split falls back to val/ (``Dataset.test_name`` says "val"), so that eval
    and parity still have images to run on; training then reports no test accuracy.
    """
    classes, groups = _groups(root)
    channels = _channels([f for group in groups.values() for f, _ in group])

    def split_of(group: list[tuple[Path, int]]) -> FileSplit:
        return FileSplit([f for f, _ in group], torch.tensor([c for _, c in group], dtype=torch.int64), channels)

    name = f"imagefolder:{root}"
    if "flat" in groups:
        whole = split_of(groups["flat"])
        tr, te = stratified_split(whole.labels.numpy(), test_fraction=0.2, seed=0)
        return Dataset(name, whole.subset(tr), whole.subset(te), classes)
    val = split_of(groups["val"]) if "val" in groups else None
    test = split_of(groups["test"]) if "test" in groups else None
    return Dataset(name, split_of(groups["train"]), test or val, classes, val=val, test_name="test" if test else "val")
