"""Checkpoints: weights + ModelCard (+ optional training state), saved atomically, loaded safely.

A checkpoint is a ``torch.save`` zip of plain containers and tensors, read back
with ``torch.load(weights_only=True)``: a file that would need to unpickle
arbitrary objects (and so could run code) is refused, never executed.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
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
from toolkit.safety import DAMAGED_ZIP_ERRORS, check_stored_records

CHECKPOINT_FORMAT = "rtool-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    card: ModelCard
    state_dict: dict[str, torch.Tensor]
    train_state: dict[str, Any] = field(default_factory=dict)


def make_card(
    model: str,
    *,
    class_names: list[str],
    input_spec: InputSpec,
    dataset: str | None = None,
    model_args: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> ModelCard:
    """A card for ``model`` with the channel and class counts taken from the input and classes."""
    args = dict(model_args or {})
    args.update(in_channels=input_spec.channels, num_classes=len(class_names))
    return ModelCard(
        model=model,
        model_args=args,
        class_names=list(class_names),
        input=input_spec,
        dataset=dataset,
        training=dict(training or {}),
        metrics=dict(metrics or {}),
        versions=library_versions(),
    )


def build_model(card: ModelCard) -> nn.Module:
    """An untrained model with the card's architecture."""
    return create_model(card.model, **card.model_args)


def save_checkpoint(
    path: str | Path, model: nn.Module, card: ModelCard, train_state: dict[str, Any] | None = None
) -> Path:
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
    """``torch.load`` that never unpickles code; every failure is one BadInputError line.

    A zip archive's directory is checked first (no compressed record, no
    record larger than the file), so torch never inflates or allocates more
    than the file holds.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"checkpoint {path} does not exist")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                check_stored_records(path, archive)
        except DAMAGED_ZIP_ERRORS as e:
            raise BadInputError(
                f"{path} is not a readable PyTorch checkpoint; it may be truncated or corrupt "
                f"({e.__class__.__name__}: {str(e)[:120]})"
            ) from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on odd files; the error says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        code = _pickled_code(path, str(e))
        if code:
            raise UnsafeFileError(
                f"refused to load {path}: it asks to import {code}, and unpickling it could run code. "
                f"Only load files you trust, re-saved as plain weights (a state_dict)"
            ) from None
        raise BadInputError(
            f"{path} is not a readable PyTorch checkpoint (it is corrupt, or not a weights file)"
        ) from None
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        OSError,
        AttributeError,
        KeyError,
        IndexError,
        TypeError,
        OverflowError,
    ) as e:  # TypeError/OverflowError: a size or count of the wrong type or sign
        reason = str(e).strip().split(". ")[0].splitlines()[0][:160] if str(e).strip() else "empty or cut short"
        raise BadInputError(
            f"{path} is not a readable PyTorch checkpoint; it may be truncated or corrupt "
            f"({e.__class__.__name__}: {reason})"
        ) from None


def _pickled_code(path: Path, torch_message: str) -> str | None:
    """The first global (function or class) a refused file imports, found without unpickling it.

    torch's weights-only reader names it for protocol-2 pickles; for other
    protocols the pickle stream itself is read opcode by opcode (never executed).
    """
    named = re.search(r"GLOBAL (\S+)", torch_message)
    if named:
        return named.group(1).rstrip(".")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(member) if member else b""
        else:
            data = path.read_bytes()
        strings: list[str] = []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                return str(arg).replace(" ", ".")
            if opcode.name == "STACK_GLOBAL":
                return ".".join(strings[-2:])
            if isinstance(arg, str):
                strings.append(arg)
    except (ValueError, EOFError, OSError, KeyError, zipfile.BadZipFile):  # not a pickle stream: corrupt, not hostile
        return None
    return None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read an rtool checkpoint (card + weights + training state)."""
    payload = safe_torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise BadInputError(
            f"{path} is not an rtool checkpoint (no model card); for plain weights use "
            f"`--weights FILE` with a model name"
        )
    version = payload.get("version")
    if not isinstance(version, int) or version < 1:
        raise BadInputError(f"{path} has no valid checkpoint version; it may be truncated or tampered with")
    if version > CHECKPOINT_VERSION:
        raise BadInputError(f"{path} was written by a newer rtool (checkpoint v{version}); upgrade rtool")
    if not isinstance(payload.get("card"), str):
        raise BadInputError(f"{path} has no model card; it may be truncated or tampered with")
    try:
        card = ModelCard.from_json(payload["card"])
    except BadInputError as e:
        raise BadInputError(f"{path}: {e}") from None
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise BadInputError(f"{path} has no weights (state_dict); it may be truncated or tampered with")
    check_weights(path, state)
    train_state = payload.get("train_state") or {}
    if not isinstance(train_state, dict):
        raise BadInputError(f"{path} has a malformed training state (not a mapping); it may be tampered with")
    return Checkpoint(card=card, state_dict=state, train_state=train_state)


