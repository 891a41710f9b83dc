"""A user's own images (``--dataset imagefolder:PATH``): one sub-folder per class.

Every file is checked from its header before any pixel is decoded, and the
whole set's size in memory is checked before it is allocated: a giant picture
(a decompression bomb, or a scan far beyond what a classifier needs) is
refused by name instead of costing gigabytes. Class names come from folder
names and end up in labels, cards and reports, so a name that would break a
line is refused too.
"""

from __future__ import annotations

import os
import unicodedata
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from toolkit.card import InputSpec
from toolkit.data.dataset import Dataset, Split, stratified_split
from toolkit.errors import BadInputError
from toolkit.imagefiles import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, is_image_name, shown, too_large
from toolkit.preprocess import SIXTEEN_BIT_MODES, convert_image

GREY_MODES = {"1", "L", "LA"} | SIXTEEN_BIT_MODES
MEMORY_SHARE = 4  # the decoded data set may take at most this fraction (1/4) of the machine's memory
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


def physical_memory() -> int | None:
    """Bytes of memory this machine has, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return None


def check_fits_in_memory(root: Path, count: int, spec: InputSpec, sized_by: str) -> None:
    """Refuse, before allocating, a set whose decoded pixels would take more than 1/MEMORY_SHARE of memory."""
    need = count * spec.channels * spec.height * spec.width
    memory = physical_memory()
    if memory is not None and need > memory // MEMORY_SHARE:
        raise BadInputError(
            f"image folder {shown(root)} would take {need / 1e9:.1f} GB in memory: {count} images "
            f"at {spec.width}x{spec.height} ({sized_by}), more than 1/{MEMORY_SHARE} of this "
            f"machine's {memory / 1e9:.0f} GB; resize the images to the size the model should "
            f"see (e.g. 224x224 or smaller) and try again"
        )


def _layout(root: Path) -> tuple[list[Path], bool]:
    """The folders that hold class folders ([root] or [train, test|val]); whether the split is the user's."""
    if not root.is_dir():
        raise BadInputError(
            f"image folder {shown(root)} does not exist; pass --dataset imagefolder:PATH with one sub-folder per class"
        )
    train = root / "train"
    test = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if train.is_dir() and test is not None:
        return [train, test], True
    if train.is_dir() and any(p.is_dir() for p in train.iterdir()):
        raise BadInputError(
            f"image folder {shown(root)} has train/ but no test/ or val/; add one, "
            f"or lay the images out as {shown(root)}/CLASS/image.png for a fixed 80/20 split"
        )
    return [root], False


def _files(root: Path) -> tuple[list[str], list[list[tuple[Path, int]]], bool]:
    """Class names and, per split folder, the (image file, class index) pairs; checked for emptiness."""
    split_dirs, has_splits = _layout(root)
    class_root = split_dirs[0]
    classes = sorted(check_class_name(p) for p in class_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise BadInputError(
            f"image folder {shown(class_root)} has no class sub-folders; lay it out as "
            f"{shown(class_root)}/CLASS/image.png"
        )
    groups = [
        [
            (f, i)
            for i, c in enumerate(classes)
            if (base / c).is_dir()
            for f in sorted((base / c).glob("*"))
            if is_image_name(f)
        ]
        for base in split_dirs
    ]
    if not any(groups):
        raise BadInputError(f"image folder {shown(root)} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if not all(groups):
        empty = split_dirs[1] if groups[0] else split_dirs[0]
        raise BadInputError(
            f"{shown(empty)} holds no images of the classes {shown(', '.join(classes))} (from {shown(class_root)})"
        )
    return classes, groups, has_splits


def _read(group: list[tuple[Path, int]], spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(group), *spec.shape), dtype=np.uint8)
    for k, (f, _) in enumerate(group):
        images[k] = read_pixels(f, spec)
    return images, np.array([label for _, label in group], dtype=np.int64)


def load_image_folder(root: Path, size: int | None = None) -> Dataset:
    """``root/CLASS/*.png`` (split 80/20, fixed) or ``root/train/CLASS`` + ``root/test|val/CLASS``.

    Images are read as grey when every one of them is grey (RGB otherwise) and
    resized to the size of the first image (or ``size``), so the whole set is one tensor.
    """
    classes, groups, has_splits = _files(root)
    files = [f for group in groups for f, _ in group]
    modes, first_size = set(), None
    for f in files:  # headers only: Pillow decodes pixels lazily
        with open_image(f) as image:
            modes.add(image.mode)
            first_size = first_size or image.size
    grey = modes <= GREY_MODES
    w, h = (size, size) if size else first_size
    spec = InputSpec(
        channels=1 if grey else 3, height=h, width=w, mean=[0.0] * (1 if grey else 3), std=[1.0] * (1 if grey else 3)
    )
    check_fits_in_memory(root, len(files), spec, "the size asked for" if size else f"the size of {shown(files[0])}")
    names = [[str(f) for f, _ in group] for group in groups]  # where each image came from (rows of infer)
    if has_splits:
        (xtr, ytr), (xte, yte) = _read(groups[0], spec), _read(groups[1], spec)
    else:
        x, y = _read(groups[0], spec)
        tr, te = stratified_split(y, test_fraction=0.2, seed=0)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
        names = [[names[0][i] for i in tr], [names[0][i] for i in te]]
    return Dataset(f"imagefolder:{root}", Split.of(xtr, ytr, names[0]), Split.of(xte, yte, names[1]), classes)
