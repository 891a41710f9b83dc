"""The ModelCard: the single source of truth for classes, input shape and preprocessing.

It is plain JSON so that every file rtool writes can carry it (checkpoint,
ONNX ``metadata_props``, TorchScript ``_extra_files``, export manifest) and so
that apps without PyTorch can read it. This module imports nothing heavy.

A card may come from a file someone else made, and every later step trusts it
(the class count sizes the model's last layer, the input size sizes every
image batch, class names become lines of labels.txt), so both classes check
every field when they are built, and a card read from JSON is refused in one
line when a field is of the wrong type, out of range or inconsistent.
"""

from __future__ import annotations

import json
import math
import numbers
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

from toolkit.errors import BadInputError
from toolkit.jsonsafe import load_json_text

CARD_FORMAT_VERSION = 2  # 2: input.resize and input.resize_size (aspect-preserving resize + centre crop)
MAX_INPUT_SIDE = 8192  # pixels; one 3x8192x8192 float32 image is already 805 MB
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841
MAX_NAME_CHARS = 1000  # a class or model name
OUTPUTS = ("logits", "probabilities")
# How an image of another size becomes height x width. stretch: one bilinear resize to height x width (the only
# way before card format 2, and what a card without the field means); center_crop: torchvision's
# Resize(resize_size) + CenterCrop((height, width)), the aspect ratio kept.
RESIZE_MODES = ("stretch", "center_crop")
# The model arguments a card may carry. The builders take more (block counts, layer lists), but those define the
# architecture that the model's name already fixes, and a hostile card could ask for a million blocks.
CARD_MODEL_ARGS = ("in_channels", "num_classes", "shortcut", "init")
# Characters that end or break a line (or cannot be written as UTF-8): a class name holding one would split
# labels.txt or config.pbtxt into lines that no longer match the model's outputs.
LINE_BREAKING_CATEGORIES = ("Cc", "Cs", "Zl", "Zp")