def check_weights(path: str | Path, state: dict[Any, Any]) -> None:
    """Refuse a state_dict that is not text names -> real-valued tensors (torch would fail deep inside, or
    silently drop the imaginary part of complex weights)."""
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise BadInputError(
                f"{path}: its weights must map names to tensors, but hold {str(key)[:60]!r}: "
                f"{type(value).__name__}; the file may be tampered with"
            )
        if value.is_complex() or value.dtype == torch.bool:
            raise BadInputError(
                f"{path}: weight {key[:60]!r} holds {value.dtype} values, not real numbers; "
                f"the file may be tampered with"
            )


def load_model(path: str | Path) -> tuple[nn.Module, ModelCard]:
    """The eval-mode model and its card from a checkpoint."""
    ckpt = load_checkpoint(path)
    try:
        model = build_model(ckpt.card)
    except BadInputError as e:
        raise BadInputError(f"{path}: its model card describes no model rtool can build ({e})") from None
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as e:
        raise BadInputError(
            f"{path}: weights do not match {ckpt.card.model} ({str(e).splitlines()[0][:160]}); "
            f"the file may be tampered with"
        ) from None
    return model.eval(), ckpt.card


def load_pretrained_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load a torchvision-style ``state_dict`` file (e.g. ``resnet18.pth``) into ``model``.

    Only the two layers that a class or channel count changes may differ in
    shape: the classifier head (``fc``) keeps its fresh init for another class
    count, and the stem (``conv1``) is adapted to the input channels (RGB
    weights summed into a grey stem, grey weights spread over RGB), so a grey
    image gives the same activations it gave the original. Any other difference
    means another architecture and is refused. Returns the names not copied as is.
    """
    state = safe_torch_load(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # rtool checkpoint or trainer file
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise BadInputError(f"{path} is not a state_dict of tensors (a name -> weights mapping)")
    check_weights(path, state)
    if all(str(k).startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unknown or missing:
        raise BadInputError(
            f"{path} does not fit this architecture: "
            f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unknown)} unexpected (e.g. {unknown[:2]})"
        )
    adapted = []
    for key, value in list(state.items()):
        target = own[key]
        if value.shape == target.shape:
            continue
        if key in ("fc.weight", "fc.bias"):
            state[key] = target  # another class count: a fresh head
        elif (
            key == "conv1.weight"
            and value.shape[0] == target.shape[0]
            and value.shape[2:] == target.shape[2:]
            and {value.shape[1], target.shape[1]} == {1, 3}
        ):
            grey_to_rgb = value.shape[1] == 1
            state[key] = value.repeat(1, 3, 1, 1) / 3 if grey_to_rgb else value.sum(dim=1, keepdim=True)
        else:
            raise BadInputError(
                f"{path} does not fit this architecture: {key} has shape {list(value.shape)}, "
                f"the model needs {list(target.shape)}"
            )
        adapted.append(key)
    model.load_state_dict(state, strict=True)
    return adapted
