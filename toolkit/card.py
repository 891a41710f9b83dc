"""The ModelCard: the single source of truth for classes, input shape and preprocessing.

It is plain JSON so that every file rtool writes can carry it (checkpoint,
ONNX ``metadata_props``, TorchScript ``_extra_files``, export manifest) and so
that apps without PyTorch can read it. This module imports nothing heavy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from toolkit.errors import BadInputError

CARD_FORMAT_VERSION = 1


@dataclass
class InputSpec:
    """What the model expects: an NCHW float tensor made from 0..255 pixels.

    ``x = (pixels / 255 - mean) / std`` per channel, after converting the image
    to ``color`` ("L" for grey, "RGB") and resizing it to ``height`` x ``width``.
    """

    channels: int
    height: int
    width: int
    mean: list[float]
    std: list[float]

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
        try:
            version = int(d.get("format_version", 0))
            if version > CARD_FORMAT_VERSION:
                raise BadInputError(
                    f"model card format {version} is newer than this rtool understands "
                    f"({CARD_FORMAT_VERSION}); upgrade rtool"
                )
            i = d["input"]
            spec = InputSpec(
                channels=int(i["channels"]),
                height=int(i["height"]),
                width=int(i["width"]),
                mean=[float(v) for v in i["mean"]],
                std=[float(v) for v in i["std"]],
            )
            if spec.channels not in (1, 3) or spec.height < 1 or spec.width < 1:
                raise ValueError(f"input {spec.channels}x{spec.height}x{spec.width} is not 1 or 3 channels of positive size")
            if len(spec.mean) != spec.channels or len(spec.std) != spec.channels:
                raise ValueError("mean/std length differs from the channel count")
            if not all(s > 0 for s in spec.std):
                raise ValueError("std values must be positive")
            if not isinstance(d["class_names"], list) or not d["class_names"]:
                raise ValueError("class_names must be a non-empty list")
            if not isinstance(d.get("model_args", {}), dict):
                raise ValueError("model_args must be an object")
            return cls(
                model=str(d["model"]),
                model_args=dict(d.get("model_args", {})),
                class_names=[str(c) for c in d["class_names"]],
                input=spec,
                dataset=d.get("dataset"),
                training=dict(d.get("training", {})),
                metrics=dict(d.get("metrics", {})),
                versions=dict(d.get("versions", {})),
                output=str(d.get("output", "logits")),
                format_version=version or CARD_FORMAT_VERSION,
            )
        except BadInputError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise BadInputError(f"the model card is malformed ({e}); re-export the model with rtool") from e

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelCard":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
            raise BadInputError(f"the model card is not valid JSON ({e}); re-export the model with rtool") from e
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
