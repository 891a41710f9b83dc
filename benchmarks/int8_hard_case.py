"""A checkpoint that post-training INT8 quantization hurts, computing exactly what the trained one computes.

    .venv/bin/python benchmarks/int8_hard_case.py CHECKPOINT OUT.pt [--block layer1.0] [--spread 20] [--seed 0]

Rescales the middle channels of one residual block: channel c of ``bn1``'s
output is multiplied by s_c and channel c of ``conv2``'s input divided by it,
with s_c drawn log-uniformly from [1/spread, spread]. ReLU commutes with a
positive scale, so the float network is unchanged (checked on random inputs
before writing), but that activation tensor's channels now span ranges
``spread**2`` apart: per-tensor activation quantization, as both INT8 forms
use, rounds the small channels away. Batch-norm folding leaves networks such
as MobileNetV2 with the same imbalance (Nagel et al. 2019, "Data-Free
Quantization Through Weight Equalization and Bias Correction"); tests/test_int8_trust.py builds the same
model for its fallback tests. Feed OUT.pt to ``rtool quantize-report``, ``rtool export --precision int8
--max-accuracy-drop`` or benchmarks/int8_fallback.py.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from toolkit.checkpoint import load_model, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--block", default="layer1.0", help="a BasicBlock (conv1 -> bn1 -> relu -> conv2)")
    parser.add_argument("--spread", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, card = load_model(args.checkpoint)
    block = dict(model.named_modules())[args.block]
    channels = block.bn1.num_features
    scales = np.exp(np.random.default_rng(args.seed).uniform(-1, 1, channels) * np.log(args.spread))
    scales = torch.from_numpy(scales).float()
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((4, *card.input.shape)).astype(np.float32))
    with torch.no_grad():
        before = model(x)
        block.bn1.weight.mul_(scales)
        block.bn1.bias.mul_(scales)
        block.conv2.weight.div_(scales.view(1, -1, 1, 1))
        after = model(x)
    if not torch.allclose(after, before, atol=1e-4):
        raise SystemExit(f"the rescaling changed the float function (max diff {(after - before).abs().max():.3g})")
    path = save_checkpoint(args.out, model, card)
    print(f"wrote {path}: {args.block}'s {channels} middle channels rescaled by [1/{args.spread:g}, {args.spread:g}]")


if __name__ == "__main__":
    main()
