"""TorchScript and torch.export (pt2): the card travels in the file, the batch stays dynamic, logits match eager."""

from __future__ import annotations

import io
import json

import pytest
import torch

import exporters.torchscript
from toolkit.card import EXTRA_FILE_NAME
from toolkit.checkpoint import load_model
from toolkit.errors import CheckFailedError


def _eager(checkpoint, batch: torch.Tensor) -> torch.Tensor:
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        return model(batch)


def _artifact(result, fmt):
    return next(a for a in result.artifacts if a.format == fmt)


@pytest.mark.parametrize("batch_size", [1, 5])
def test_torchscript_reloads_with_card_and_matches_eager(pipeline_export, untrained_checkpoint, batch_size):
    artifact = _artifact(pipeline_export, "torchscript")
    assert artifact.path.name == "model.ts" and artifact.runtime == "torchscript"
    extra = {EXTRA_FILE_NAME: ""}
    loaded = torch.jit.load(str(artifact.path), _extra_files=extra)
    card = load_model(untrained_checkpoint)[1]
    assert json.loads(extra[EXTRA_FILE_NAME]) == card.to_dict()
    x = torch.randn(batch_size, *card.input.shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), _eager(untrained_checkpoint, x), rtol=1e-4, atol=1e-4)
    assert artifact.validation["max_abs_diff"] <= artifact.validation["tolerance"]


@pytest.mark.parametrize("batch_size", [1, 7])
def test_pt2_reloads_with_card_and_dynamic_batch(pipeline_export, untrained_checkpoint, batch_size):
    artifact = _artifact(pipeline_export, "pt2")
    assert artifact.path.name == "model.pt2" and artifact.runtime == "pt2"
    extra = {EXTRA_FILE_NAME: ""}
    program = torch.export.load(io.BytesIO(artifact.path.read_bytes()), extra_files=extra)
    card = load_model(untrained_checkpoint)[1]
    assert json.loads(extra[EXTRA_FILE_NAME]) == card.to_dict()
    x = torch.randn(batch_size, *card.input.shape)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), _eager(untrained_checkpoint, x), rtol=1e-4, atol=1e-4)


def test_torchscript_failed_check_leaves_no_file(untrained_checkpoint, tmp_path, monkeypatch):
    """A file that fails its comparison with eager never appears under its final name."""
    model, card = load_model(untrained_checkpoint)

    def broken(name, stats, expected):
        raise CheckFailedError(f"{name} disagrees")

    monkeypatch.setattr(exporters.torchscript, "require_fp32_match", broken)
    with pytest.raises(CheckFailedError):
        exporters.torchscript.export(
            model, card, tmp_path, precision="fp32", target=None, context=exporters.ExportContext()
        )
    assert list(tmp_path.iterdir()) == []
