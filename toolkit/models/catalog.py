"""What `rtool models` and `rtool summary` show, as plain data.

Models are built on the ``meta`` device: shapes, parameter counts and
multiply-accumulates need no weights, so listing all 15 models (ResNet-152
included) or walking a large input takes seconds and no memory.
"""

from __future__ import annotations

from typing import Any

import torch

from toolkit.errors import BadInputError
from toolkit.models import create_model, get_entry, list_models
from toolkit.models.summary import count_macs, count_params, summarize


def model_table() -> list[dict[str, Any]]:
    rows = []
    for name in list_models():
        entry = get_entry(name)
        with torch.device("meta"):
            model = create_model(name)
        c, h, w = entry.default_input
        rows.append(
            {
                "name": name,
                "family": entry.family,
                "default_input": f"{c}x{h}x{w}",
                "params": count_params(model),
                "gflops": count_macs(model, (1, c, h, w)) / 1e9,
                "description": entry.description,
            }
        )
    return rows


def model_summary(
    name: str, input_shape: tuple[int, ...] | None = None, num_classes: int | None = None, **model_args: Any
) -> dict[str, Any]:
    """Each layer's output shape and parameters on ``input_shape`` (NxCxHxW); ``model_args`` as a card holds
    them, less the channel and class counts (``shortcut``, ``init``)."""
    entry = get_entry(name)
    shape = tuple(input_shape or (1, *entry.default_input))
    if len(shape) != 4 or min(shape) < 1:
        raise BadInputError(f"input shape {list(shape)} is not NxCxHxW with positive sizes, e.g. 1x3x224x224")
    with torch.device("meta"):
        model = create_model(name, in_channels=shape[1], num_classes=num_classes, **model_args)
    try:
        rows = summarize(model, shape)
    except RuntimeError as e:
        raise BadInputError(
            f"input {'x'.join(map(str, shape))} does not fit {name}: {str(e).splitlines()[0]}"
        ) from None
    block_kinds = ("BasicBlock", "Bottleneck")
    return {
        "model": name,
        "input": list(shape),
        "layers": [r.__dict__ for r in rows],
        "params": count_params(model),
        "gflops": sum(r.macs for r in rows if r.kind not in block_kinds) / 1e9,
        "output_shape": rows[-1].output_shape,
    }
