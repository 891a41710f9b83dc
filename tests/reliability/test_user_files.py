"""rtool removes only files it wrote and can prove it (a name it writes + the sha256 it recorded); the rest stays.

Each test puts a user's file where an export used to remove it, then checks
the file survives with its bytes and the export says what it left.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import torch

from exporters.pipeline import export_model
from toolkit.checkpoint import load_model, save_checkpoint
from toolkit.models import create_model


def other_model_checkpoint(untrained_checkpoint, folder):
    torch.manual_seed(7)
    card = load_model(untrained_checkpoint)[1]
    return save_checkpoint(folder / "other.pt", create_model("resnet20", in_channels=1, num_classes=10), card)


def test_names_added_to_the_manifest_are_never_deleted(pipeline_export, untrained_checkpoint, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(pipeline_export.manifest_path.parent, folder)
    (folder / "data").mkdir()
    user_files = {"thesis.tex": b"\\documentclass{article}", "data/train.csv": b"a,b\n1,2\n"}
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, data in user_files.items():
        (folder / name).write_bytes(data)
        manifest["artifacts"].append({"file": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
    (folder / "model.onnx").write_bytes(b"replaced by the user")  # an rtool name, but not the bytes rtool wrote
    (folder / "manifest.json").write_text(json.dumps(manifest))

    result = export_model(other_model_checkpoint(untrained_checkpoint, tmp_path), "torchscript", None, folder)
    for name, data in user_files.items():
        assert (folder / name).read_bytes() == data, f"{name} was touched"
    assert (folder / "model.onnx").read_bytes() == b"replaced by the user"
    assert sorted(result.left) == ["data/train.csv", "model.onnx", "thesis.tex"]
    assert all(any(name in note for note in result.notes) for name in result.left)
    assert "model.pt2" in result.removed  # a file rtool wrote and can prove it: removed as before


def test_a_triton_re_export_keeps_a_version_folder_the_user_added(embed_export_dir, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(embed_export_dir, folder)
    model_dir = folder / "triton" / "digits"
    users_version = model_dir / "2" / "model.onnx"
    users_version.parent.mkdir()
    users_version.write_bytes(b"version 2, deployed by the user")
    manifest = json.loads((folder / "manifest.json").read_text())
    source = manifest["source"]["path"]

    export_model(source, "triton", "fp32", folder, triton_model_name="digits")
    assert users_version.read_bytes() == b"version 2, deployed by the user"
    assert (model_dir / "1" / "model.onnx").is_file() and (model_dir / "config.pbtxt").is_file()
