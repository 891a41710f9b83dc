"""Classify images with an rtool ONNX file, using only onnxruntime, NumPy and Pillow.

This one file is meant to be copied into an app that has neither PyTorch nor
rtool: it imports nothing else (no torch, no rtool module). Everything it
needs — class names, input size, colour mode, mean/std, what the output
means — comes from the model card that ``rtool export`` writes into the ONNX
file's ``metadata_props`` (see docs/onnx-metadata.md).

    from onnx_app import Predictor
    predictor = Predictor("export/model.onnx")
    predictor.predict(["seven.png"], top_k=3)   # [[("7", 0.98), ("1", 0.01), ("9", 0.004)]]

Command line: ``python -m runtimes.onnx_app MODEL IMAGE... [--top-k K] [--json]``.

Preprocessing mirrors ``toolkit/preprocess.py`` operation for operation
(EXIF orientation, colour conversion, bilinear resize, the centre crop of cards that say
``resize: center_crop``, ``(pixels / 255 - mean) / std`` in float32), so an
app gets the inputs that rtool measured its parity on; a test keeps the two
identical.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps, UnidentifiedImageError

CARD_KEY = "rtool.model_card"  # the ONNX metadata_props key that holds the card as JSON
SUPPORTED_CARD_FORMAT = 2  # newest card format this file understands (2 added input.resize)
RESIZE_MODES = ("stretch", "center_crop")
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})  # 16-bit grey, as in toolkit/preprocess.py
QUIET = 4  # onnxruntime log severity: fatal only (errors come back as exceptions, turned into PredictorError)

ImageSource = Union[str, Path, Image.Image]


class PredictorError(ValueError):
    """A model file or image this predictor cannot use; the message says what to do."""


class Predictor:
    """An ONNX Runtime session plus the model card read from the same file."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
        batch_size: int = 32,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise PredictorError(f"model file {path} does not exist")
        options = ort.SessionOptions()
        options.log_severity_level = QUIET  # every failure reaches the caller as a PredictorError instead
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        except Exception as e:  # onnxruntime's errors derive from Exception directly
            reason = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200]
            raise PredictorError(f"cannot load {path} as an ONNX model ({reason})") from None
        self.card = read_card(self.session, path)
        spec = self.card["input"]
        self.class_names: list[str] = [str(c) for c in self.card["class_names"]]
        self.channels, self.height, self.width = int(spec["channels"]), int(spec["height"]), int(spec["width"])
        self.color: str = spec.get("color") or ("L" if self.channels == 1 else "RGB")
        self.resize: str = spec.get("resize", "stretch")
        self.resize_size: int = int(spec.get("resize_size") or 0)
        self.layout: str = spec.get("layout", "NCHW")
        self.raw_pixels: bool = spec.get("dtype", "float32") == "uint8"
        self.mean = np.asarray(spec["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(spec["std"], dtype=np.float32).reshape(1, -1, 1, 1)
        self.divisor = np.float32(1.0 / float(spec.get("scale", 1.0 / 255.0)))
        self.outputs_probabilities: bool = self.card.get("output", "logits") == "probabilities"
        self.batch_size = max(1, int(batch_size))
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self._check_signature(path)

    def _check_signature(self, path: Path) -> None:
        """The card and the graph must agree, or every prediction would be silently wrong."""
        graph_input = self.session.get_inputs()[0]
        want_type = "tensor(uint8)" if self.raw_pixels else "tensor(float)"
        if graph_input.type != want_type:
            raise PredictorError(
                f"{path}: the card says the input is {want_type} but the graph takes "
                f"{graph_input.type}; re-export the model with rtool"
            )
        want = (
            (self.height, self.width, self.channels)
            if self.layout == "NHWC"
            else (self.channels, self.height, self.width)
        )
        have = tuple(graph_input.shape[1:])
        if len(have) != 3 or any(isinstance(h, int) and h != w for h, w in zip(have, want)):
            raise PredictorError(
                f"{path}: the graph input has shape {list(graph_input.shape)} but the card says "
                f"{self.layout} {list(want)}; re-export the model with rtool"
            )

    def preprocess(self, images: Iterable[ImageSource]) -> np.ndarray:
        """Images -> the batch the model takes: uint8 NHWC for in-graph preprocessing, else float32 NCHW."""
        pixels = np.stack([self._pixels(image) for image in images])  # uint8 (N, H, W, C)
        if self.raw_pixels:
            return pixels if self.layout == "NHWC" else np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
        nchw = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
        return ((nchw.astype(np.float32) / self.divisor) - self.mean) / self.std

    def _pixels(self, image: ImageSource) -> np.ndarray:
        """One image -> uint8 (H, W, C) in the card's colour mode and size (Pillow bilinear resize)."""
        if isinstance(image, Image.Image):
            image = _upright(image)
        else:
            with open_image(image) as opened:
                try:  # reads the pixels; a copy when the mode already fits
                    image = _convert(_upright(opened), self.color)
                except (OSError, ValueError) as e:
                    raise PredictorError(f"cannot read image {image} ({e.__class__.__name__}: {e})") from None
        if image.mode != self.color:
            image = _convert(image, self.color)
        size = self.resized_size(*image.size)
        if image.size != size:
            image = image.resize(size, Image.BILINEAR)
        if image.size != (self.width, self.height):  # center_crop: torchvision's CenterCrop anchors
            left, top = int(round((size[0] - self.width) / 2.0)), int(round((size[1] - self.height) / 2.0))
            image = image.crop((left, top, left + self.width, top + self.height))
        array = np.asarray(image, dtype=np.uint8)
        return array[:, :, None] if array.ndim == 2 else array

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """The size before the crop: stretch -> the input size; center_crop -> torchvision's Resize(resize_size)
        (the shorter side becomes resize_size, the longer ``int(resize_size * longer / shorter)``)."""
        if self.resize == "stretch":
            return self.width, self.height
        short, long = sorted((width, height))
        new_long = int(self.resize_size * long / short)
        return (self.resize_size, new_long) if width <= height else (new_long, self.resize_size)

    def probabilities(self, images: Sequence[ImageSource]) -> np.ndarray:
        """float64 (N, classes): softmax of the logits, or the model's own probabilities."""
        batch = self.preprocess(images)
        run_options = ort.RunOptions()
        run_options.log_severity_level = QUIET
        try:
            outputs = [
                self.session.run([self.output_name], {self.input_name: batch[i : i + self.batch_size]}, run_options)[0]
                for i in range(0, len(batch), self.batch_size)
            ]
        except Exception as e:  # onnxruntime's errors derive from Exception directly
            reason = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200]
            raise PredictorError(
                f"ONNX Runtime failed to run the model ({reason}); the file may be corrupt, re-export it with rtool"
            ) from None
        scores = np.concatenate(outputs).astype(np.float64)
        if self.outputs_probabilities:
            return scores
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        return scores / scores.sum(axis=1, keepdims=True)

    def predict(self, images: ImageSource | Sequence[ImageSource], top_k: int = 1) -> list[list[tuple[str, float]]]:
        """For each image, its ``top_k`` (class name, probability) pairs, most likely first."""
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        if not images:
            return []
        probs = self.probabilities(images)
        k = max(1, min(int(top_k), probs.shape[1]))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(self.class_names[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]


def open_image(path: str | Path) -> Image.Image:
    """Pillow's lazy open (the header only), refused in one line when the file is no image or too large.

    Too large is above ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow's decompression-bomb
    limit, about 89 megapixels by default), where Pillow itself only warns up to
    twice that: a classifier needs a few thousand pixels, and decoding such a
    file costs hundreds of MB. An app that trusts its images raises Pillow's limit.
    """
    limit = Image.MAX_IMAGE_PIXELS
    too_large = (
        (
            f"more than Pillow's decompression-bomb limit of {limit:,} pixels (PIL.Image.MAX_IMAGE_PIXELS); "
            f"shrink it, or raise that limit in your app if you trust its images"
        )
        if limit
        else ""
    )
    try:
        image = Image.open(path)
    except Image.DecompressionBombError:
        raise PredictorError(f"image {path} has {too_large}") from None
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise PredictorError(f"cannot read image {path} ({e.__class__.__name__}: {e})") from None
    if limit and image.width * image.height > limit:
        image.close()
        raise PredictorError(f"image {path} is {image.width}x{image.height} pixels, {too_large}")
    return image


def _upright(image: Image.Image) -> Image.Image:
    """The EXIF orientation applied, as rtool applies it (``toolkit.preprocess.upright``; browsers do it too)."""
    if image.getexif().get(0x0112, 1) in (1, 0):
        return image
    return ImageOps.exif_transpose(image)


def _convert(image: Image.Image, mode: str) -> Image.Image:
    """``image.convert(mode)``, through RGB where Pillow has no direct path (e.g. a CIELab TIFF to grey).

    16-bit grey (modes I;16*, and I, as Pillow opens 16-bit PNG, PGM and TIFF
    files) is scaled from 0..65535 to 0..255 first: Pillow's own conversion clips at 255.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        image = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), mode="L")
        if mode == "L":
            return image
    try:
        return image.convert(mode)
    except ValueError:
        return image.convert("RGB").convert(mode)


def read_card(session: ort.InferenceSession, path: Path) -> dict[str, Any]:
    """The model card from the file's metadata_props, checked for the fields an app needs."""
    text = session.get_modelmeta().custom_metadata_map.get(CARD_KEY)
    if text is None:
        raise PredictorError(
            f"{path} has no rtool model card (metadata key '{CARD_KEY}'); export the model with `rtool export`"
        )
    try:
        card = json.loads(text)
        version = int(card.get("format_version", 0))
        spec = card["input"]
        names = card["class_names"]
        if not isinstance(names, list) or not names:
            raise ValueError("class_names is empty")
        channels, height, width = int(spec["channels"]), int(spec["height"]), int(spec["width"])
        if min(channels, height, width) < 1 or len(spec["mean"]) != channels or len(spec["std"]) != channels:
            raise ValueError(f"input {channels}x{height}x{width} with {len(spec['mean'])} mean values")
        resize = spec.get("resize", "stretch")
        if resize not in RESIZE_MODES:
            raise ValueError(f"unknown input resize {resize!r}")
        if resize == "center_crop" and not int(spec["resize_size"]) >= max(height, width):
            raise ValueError(f"resize_size {spec['resize_size']} is smaller than the input {height}x{width}")
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
        raise PredictorError(f"{path}: the model card is malformed ({e}); re-export the model with rtool") from None
    if version > SUPPORTED_CARD_FORMAT:
        raise PredictorError(
            f"{path}: model card format {version} is newer than this predictor understands "
            f"({SUPPORTED_CARD_FORMAT}); update onnx_app.py"
        )
    return card


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runtimes.onnx_app", description="Classify images with an rtool ONNX file (no PyTorch needed)."
    )
    parser.add_argument("model", help="an ONNX file written by `rtool export`")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--top-k", type=int, default=1, help="how many classes to show per image (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # open_image refuses those in one line
            predictor = Predictor(args.model)
            results = predictor.predict(args.images, top_k=args.top_k)
    except PredictorError as e:
        print(f"onnx_app: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                [
                    {"image": image, "predictions": [{"class": c, "probability": p} for c, p in preds]}
                    for image, preds in zip(args.images, results)
                ],
                indent=2,
            )
        )
    else:
        for image, preds in zip(args.images, results):
            print(f"{image}: " + ", ".join(f"{c} ({p:.4f})" for c, p in preds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
