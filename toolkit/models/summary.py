"""Layer-by-layer output shapes, parameter counts and multiply-accumulates of a model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: list[int]
    params: int
    macs: int


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1] * (module.in_channels // module.groups)
        return int(output.numel() * k)
    if isinstance(module, nn.Linear):
        return int(output.numel() * module.in_features)
    return 0


@torch.no_grad()
def summarize(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerRow]:
    """Run one zero batch through ``model`` and record every leaf layer and every block.

    A model built on the ``meta`` device gives the same rows at no compute or
    memory cost, whatever the input size.

    Blocks (children of a stage) get a row too, so the walk reads like the
    paper's table: stem, then each stage's blocks, then pooling and the head.
    """
    rows: list[LayerRow] = []
    hooks = []
    names = {m: n for n, m in model.named_modules()}

    def record(module: nn.Module, _inputs, output) -> None:
        if not isinstance(output, torch.Tensor):
            return
        leaf = not list(module.children())
        own_params = sum(p.numel() for p in module.parameters(recurse=leaf))
        rows.append(
            LayerRow(
                names[module],
                type(module).__name__,
                list(output.shape),
                own_params if leaf else sum(p.numel() for p in module.parameters()),
                _macs(module, output),
            )
        )

    for name, module in model.named_modules():
        depth = name.count(".")
        is_block = name.startswith("layer") and depth == 1
        if name and (not list(module.children()) or is_block):
            if not isinstance(module, nn.ReLU) or depth == 0:
                hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device  # "meta" walks shapes without computing
    try:
        model(torch.zeros(*input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass (convolutions and linear layers)."""
    rows = summarize(model, input_shape)
    block_names = {r.name for r in rows if r.kind in ("BasicBlock", "Bottleneck")}
    return sum(r.macs for r in rows if r.name not in block_names)
