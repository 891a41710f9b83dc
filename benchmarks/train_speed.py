"""Training speed: rtool's loop against the loop a tutorial would write, same model, data and epochs.

The reference wraps the same uint8 images in a torchvision-style Dataset that
makes a PIL image per item and applies RandomCrop(padding) + ToTensor +
Normalize, batches with a default DataLoader, and keeps the NCHW layout.
rtool's loop batches, shifts and normalises whole tensors and trains in
channels_last. Both use the same optimizer, one-cycle schedule, shift
augmentation, seed and test split (rtool's loop trains on the 90% of train its val split leaves, and its
accuracy is best.pt's); images/s counts training only (no evaluation).

    .venv/bin/python benchmarks/train_speed.py                # resnet20, mnist5k, 3 epochs
    .venv/bin/python benchmarks/train_speed.py --epochs 5 --no-channels-last
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import VisionDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.data import Split, load_dataset  # noqa: E402
from toolkit.models import create_model  # noqa: E402
from toolkit.train import TrainConfig, build_optimizer, build_scheduler, run_training  # noqa: E402


class TensorImages(VisionDataset):
    """What torchvision's MNIST does per item: a PIL image from the stored pixels, then the transforms."""

    def __init__(self, split: Split, transform) -> None:
        super().__init__(root="", transform=transform)
        self.images = split.images[:, 0].numpy()  # (N, H, W) grey
        self.labels = split.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], mode="L")
        return self.transform(image), self.labels[index]


def reference_loop(config: TrainConfig) -> dict[str, float]:
    """The tutorial loop: per-item PIL transforms, default DataLoader, NCHW."""
    data = load_dataset(config.dataset)
    spec = data.input_spec()
    normalize = transforms.Normalize(spec.mean, spec.std)
    train_set = TensorImages(
        data.train,
        transforms.Compose(
            [transforms.RandomCrop(spec.height, padding=config.shift), transforms.ToTensor(), normalize]
        ),
    )
    test_set = TensorImages(data.test, transforms.Compose([transforms.ToTensor(), normalize]))
    torch.manual_seed(config.seed)
    model = create_model(config.model, in_channels=spec.channels, num_classes=len(data.class_names))
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, len(loader) * config.epochs)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    seconds, seen = 0.0, 0
    for _epoch in range(config.epochs):
        model.train()
        started = time.perf_counter()
        for images, labels in loader:
            loss = loss_fn(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(labels)
        seconds += time.perf_counter() - started
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in DataLoader(test_set, batch_size=500):
            correct += int((model(images).argmax(1) == labels).sum())
    return {"images_per_s": seen / seconds, "train_seconds": seconds, "test_acc": correct / len(test_set)}


def rtool_loop(config: TrainConfig) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        result = run_training(TrainConfig(**{**config.to_dict(), "out": str(Path(tmp) / "run")}))
    train_seconds = sum(row["train_seconds"] for row in result.history)
    images = sum(row["images_per_s"] * row["train_seconds"] for row in result.history)
    return {
        "images_per_s": images / train_seconds,
        "train_seconds": train_seconds,
        "test_acc": result.test["test_acc"],  # best.pt (chosen on the val split carved from train)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--no-channels-last", action="store_true", help="Train rtool's loop in NCHW too.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = TrainConfig(
        model=args.model,
        dataset=args.dataset,
        epochs=args.epochs,
        batch_size=args.batch_size,
        channels_last=not args.no_channels_last,
        quiet=True,
        out="unused",
    )
    print(
        f"{config.model} on {config.dataset}, {config.epochs} epochs, batch {config.batch_size}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    reference = reference_loop(config)
    print(
        f"reference loop (PIL per item, DataLoader, NCHW): {reference['images_per_s']:7.0f} images/s  "
        f"test acc {100 * reference['test_acc']:.2f}%",
        flush=True,
    )
    ours = rtool_loop(config)
    print(
        f"rtool loop (batched tensors{', channels_last' if config.channels_last else ''}):   "
        f"{ours['images_per_s']:7.0f} images/s  test acc {100 * ours['test_acc']:.2f}%"
    )
    ratio = ours["images_per_s"] / reference["images_per_s"]
    print(f"speed-up: {ratio:.2f}x   accuracy change: {100 * (ours['test_acc'] - reference['test_acc']):+.2f} points")
    if args.json:
        print(json.dumps({"reference": reference, "rtool": ours, "ratio": ratio}))


if __name__ == "__main__":
    main()
