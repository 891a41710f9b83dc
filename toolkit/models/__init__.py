"""The ResNet family and its registry: everything else builds models by name.

>>> from toolkit.models import create_model
>>> net = create_model("resnet20", in_channels=1, num_classes=10)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from toolkit.card import MAX_CLASSES
from toolkit.errors import BadInputError
from toolkit.models.resnet import BasicBlock, Bottleneck, ResNet, init_weights


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    builder: Callable[..., nn.Module]
    default_input: tuple[int, int, int]  # C, H, W the model was designed for
    default_classes: int
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def _register(
    name: str,
    family: str,
    builder: Callable[..., nn.Module],
    default_input: tuple[int, int, int],
    default_classes: int,
    description: str,
) -> None:
    _REGISTRY[name] = ModelEntry(name, family, builder, default_input, default_classes, description)


_IMAGENET = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}
for _depth, (_block, _layers) in _IMAGENET.items():

    def _imagenet_builder(block=_block, layers=_layers, shortcut: str = "B", **kw: Any) -> nn.Module:
        return ResNet(block, layers, [64, 128, 256, 512], stem="imagenet", shortcut=shortcut, **kw)

    _register(
        f"resnet{_depth}",
        "imagenet-resnet",
        _imagenet_builder,
        (3, 224, 224),
        1000,
        f"ResNet-{_depth}, {_block.__name__}, torchvision-compatible state_dict",
    )

for _depth in (20, 32, 44, 56, 110):
    _n = (_depth - 2) // 6

    def _cifar_builder(n=_n, shortcut: str = "A", **kw: Any) -> nn.Module:
        return ResNet(BasicBlock, [n, n, n], [16, 32, 64], stem="cifar", shortcut=shortcut, **kw)

    def _plain_builder(n=_n, **kw: Any) -> nn.Module:
        return ResNet(BasicBlock, [n, n, n], [16, 32, 64], stem="cifar", shortcut="none", **kw)

    _register(
        f"resnet{_depth}",
        "cifar-resnet",
        _cifar_builder,
        (3, 32, 32),
        10,
        f"CIFAR ResNet-{_depth} (3x{_n} basic blocks, option A shortcuts)",
    )
    _register(
        f"plain{_depth}",
        "cifar-plain",
        _plain_builder,
        (3, 32, 32),
        10,
        f"CIFAR plain-{_depth} (ResNet-{_depth} without shortcuts)",
    )


def input_shape_of(entry: ModelEntry, dims: tuple[int, ...] | None) -> tuple[int, int, int]:
    """(C, H, W) from ``--input-size``'s N (square), HxW or CxHxW; the model's own channels (and size) where
    not given."""
    if not dims:
        return entry.default_input
    if len(dims) > 3:
        raise BadInputError(f"--input-size {'x'.join(map(str, dims))}: give N, HxW or CxHxW (e.g. 224 or 3x224x224)")
    if len(dims) == 3:
        return dims  # type: ignore[return-value]
    height, width = (dims[0], dims[0]) if len(dims) == 1 else dims
    return entry.default_input[0], height, width


def list_models() -> list[str]:
    """Registered model names, ImageNet family first, each by depth."""
    order = {"imagenet-resnet": 0, "cifar-resnet": 1, "cifar-plain": 2}
    return sorted(_REGISTRY, key=lambda n: (order[_REGISTRY[n].family], int("".join(filter(str.isdigit, n)))))


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BadInputError(
            f"unknown model '{name}'; choose one of: {', '.join(list_models())} (see `rtool models`)"
        ) from None


def create_model(
    name: str, *, in_channels: int | None = None, num_classes: int | None = None, init: str = "kaiming", **kwargs: Any
) -> nn.Module:
    """Build a registered model; channels and classes default to the model's design."""
    entry = get_entry(name)
    in_channels = entry.default_input[0] if in_channels is None else in_channels
    num_classes = entry.default_classes if num_classes is None else num_classes
    if in_channels not in (1, 3):
        raise BadInputError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}")
    if not 1 <= num_classes <= MAX_CLASSES:
        raise BadInputError(f"num_classes must be 1..{MAX_CLASSES:,}, got {num_classes}")
    if init not in ("kaiming", "xavier"):
        raise BadInputError(f"unknown init '{init}'; choose kaiming or xavier")
    if entry.family == "cifar-plain" and "shortcut" in kwargs:
        raise BadInputError(f"{name} has no shortcuts by design; for shortcut option A or B use resnet{name[5:]}")
    if kwargs.get("shortcut", "A") not in ("A", "B"):
        raise BadInputError(
            f"unknown shortcut option '{kwargs['shortcut']}'; choose A (zero-padding identity) or B (1x1 projection)"
        )
    try:
        model = entry.builder(in_channels=in_channels, num_classes=num_classes, **kwargs)
    except TypeError as e:  # an argument this architecture does not take
        raise BadInputError(f"{name} does not take {', '.join(sorted(kwargs))} ({e})") from None
    if init != "kaiming":
        init_weights(model, init)  # type: ignore[arg-type]
    return model


__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "ModelEntry",
    "create_model",
    "get_entry",
    "input_shape_of",
    "list_models",
    "init_weights",
]
