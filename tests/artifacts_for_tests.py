"""Export files for runtime tests, written with torch/onnx directly (the formats and card keys rtool uses)."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from toolkit.card import EXTRA_FILE_NAME, MANIFEST_NAME, ONNX_METADATA_KEY
from toolkit.checkpoint import load_model
from toolkit.data import load_dataset
from toolkit.preprocess import prepare_batch


def build_export_dir(checkpoint: Path, out: Path) -> Path:
    model, card = load_model(checkpoint)
    x = torch.zeros(2, *card.input.shape)
    files = []
    shutil.copy(checkpoint, out / "model.pt")
    files.append(("model.pt", "checkpoint", "fp32", None, "eager"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x)
    torch.jit.save(traced, str(out / "model.ts"), _extra_files={EXTRA_FILE_NAME: card.to_json()})
    files.append(("model.ts", "torchscript", "fp32", None, "torchscript"))
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    torch.export.save(program, str(out / "model.pt2"), extra_files={EXTRA_FILE_NAME: card.to_json()})
    files.append(("model.pt2", "pt2", "fp32", None, "pt2"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x, str(out / "model.onnx"), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    fp32 = onnx.load(str(out / "model.onnx"))
    onnx.helper.set_model_props(fp32, {ONNX_METADATA_KEY: card.to_json()})
    onnx.save(fp32, str(out / "model.onnx"))
    files.append(("model.onnx", "onnx", "fp32", None, "onnxruntime"))
    from onnxconverter_common import float16

    onnx.save(float16.convert_float_to_float16(fp32, keep_io_types=True), str(out / "model.fp16.onnx"))
    files.append(("model.fp16.onnx", "onnx", "fp16", None, "onnxruntime"))
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    train = load_dataset("mnist5k").train.images[:64].numpy()

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": prepare_batch(train[i:i + 16], card.input)} for i in range(0, 64, 16)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    quantize_static(str(out / "model.onnx"), str(out / "model.int8-cpu.onnx"), Calibration(),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True)
    files.append(("model.int8-cpu.onnx", "onnx", "int8", "cpu", "onnxruntime"))
    entries = [{"file": f, "format": fmt, "precision": p, "target": t, "runtime": r,
                "sha256": hashlib.sha256((out / f).read_bytes()).hexdigest(), "size": (out / f).stat().st_size,
                "settings": {}, "validation": {}} for f, fmt, p, t, r in files]
    (out / MANIFEST_NAME).write_text(json.dumps({"card": card.to_dict(), "artifacts": entries}, indent=2))
    return out
