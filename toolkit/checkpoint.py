"""Checkpoints: weights + ModelCard (+ optional training state), saved atomically, loaded safely.

A checkpoint is a ``torch.save`` zip of plain containers and tensors, read back
with ``torch.load(weights_only=True)``: a file that would need to unpickle
arbitrary objects (and so could run code) is refused, never executed.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toolkit.card import InputSpec, ModelCard, library_versions
from toolkit.errors import BadInputError, UnsafeFileError
from toolkit.fileio import atomic_path
from toolkit.models import create_model

CHECKPOINT_FORMAT = "rtool-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    card: ModelCard
    state_dict: dict[str, torch.Tensor]
    train_state: dict[str, Any] = field(default_factory=dict)


def make_card(model: str, *, class_names: list[str], input_spec: InputSpec, dataset: str | None = None,
              model_args: dict[str, Any] | None = None, training: dict[str, Any] | None = None,
              metrics: dict[str, Any] | None = None) -> ModelCard:
    """A card for ``model`` with the channel and class counts taken from the input and classes."""
    args = dict(model_args or {})
    args.update(in_channels=input_spec.channels, num_classes=len(class_names))
    return ModelCard(model=model, model_args=args, class_names=list(class_names), input=input_spec,
                     dataset=dataset, training=dict(training or {}), metrics=dict(metrics or {}),
                     versions=library_versions())


def build_model(card: ModelCard) -> nn.Module:
    """An untrained model with the card's architecture."""
    return create_model(card.model, **card.model_args)


def save_checkpoint(path: str | Path, model: nn.Module, card: ModelCard,
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write atomically: a crash leaves the previous file (or none), never a partial one."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "card": card.to_json(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train_state": train_state or {},
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load`` that never unpickles code; every failure is one BadInputError line."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeFileError(
            f"refused to load {path}: it holds pickled objects beyond plain tensors and containers, "
            f"which could run code ({str(e).splitlines()[0][:160]}). Only load files you trust, re-saved as weights"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError, KeyError, IndexError) as e:
        raise BadInputError(f"{path} is not a readable PyTorch checkpoint ({e.__class__.__name__}: {str(e).splitlines()[0][:160] if str(e) else 'corrupt'})") from None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read an rtool checkpoint (card + weights + training state)."""
    payload = safe_torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise BadInputError(f"{path} is not an rtool checkpoint (no model card); for plain weights use "
                            f"`--weights FILE` with a model name")
    if int(payload.get("version", 0)) > CHECKPOINT_VERSION:
        raise BadInputError(f"{path} was written by a newer rtool (checkpoint v{payload['version']}); upgrade rtool")
    card = ModelCard.from_json(payload["card"])
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise BadInputError(f"{path} has no weights (state_dict); it may be truncated or tampered with")
    return Checkpoint(card=card, state_dict=state, train_state=payload.get("train_state") or {})


def load_model(path: str | Path) -> tuple[nn.Module, ModelCard]:
    """The eval-mode model and its card from a checkpoint."""
    ckpt = load_checkpoint(path)
    model = build_model(ckpt.card)
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as e:
        raise BadInputError(f"{path}: weights do not match {ckpt.card.model} ({str(e).splitlines()[0][:160]}); "
                            f"the file may be tampered with") from None
    return model.eval(), ckpt.card


def load_pretrained_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load a torchvision-style ``state_dict`` file (e.g. ``resnet18.pth``) into ``model``.

    Layers whose shape differs (a new classifier head for another class count,
    or a first convolution for grey input) keep their fresh init, except that
    RGB stem weights are summed into a grey stem. Returns the names re-initialised.
    """
    state = safe_torch_load(path)
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        state = state["state_dict"]
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInputError(f"{path} is not a state_dict of tensors")
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unknown or missing:
        raise BadInputError(f"{path} does not fit this architecture: "
                            f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unknown)} unexpected (e.g. {unknown[:2]})")
    replaced = []
    for key, value in list(state.items()):
        target = own[key]
        if value.shape == target.shape:
            continue
        if value.ndim == 4 and target.ndim == 4 and value.shape[0] == target.shape[0] and target.shape[1] == 1:
            state[key] = value.sum(dim=1, keepdim=True)  # RGB stem -> grey stem
        else:
            state[key] = target
        replaced.append(key)
    model.load_state_dict(state, strict=True)
    return replaced
