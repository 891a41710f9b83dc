"""Turn images into model inputs exactly as the ModelCard says. NumPy + Pillow only.

The same functions serve training data, ``rtool infer`` and the torch-free app
predictor, so a pixel takes one path to the model wherever it runs.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from toolkit.card import InputSpec

# Grey images with 16-bit samples: Pillow opens 16-bit PNG, PGM and TIFF files in one of these modes.
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
EXIF_ORIENTATION = 0x0112  # the EXIF tag a camera sets instead of turning the pixels (1: already upright)


def upright(image: Image.Image) -> Image.Image:
    """``image`` as its camera meant it to be seen: the EXIF orientation applied (Pillow's ``exif_transpose``).

    Phones store a portrait photo sideways with a tag saying so, and browsers (the web page's
    ``createImageBitmap``) turn it upright, so every rtool reader does too: training, infer, onnx_app and the
    Node example. An image without such a tag comes back as it is.
    """
    if image.getexif().get(EXIF_ORIENTATION, 1) in (1, 0):
        return image
    return ImageOps.exif_transpose(image)


def to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit grey image -> 8-bit "L", 0..65535 scaled to 0..255 (rounded).

    Pillow's own ``convert("L")`` clips every value above 255 to white, so a
    16-bit scan would turn almost white. Mode "I" is read as 16-bit too (values
    outside 0..65535 are clipped), as Pillow uses it for such files.
    """
    values = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), mode="L")


def to_color(image: Image.Image, color: str) -> Image.Image:
    """``image`` in the colour mode ``color`` ("L" or "RGB"); 16-bit grey scaled, not clipped."""
    if image.mode in SIXTEEN_BIT_MODES:
        image = to_8bit(image)
    if image.mode != color:
        try:
            image = image.convert(color)
        except ValueError:  # no direct path in Pillow (e.g. a CIELab TIFF to grey): through RGB
            image = image.convert("RGB").convert(color)
    return image


def resize_to_input(image: Image.Image, spec: InputSpec) -> Image.Image:
    """``image`` at the card's height x width: stretched, or resized (aspect kept) and centre-cropped.

    center_crop is torchvision's ``Resize(resize_size)`` + ``CenterCrop((height, width))`` on a PIL image:
    one bilinear Pillow resize, then a crop (tests/test_card_preprocess.py holds them equal).
    """
    size = spec.resized_size(*image.size)
    if image.size != size:
        image = image.resize(size, Image.BILINEAR)
    if image.size != (spec.width, spec.height):
        image = image.crop(spec.crop_box(*image.size))
    return image


def convert_image(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """A PIL image -> uint8 array (C, H, W) with the card's colour mode and size (``resize_to_input``)."""
    image = resize_to_input(to_color(upright(image), spec.color), spec)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[None, :, :]
    else:
        array = array.transpose(2, 0, 1)
    return np.ascontiguousarray(array)


def conform_pixels(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 (N, C, H, W) of any channel count/size -> uint8 (N, spec.C, spec.H, spec.W).

    Arrays already in the card's shape pass through untouched (no copy).
    """
    if pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
        raise ValueError(f"expected an (N, C, H, W) array with 1 or 3 channels, got shape {pixels.shape}")
    if pixels.shape[1:] == spec.shape:
        return pixels
    out = np.empty((pixels.shape[0], *spec.shape), dtype=np.uint8)
    for i, chw in enumerate(pixels):
        mode = "L" if chw.shape[0] == 1 else "RGB"
        hwc = chw[0] if mode == "L" else chw.transpose(1, 2, 0)
        out[i] = convert_image(Image.fromarray(np.ascontiguousarray(hwc), mode=mode), spec)
    return out


def normalize(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 (N, C, H, W) in the card's shape -> float32 model input: (p / 255 - mean) / std."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((pixels.astype(np.float32) / np.float32(255.0)) - mean) / std


def prepare_batch(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Any uint8 (N, C, H, W) images -> the float32 batch the model takes."""
    return normalize(conform_pixels(pixels, spec), spec)
