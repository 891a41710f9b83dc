"""Compare training recipes on a validation split carved from the TRAIN split, never the test split.

Choosing a default recipe by its test accuracy would tune on the test set.
This script has `rtool train` hold out a stratified quarter of the training
images (``--val-fraction``, fixed seed), trains each recipe on the rest and
reports validation accuracy only, so a recipe is picked on data no run scores
its test accuracy on. With 1,000 validation images one image is 0.1 point and
the standard error near 98.7% is about 0.35 points: differences smaller than
that are noise; use --seeds.

    .venv/bin/python benchmarks/train_recipes.py                          # the built-in recipes
    .venv/bin/python benchmarks/train_recipes.py --recipe '{"epochs": 12, "batch_size": 32, "lr": 0.05}' --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.train import TrainConfig, run_training  # noqa: E402

RECIPES = [  # each is TrainConfig fields over the defaults
    {},
    {"epochs": 6},
    {"epochs": 6, "batch_size": 32, "lr": 0.05},
    {"epochs": 12, "batch_size": 32, "lr": 0.05},
    {"epochs": 12, "batch_size": 32, "optimizer": "adamw", "lr": 0.002},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=TrainConfig.dataset)
    parser.add_argument("--fraction", type=float, default=0.25, help="Share of the train split held out.")
    parser.add_argument(
        "--recipe",
        action="append",
        type=json.loads,
        help="TrainConfig fields as JSON (repeatable; default: the built-in list).",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    print(f"{'recipe':<70} {'seed':>4} {'val final':>9} {'val best':>8} {'train':>6} {'seconds':>7}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipe or RECIPES:
            for seed in args.seeds:
                settings = {"dataset": args.dataset, "seed": seed, "val_fraction": args.fraction, **recipe}
                config = TrainConfig(**settings, out=f"{tmp}/run", overwrite=True, quiet=True)
                result = run_training(config)
                final = result.final
                print(
                    f"{json.dumps(recipe):<70} {seed:>4} {100 * final['val_acc']:>8.1f}% "
                    f"{100 * result.best_acc:>7.1f}% {100 * final['train_acc']:>5.1f}% "
                    f"{result.train_seconds:>7.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