def _shown(value: Any) -> str:
    """A value as one short line for an error message (repr escapes newlines)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_text(value: Any, what: str) -> str:
    """``value`` if it is one line of text of sensible length, else a BadInputError naming ``what``."""
    if not isinstance(value, str) or not value:
        raise BadInputError(f"{what} must be non-empty text, got {_shown(value)}")
    if len(value) > MAX_NAME_CHARS:
        raise BadInputError(f"{what} {_shown(value)} is {len(value):,} characters long (limit {MAX_NAME_CHARS})")
    if value.isprintable():  # the usual case, in C: no control, line-break or surrogate character
        return value
    bad = next((ch for ch in value if unicodedata.category(ch) in LINE_BREAKING_CATEGORIES), None)
    if bad is not None:
        raise BadInputError(
            f"{what} {_shown(value)} holds U+{ord(bad):04X}, a control or line-break character; "
            f"it must be one line of plain text (rename it)"
        )
    return value


def check_class_names(names: Any) -> list[str]:
    """The class names as a list, if they are 1..MAX_CLASSES distinct one-line texts (else BadInputError)."""
    if not isinstance(names, (list, tuple)) or not names:
        raise BadInputError("class_names must be a non-empty list")
    if len(names) > MAX_CLASSES:
        raise BadInputError(f"class_names lists {len(names):,} classes (limit {MAX_CLASSES:,})")
    seen: set[str] = set()
    for name in names:
        check_text(name, "class name")
        if name in seen:
            raise BadInputError(f"class name {_shown(name)} appears twice in class_names; each class needs its own")
        seen.add(name)
    return list(names)


@dataclass
class InputSpec:
    """What the model expects: an NCHW float tensor made from 0..255 pixels.

    ``x = (pixels / 255 - mean) / std`` per channel, after converting the image
    to ``color`` ("L" for grey, "RGB") and bringing it to ``height`` x ``width``
    as ``resize`` says (``resized_size`` and ``crop_box`` give the numbers).
    Built only from 1 or 3 channels, sides of 1..MAX_INPUT_SIDE pixels, one
    finite mean and positive std per channel and, for center_crop, a
    ``resize_size`` that covers both sides (BadInputError otherwise).
    """

    channels: int
    height: int
    width: int
    mean: list[float]
    std: list[float]
    resize: str = "stretch"
    resize_size: int | None = None  # center_crop: the shorter side after the resize, before the crop

    def __post_init__(self) -> None:
        sizes = (self.channels, self.height, self.width)
        if not all(_is_int(v) for v in sizes):
            raise BadInputError(f"input channels/height/width must be whole numbers, got {_shown(list(sizes))}")
        self.channels, self.height, self.width = (int(v) for v in sizes)
        if self.channels not in (1, 3) or not all(1 <= side <= MAX_INPUT_SIDE for side in (self.height, self.width)):
            raise BadInputError(
                f"input {self.channels}x{self.height}x{self.width} is not 1 or 3 channels of positive "
                f"size with each side at most {MAX_INPUT_SIDE} pixels"
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or not all(_is_finite_number(v) for v in values):
                raise BadInputError(f"input {name} must be a list of finite numbers, got {_shown(values)}")
            setattr(self, name, [float(v) for v in values])
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise BadInputError(f"input mean/std length differs from the channel count ({self.channels})")
        if not all(s > 0 for s in self.std):
            raise BadInputError(f"input std values must be positive, got {self.std}")
        self._check_resize()

    def _check_resize(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise BadInputError(f"input resize must be one of {', '.join(RESIZE_MODES)}, got {_shown(self.resize)}")
        if self.resize == "stretch":
            if self.resize_size is not None:
                raise BadInputError("input resize_size goes with resize center_crop, not stretch")
            return
        side = max(self.height, self.width)
        if not _is_int(self.resize_size) or not side <= self.resize_size <= MAX_INPUT_SIDE:
            raise BadInputError(
                f"input resize_size must be a whole number from {side} (the longer input side, so the crop "
                f"fits) to {MAX_INPUT_SIDE}, got {_shown(self.resize_size)}"
            )
        self.resize_size = int(self.resize_size)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of a ``width`` x ``height`` image after the resize step, before any crop.

        center_crop: torchvision's ``Resize(resize_size)`` (the shorter side becomes resize_size, the
        longer one ``int(resize_size * longer / shorter)``); stretch: the input size itself.
        """
        if self.resize == "stretch":
            return self.width, self.height
        short, long = sorted((width, height))
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the centre crop in a resized ``width`` x ``height`` image.

        torchvision's CenterCrop anchors: ``int(round((size - crop) / 2))``, Python's round (half to even).
        """
        left, top = int(round((width - self.width) / 2.0)), int(round((height - self.height) / 2.0))
        return left, top, left + self.width, top + self.height

    def describe(self) -> str:
        """One line for a run's header: 'RGB 224x224, resize the shorter side to 256 and crop the centre'."""
        size = f"{self.color} {self.height}x{self.width}"
        if self.resize == "stretch":
            return f"{size}, images stretched to that size"
        return f"{size}, shorter side resized to {self.resize_size}, centre {self.height}x{self.width} cropped"

    @property
    def color(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(color=self.color, layout="NCHW", dtype="float32", scale=1.0 / 255.0)
        return d


@dataclass
class ModelCard:
    """Everything needed to run a model: architecture, classes, input. Every field is checked when built."""

    model: str
    model_args: dict[str, Any]
    class_names: list[str]
    input: InputSpec
    dataset: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    output: str = "logits"
    format_version: int = CARD_FORMAT_VERSION

    def __post_init__(self) -> None:
        check_text(self.model, "model name")
        self.class_names = check_class_names(self.class_names)
        if not isinstance(self.input, InputSpec):
            raise BadInputError("input must be an object with channels, height, width, mean and std")
        self._check_model_args()
        if self.dataset is not None and not isinstance(self.dataset, str):
            raise BadInputError(f"dataset must be text or null, got {_shown(self.dataset)}")
        for name in ("training", "metrics", "versions"):
            if not isinstance(getattr(self, name), dict):
                raise BadInputError(f"{name} must be an object, got {_shown(getattr(self, name))}")
        if self.output not in OUTPUTS:
            raise BadInputError(f"output must be one of {', '.join(OUTPUTS)}, got {_shown(self.output)}")
        if not _is_int(self.format_version) or not 1 <= self.format_version <= CARD_FORMAT_VERSION:
            raise BadInputError(
                f"format_version must be a whole number from 1 to {CARD_FORMAT_VERSION}, "
                f"got {_shown(self.format_version)}"
            )

    def _check_model_args(self) -> None:
        """Known names and plain values only, and the class and channel counts (when given) agree with the card."""
        if not isinstance(self.model_args, dict):
            raise BadInputError("model_args must be an object")
        for key, value in self.model_args.items():
            if key not in CARD_MODEL_ARGS or not isinstance(value, (str, int)):
                raise BadInputError(
                    f"model_args may set only {', '.join(CARD_MODEL_ARGS)} to text or whole "
                    f"numbers, got {_shown(key)}: {_shown(value)}"
                )
        for key, expected, source in (
            ("num_classes", self.num_classes, f"class_names lists {self.num_classes}"),
            ("in_channels", self.input.channels, f"the input has {self.input.channels}"),
        ):
            if key in self.model_args and (not _is_int(self.model_args[key]) or self.model_args[key] != expected):
                raise BadInputError(f"model_args.{key} is {_shown(self.model_args[key])}, but {source}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "model": self.model,
            "model_args": dict(self.model_args),
            "dataset": self.dataset,
            "class_names": list(self.class_names),
            "num_classes": self.num_classes,
            "input": self.input.to_dict(),
            "output": self.output,
            "training": dict(self.training),
            "metrics": dict(self.metrics),
            "versions": dict(self.versions),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelCard":
        """The card a JSON object describes; any wrong, missing or inconsistent field is one BadInputError line."""
        if not isinstance(d, dict):
            raise BadInputError(
                f"the model card is malformed (not an object: {_shown(d)}); re-export the model with rtool"
            )
        version = d.get("format_version", CARD_FORMAT_VERSION)  # cards before versioning read as the current one
        if _is_int(version) and version > CARD_FORMAT_VERSION:
            raise BadInputError(
                f"model card format {version} is newer than this rtool understands "
                f"({CARD_FORMAT_VERSION}); upgrade rtool"
            )
        try:
            i = d["input"]
            if not isinstance(i, dict):
                raise BadInputError(f"input must be an object, got {_shown(i)}")
            spec = InputSpec(
                channels=i["channels"],
                height=i["height"],
                width=i["width"],
                mean=i["mean"],
                std=i["std"],
                resize=i.get("resize", "stretch"),
                resize_size=i.get("resize_size"),
            )
            card = cls(
                model=d["model"],
                model_args=d.get("model_args", {}),
                class_names=d["class_names"],
                input=spec,
                dataset=d.get("dataset"),
                training=d.get("training", {}),
                metrics=d.get("metrics", {}),
                versions=d.get("versions", {}),
                output=d.get("output", "logits"),
                format_version=version,
            )
            stated = d.get("num_classes", card.num_classes)
            if not _is_int(stated) or stated != card.num_classes:
                raise BadInputError(f"num_classes is {_shown(stated)}, but class_names lists {card.num_classes}")
            return card
        except (BadInputError, KeyError) as e:
            what = f"no {e}" if isinstance(e, KeyError) else str(e)
            raise BadInputError(f"the model card is malformed ({what}); re-export the model with rtool") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelCard":
        try:
            data = load_json_text(text, "the model card")
        except BadInputError as e:
            raise BadInputError(f"{e}; re-export the model with rtool") from None
        if not isinstance(data, dict):
            raise BadInputError("the model card is not a JSON object; re-export the model with rtool")
        return cls.from_dict(data)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shaped a file, for its card and manifest."""
    import platform
    from importlib import metadata

    import toolkit

    versions = {"rtool": toolkit.__version__, "python": platform.python_version()}
    for dist in ("torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


# Where each file format carries the card (readers and writers use these names).
ONNX_METADATA_KEY = "rtool.model_card"  # ONNX metadata_props: the card as JSON
EXTRA_FILE_NAME = "rtool_model_card.json"  # TorchScript _extra_files / torch.export extra_files
MANIFEST_NAME = "manifest.json"  # beside every export; holds the card and every file's sha256
