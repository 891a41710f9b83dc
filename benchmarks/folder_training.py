"""Training from image folders: memory against folder size, images/s at 32x32 and 224x224, fine-tuning vs scratch.

Folders are generated (tests/shapes.py: drawn shapes, JPEG and PNG, 40-200 px, non-square).

* memory: one epoch on a folder and on one with 10x the images, each in its own process reading
  in-process (--workers 0, so every decoded pixel would count); the peak resident memory of each.
* speed: images/s of a training epoch (reading, augmenting, stepping) at 32x32 (resnet20) and 224x224
  (resnet18), with the default reader processes.
* finetune: a resnet20 pretrained by rtool on one data set (--source: the embedded mnist5k, or a
  generated folder of three other shapes), fine-tuned on a small folder against the same model trained
  from scratch, same epochs and settings; test accuracy of best.pt for each seed.

    .venv/bin/python benchmarks/folder_training.py memory
    .venv/bin/python benchmarks/folder_training.py speed
    .venv/bin/python benchmarks/folder_training.py finetune --source mnist5k --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from shapes import SHAPES, make_folder  # noqa: E402

from toolkit.train import TrainConfig, run_training  # noqa: E402

# Run in a fresh process per measurement; prints that process's peak resident memory (MB).
READ_ALL = """
import resource, sys
from toolkit.data import load_dataset
from toolkit.data.augment import build
from toolkit.train.inputs import make_splits, resolve_shape
from toolkit.train.config import TrainConfig
from toolkit.train.loading import epoch_keys, file_batches
import torch
config = TrainConfig(dataset=sys.argv[1], input_size="128", batch_size=32, workers=0)
data = load_dataset(config.dataset)
spec, _ = resolve_shape(config, data, None)
train = make_splits(data, config).train
keys = epoch_keys(torch.randperm(len(train)), 0, 0, 32, 0)
seen = sum(len(y) for _, y in file_batches(train, spec, keys, build("light", spec, True), 0))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, seen)
"""
TRAIN_EPOCH = """
import resource, sys
from toolkit.train import TrainConfig, run_training
run_training(TrainConfig(dataset=sys.argv[1], input_size="128", batch_size=32, workers=0, epochs=int(sys.argv[3]),
                         quiet=True, out=sys.argv[2]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0)
"""


def peak_rss_mb(script: str, *args: str) -> float:
    """The peak resident memory (MB) of a fresh Python process running ``script``."""
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(result.stderr)
    return float(result.stdout.split()[-2])


def memory(tmp: Path, per_class: int) -> None:
    """Reading every training image through the training DataLoader, and a whole training epoch (resnet20 at
    128x128, batch 32), on a folder and on one with 10x the images; all reading in-process (--workers 0), so
    every decoded pixel would count. A control: 10 epochs on the small folder, as many steps as one epoch on
    the large one, shows what the number of steps alone adds (the allocator's, not the data's)."""
    print("peak resident memory (MB) at --input-size 128, batch 32, --workers 0:")
    for scale in (1, 10):
        count = 3 * per_class * scale
        root = make_folder(tmp / f"x{scale}", {"": per_class * scale}, sizes=(100, 200), seed=scale)
        dataset = f"imagefolder:{root}"
        read = peak_rss_mb(READ_ALL, dataset)
        trained = peak_rss_mb(TRAIN_EPOCH, dataset, str(tmp / f"run{scale}"), "1")
        pixels = count * 3 * 128 * 128 / 2**20
        print(
            f"  {count:>5} images: read all {read:6.0f}, train one epoch {trained:6.0f} "
            f"(the images' pixels at 128x128: {pixels:4.0f})",
            flush=True,
        )
        if scale == 1:
            steps = peak_rss_mb(TRAIN_EPOCH, dataset, str(tmp / "run-steps"), "10")
            print(f"  {count:>5} images, 10 epochs (the steps of one large epoch): {steps:6.0f}", flush=True)


def speed(tmp: Path, per_class: int, epochs: int) -> None:
    root = make_folder(tmp / "speed", {"": per_class}, classes=SHAPES, sizes=(100, 300))
    print(f"training images/s on {6 * per_class} images (80% train, of which 90% after val), default workers:")
    for model, size in (("resnet20", "32"), ("resnet18", "224")):
        config = TrainConfig(
            model=model,
            dataset=f"imagefolder:{root}",
            input_size=size,
            epochs=epochs,
            batch_size=32,
            quiet=True,
            out=str(tmp / f"run-{model}"),
            overwrite=True,
        )
        history = run_training(config).history
        rates = ", ".join(f"{row['images_per_s']:.1f}" for row in history)
        print(f"  {model} at {size}x{size}: {rates} images/s (epochs 1..{epochs})", flush=True)


def finetune(tmp: Path, source: str, seeds: list[int], epochs: int, pretrain_epochs: int, train: int) -> None:
    if source == "mnist5k":
        dataset, extra = "mnist5k", {}
    else:  # three shapes the target does not have
        root = make_folder(tmp / "source", {"train": 150, "test": 30}, classes=SHAPES[3:], grey=True, seed=7)
        dataset, extra = f"imagefolder:{root}", {"input_size": "1x28x28"}
    pretrained = run_training(
        TrainConfig(dataset=dataset, epochs=pretrain_epochs, quiet=True, out=str(tmp / "pretrained"), **extra)
    )
    scored = f"{100 * pretrained.test['test_acc']:.1f}%" if pretrained.test else "not scored"
    print(f"pretrained resnet20 on {source}: test accuracy {scored}, best val {100 * pretrained.best_acc:.1f}%")
    split_sizes = {"train": train, "val": 5, "test": 30}
    target = make_folder(tmp / "target", split_sizes, classes=SHAPES[:3], grey=True, seed=11)
    common = dict(dataset=f"imagefolder:{target}", epochs=epochs, batch_size=8, quiet=True, overwrite=True)
    print(f"target: 3 shapes, {train} train / 5 val / 30 test images per class, {epochs} epochs, batch 8")
    for seed in seeds:
        scores = {}
        for name, start in (
            ("scratch", {"input_size": "1x28x28"}),
            ("fine-tuned", {"weights": str(pretrained.best_path)}),
        ):
            result = run_training(TrainConfig(**common, **start, seed=seed, out=str(tmp / f"{name}-{seed}")))
            scores[name] = 100 * result.test["test_acc"]
        print(
            f"  seed {seed}: from scratch {scores['scratch']:.1f}%, fine-tuned {scores['fine-tuned']:.1f}%", flush=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["memory", "speed", "finetune"])
    parser.add_argument("--per-class", type=int, default=None, help="Images per class (memory: 40; speed: 60).")
    parser.add_argument("--epochs", type=int, default=None, help="speed: 2; finetune: 10.")
    parser.add_argument("--source", choices=["mnist5k", "shapes"], default="mnist5k")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target-train", type=int, default=10, help="finetune: training images per target class.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.what == "memory":
            memory(Path(tmp), args.per_class or 40)
        elif args.what == "speed":
            speed(Path(tmp), args.per_class or 60, args.epochs or 2)
        else:
            finetune(Path(tmp), args.source, args.seeds, args.epochs or 10, args.pretrain_epochs, args.target_train)


if __name__ == "__main__":
    main()
