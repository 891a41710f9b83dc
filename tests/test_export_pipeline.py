"""The export run: plan, manifest (sha256, sizes, card), self-contained folder, all-or-nothing writing."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

import exporters.pt2
from exporters.pipeline import check_options, default_input_spec, export_model, plan
from toolkit.card import MANIFEST_NAME
from toolkit.checkpoint import load_checkpoint, load_model, save_checkpoint
from toolkit.errors import BadInputError, CheckFailedError
from toolkit.manifest import read_manifest, verify_manifest
from toolkit.models import create_model

from conftest import edge_files

EDGE_ENTRIES, EDGE_COMPANIONS = edge_files()
CPU_FILES = {
    "model.pt",
    "model.ts",
    "model.pt2",
    "model.onnx",
    "model.fp16.onnx",
    "model.int8-cpu.onnx",
    "model.int8-trt.onnx",
    "web/model.onnx",
    "web/model.int8.onnx",
    *(f"web/{name}" for name in ("index.html", "app.js", "classifier.js", "style.css", "card.json")),
    *(f"web/ort/{name}" for name in ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")),
} | EDGE_ENTRIES


def test_manifest_lists_every_file_with_true_sha256_and_size(pipeline_export, untrained_checkpoint):
    folder = pipeline_export.manifest_path.parent
    manifest = read_manifest(folder)
    assert {e["file"] for e in manifest["artifacts"]} == CPU_FILES
    for entry in manifest["artifacts"]:
        data = (folder / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["size"] == len(data)
        if entry["runtime"] != "static":  # the web page's own files are not models
            assert isinstance(entry["validation"]["max_abs_diff"], float)
        assert entry["runtime"] in {
            "eager",
            "torchscript",
            "pt2",
            "onnxruntime",
            "browser",
            "static",
            "openvino",
            "executorch",
        }
        for companion in entry.get("companions", []):  # an OpenVINO IR's .bin, recorded with its .xml
            data = (folder / companion["file"]).read_bytes()
            assert companion["sha256"] == hashlib.sha256(data).hexdigest() and companion["size"] == len(data)
    assert {c["file"] for e in manifest["artifacts"] for c in e.get("companions", [])} == EDGE_COMPANIONS
    assert verify_manifest(folder) == []
    assert manifest["manifest_version"] == 1 and manifest["created"] and manifest["rtool_version"]
    source = manifest["source"]
    assert source["kind"] == "checkpoint"
    assert source["sha256"] == hashlib.sha256(untrained_checkpoint.read_bytes()).hexdigest()
    assert manifest["card"] == load_model(untrained_checkpoint)[1].to_dict()
    assert {"torch", "onnx", "numpy"} <= set(manifest["versions"])
    onnx_entry = next(e for e in manifest["artifacts"] if e["file"] == "model.onnx")
    assert onnx_entry["settings"]["opset"] == 18 and onnx_entry["target"] is None
    targets = {
        e["file"]: e["target"] for e in manifest["artifacts"] if e["format"] == "onnx" and e["precision"] == "int8"
    }
    assert targets == {"model.int8-cpu.onnx": "cpu", "model.int8-trt.onnx": "tensorrt"}
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "no staging or temporary files left"


def test_export_folder_holds_the_eager_reference(pipeline_export, untrained_checkpoint):
    copy = load_checkpoint(pipeline_export.manifest_path.parent / "model.pt")
    source = load_checkpoint(untrained_checkpoint)
    assert copy.card.to_dict() == source.card.to_dict() and copy.train_state == {}
    for key, value in source.state_dict.items():
        assert torch.equal(copy.state_dict[key], value)


def test_verify_manifest_finds_a_changed_file(pipeline_export, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(pipeline_export.manifest_path.parent, folder)
    data = bytearray((folder / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(data))
    (folder / "model.ts").unlink()
    for companion in EDGE_COMPANIONS:  # an IR's weights are checked like any listed file
        weights = bytearray((folder / companion).read_bytes())
        weights[len(weights) // 2] ^= 0xFF
        (folder / companion).write_bytes(bytes(weights))
    problems = verify_manifest(folder)
    assert any("model.onnx" in p and "sha256" in p for p in problems)
    assert any("model.ts" in p and "missing" in p for p in problems)
    assert all(any(name in p and "sha256" in p for p in problems) for name in EDGE_COMPANIONS)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["artifacts"][0]["file"] = "../outside.onnx"
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert any("outside" in p for p in verify_manifest(folder))


def test_re_export_keeps_files_of_the_same_model_and_removes_another_models(
    pipeline_export, untrained_checkpoint, tmp_path
):
    folder = tmp_path / "export"
    shutil.copytree(pipeline_export.manifest_path.parent, folder)
    again = export_model(untrained_checkpoint, "torchscript", None, folder)
    assert {e["file"] for e in read_manifest(folder)["artifacts"]} == CPU_FILES and again.removed == []
    assert verify_manifest(folder) == []

    torch.manual_seed(1)
    other = create_model("resnet20", in_channels=1, num_classes=10)
    card = load_model(untrained_checkpoint)[1]
    other_ckpt = save_checkpoint(tmp_path / "other.pt", other, card)
    result = export_model(other_ckpt, "torchscript", None, folder)
    assert set(result.removed) == (CPU_FILES | EDGE_COMPANIONS) - {"model.pt", "model.ts"}  # .bin with its .xml
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.pt", "model.ts"]
    assert verify_manifest(folder) == []


def test_failed_export_writes_nothing(untrained_checkpoint, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise CheckFailedError("model.pt2 disagrees with the eager model")

    monkeypatch.setattr(exporters.pt2, "exported_program", broken)
    out = tmp_path / "out"
    with pytest.raises(CheckFailedError):
        export_model(untrained_checkpoint, "torchscript,pt2", None, out)
    assert list(out.iterdir()) == [], "torchscript succeeded but must not appear: the run failed"


def test_model_name_source_gets_a_generic_card(tmp_path):
    weights = tmp_path / "resnet20.pth"
    torch.save(create_model("resnet20", in_channels=3, num_classes=10).state_dict(), weights)
    result = export_model(
        "resnet20", "torchscript", None, tmp_path / "out", input_shape=(3, 32, 32), num_classes=4, weights=weights
    )
    manifest = read_manifest(tmp_path / "out")
    card = manifest["card"]
    assert card["class_names"] == ["0", "1", "2", "3"] and card["dataset"] is None
    assert card["input"]["mean"] == [0.485, 0.456, 0.406] and card["input"]["std"] == [0.229, 0.224, 0.225]
    assert sorted(card["training"]["reinitialised"]) == ["fc.bias", "fc.weight"]
    assert manifest["source"]["kind"] == "model" and manifest["source"]["sha256"]
    assert {a.path.name for a in result.artifacts} == {"model.pt", "model.ts"}
    grey = default_input_spec(1, 28, 28)
    assert (grey.mean, grey.std) == ([0.5], [0.5])


def test_plan_for_all_and_for_single_formats():
    jobs, skipped = plan("all")
    described = {j.describe() for j in jobs} | {f"{s['format']} {s['precision']}" for s in skipped}
    assert {
        "torchscript fp32",
        "pt2 fp32",
        "onnx fp32",
        "onnx fp16",
        "onnx int8 (target cpu)",
        "onnx int8 (target tensorrt)",
        "tensorrt fp16",
        "tensorrt int8",
        "web fp32",
        "web int8",
        "openvino fp32",
        "openvino fp16",
        "openvino bf16",
        "openvino int8",
        "executorch fp32",
        "executorch int8",
        "ort fp32",
        "ort int8",
    } == described  # each either planned or skipped with its reason
    assert [j.describe() for j in plan("onnx", "int8")[0]] == ["onnx int8 (target cpu)"]
    assert [j.describe() for j in plan("onnx", "fp32,int8", "tensorrt")[0]] == [
        "onnx fp32",
        "onnx int8 (target tensorrt)",
    ]
    assert [j.describe() for j in plan("torchscript,onnx", "fp16")[0]] == ["onnx fp16"]


@pytest.mark.parametrize(
    "args, message",
    [
        (("onnx", "fp64"), "unknown precision"),
        (("bogus", None), "unknown format"),
        (("torchscript", "int8"), "torchscript exports fp32"),
        (("onnx", "fp32", "gpu"), "unknown target"),
        (("onnx", "fp32", "cpu"), "--target"),
    ],
)
def test_plan_refuses_bad_requests(args, message):
    with pytest.raises(BadInputError, match=message):
        plan(*args)


@pytest.mark.parametrize(
    "opts, message",
    [
        ({"opset": 12}, "opset 12"),
        ({"calib_size": 0}, "calib-size"),
        ({"calib_method": "mse"}, "calibration method"),
    ],
)
def test_bad_options_are_refused_before_any_work(opts, message):
    jobs, _ = plan("onnx", "int8")
    with pytest.raises(BadInputError, match=message):
        check_options(jobs, opts)


def test_checkpoint_options_do_not_mix_with_model_options(untrained_checkpoint, tmp_path):
    with pytest.raises(BadInputError, match="model name"):
        export_model(untrained_checkpoint, "torchscript", None, tmp_path, num_classes=3)
    with pytest.raises(BadInputError, match="neither a checkpoint file nor a model name"):
        export_model("no-such-model", "torchscript", None, tmp_path)
