"""Which files are images, how large an image rtool reads, and the image files a user's arguments name.

Shared by the image-folder data set and ``rtool infer``, so both accept the
same suffixes and refuse the same giant pictures. Imports only the standard
library: finding files must not cost a PyTorch import.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from toolkit.errors import BadInputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default decompression-bomb limit (a quarter GiB of RGBA): about 89 MP
GLOB_CHARS = set("*?[")


def shown(path: Path | str) -> str:
    """A path or name as one line of text: characters that are not printable appear escaped (``\\n``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(path))


def too_large(path: Path, size: tuple[int, int] | None) -> BadInputError:
    """The one line that refuses a picture above MAX_IMAGE_PIXELS (``size`` None: Pillow refused to open it)."""
    what = (
        f"is {size[0]}x{size[1]} pixels ({size[0] * size[1] / 1e6:.0f} megapixels)"
        if size
        else "is larger than Pillow decodes safely (a possible decompression bomb)"
    )
    return BadInputError(
        f"{shown(path)} {what}, more than the {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels rtool reads "
        f"from one image; shrink it (every image is resized to one size anyway) or remove it"
    )


def is_image_name(path: Path) -> bool:
    """An image suffix, and not a hidden file (macOS writes ``._photo.jpg`` beside photos: no image inside)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def images_in_folder(folder: Path) -> list[Path]:
    """Every image file under ``folder`` and its sub-folders, sorted; hidden files and folders are skipped."""
    found = []
    for parent, dirs, files in os.walk(folder):  # symlinked folders are not followed: no loops
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(parent) / f for f in files if is_image_name(Path(f))]
    return sorted(found)


def _suffix_list() -> str:
    return ", ".join(sorted(IMAGE_SUFFIXES))


def _expand(arg: str) -> list[Path]:
    """The image files one argument names: a file as is, a folder's images (recursively), or a glob's."""
    path = Path(os.path.expanduser(arg))
    if path.is_file():
        return [path]
    if path.is_dir():
        found = images_in_folder(path)
        if not found:
            raise BadInputError(
                f"folder {shown(path)} holds no image files (looked for {_suffix_list()} in it and its "
                f"sub-folders); give a folder of images, image files or a glob"
            )
        return found
    if GLOB_CHARS & set(arg):
        matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(arg), recursive=True))
        found = [f for m in matches for f in (images_in_folder(m) if m.is_dir() else [m] if is_image_name(m) else [])]
        if not matches:
            raise BadInputError(f"'{shown(arg)}' matches no files; check the pattern (** matches any sub-folders)")
        if not found:
            raise BadInputError(
                f"'{shown(arg)}' matches {len(matches)} files or folders but no image files ({_suffix_list()})"
            )
        return found
    raise BadInputError(f"image {shown(path)} does not exist; give image files, folders of images or a glob")


def find_images(args: list[str | Path]) -> list[Path]:
    """The image files named by ``args`` (files, folders searched recursively, globs such as ``'shots/**/*.jpg'``),
    in the order given, each once. A file named directly is read whatever its suffix; folders and globs
    contribute files with an image suffix. Anything that names no image is refused in one line.
    """
    seen: set[Path] = set()
    files = []
    for arg in args:
        for path in _expand(str(arg)):
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                files.append(path)
    return files
