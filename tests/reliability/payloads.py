"""Hostile and broken files for the reliability tests, built the way an attacker would build them.

Every code payload here, if it ever ran, would create its ``marker`` file: a
test proves a file was refused by showing both the error and the missing marker.
Building a payload never runs it (pickling only records what to call).
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from toolkit.card import InputSpec
from toolkit.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, make_card
from toolkit.models import create_model


class SystemPayload:
    """Unpickling calls os.system('touch MARKER')."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class ExecPayload:
    """Unpickling calls builtins.exec(...) that creates MARKER."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


SPEC = InputSpec(channels=1, height=28, width=28, mean=[0.1311], std=[0.3083])


def _real_payload() -> dict:
    """What a genuine rtool checkpoint holds: format, version, card, weights, training state."""
    model = create_model("resnet20", in_channels=1, num_classes=10)
    card = make_card("resnet20", class_names=[str(d) for d in range(10)], input_spec=SPEC, dataset="mnist5k")
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "card": card.to_json(),
        "state_dict": model.state_dict(),
        "train_state": {},
    }


def _torch_save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def hostile_checkpoints(folder: Path, marker: Path) -> dict[str, Path]:
    """Five hostile PyTorch files: zip (torch.save) and legacy raw pickles, payload on top or hidden deep inside."""
    folder.mkdir(parents=True, exist_ok=True)
    disguised = _real_payload()
    disguised["train_state"] = {"optimizer": ExecPayload(marker), "epoch": 3}
    state = create_model("resnet20", in_channels=1, num_classes=10).state_dict()
    state["fc.bias"] = SystemPayload(marker)
    files = {
        "zip-toplevel": _torch_save(SystemPayload(marker), folder / "toplevel.pt"),
        "zip-disguised-checkpoint": _torch_save(disguised, folder / "disguised.pt"),
        "zip-disguised-state-dict": _torch_save(state, folder / "weights.pth"),
    }
    for name, payload, protocol in (
        ("raw-pickle-p0", ExecPayload(marker), 0),
        ("raw-pickle-p5", SystemPayload(marker), 5),
    ):
        path = folder / f"{name}.pth"
        path.write_bytes(pickle.dumps({"state_dict": payload}, protocol=protocol))
        files[name] = path
    return files


def hostile_pt2(real_pt2: Path, folder: Path, marker: Path) -> dict[str, Path]:
    """torch.export archives whose pickled parts run code: the sample inputs replaced, an opaque object added."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(real_pt2) as src:
        members = [(info, src.read(info.filename)) for info in src.infolist()]
    evil = io.BytesIO()
    torch.save(((SystemPayload(marker),), {}), evil)
    files = {}
    swapped = folder / "sample-inputs.pt2"
    with zipfile.ZipFile(swapped, "w", zipfile.ZIP_STORED) as out:
        for info, data in members:
            out.writestr(info, evil.getvalue() if info.filename.endswith("sample_inputs/model.pt") else data)
    files["pt2-sample-inputs"] = swapped
    opaque = folder / "opaque-object.pt2"
    root = members[0][0].filename.split("/", 1)[0]
    with zipfile.ZipFile(opaque, "w", zipfile.ZIP_STORED) as out:
        for info, data in members:
            out.writestr(info, data)
        out.writestr(f"{root}/data/constants/opaque_obj_0", pickle.dumps(ExecPayload(marker)))
    files["pt2-opaque-object"] = opaque
    return files


# ---------------------------------------------------------------- ONNX


def _graph_model(nodes, initializers, x_shape=(4,), y_shape=(4,)) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], initializer=initializers), opset_imports=[helper.make_opsetid("", 18)]
    )
    model.ir_version = 9
    return model


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())  # as is: onnx.save would try to resolve external data
    return path


def move_to_external(model_path: Path, out: Path, location: str) -> Path:
    """A copy of a real rtool ONNX file whose largest weight takes its data from ``location`` (not read here)."""
    model = onnx.load(str(model_path))
    weight = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    length = len(weight.raw_data)
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    return save_model(model, out)


def external_weight_bytes(model_path: Path) -> bytes:
    model = onnx.load(str(model_path))
    return max(model.graph.initializer, key=lambda t: len(t.raw_data)).raw_data


def absurd_onnx_models(folder: Path) -> dict[str, Path]:
    """Small ONNX files that claim absurd sizes: each would make a runtime allocate terabytes."""
    huge = TensorProto()
    huge.name, huge.data_type = "W", TensorProto.FLOAT
    huge.dims.extend([10**12])
    huge.raw_data = b"\0" * 16
    attr = TensorProto()
    attr.name, attr.data_type = "c", TensorProto.FLOAT
    attr.dims.extend([10**6, 10**6])
    shape = helper.make_tensor("s", TensorProto.INT64, [1], [2**40])
    one = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    far = TensorProto()
    far.name, far.data_type, far.data_location = "W", TensorProto.FLOAT, TensorProto.EXTERNAL
    far.dims.extend([4])
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", str(4 * 10**12))):
        entry = far.external_data.add()
        entry.key, entry.value = key, value
    (folder / "beyond").mkdir(parents=True, exist_ok=True)
    (folder / "beyond" / "w.bin").write_bytes(b"\0" * 16)
    models = {
        "initializer-1e12": _graph_model([helper.make_node("Identity", ["W"], ["y"])], [huge], y_shape=[10**12]),
        "constant-1e12": _graph_model(
            [helper.make_node("Constant", [], ["c"], value=attr), helper.make_node("Add", ["x", "c"], ["y"])], []
        ),
        "input-dim-2^40": _graph_model(
            [helper.make_node("Identity", ["x"], ["y"])], [], (2**40, 1, 28, 28), (2**40, 1, 28, 28)
        ),
        "constant-of-shape-2^40": _graph_model(
            [
                helper.make_node("ConstantOfShape", ["s"], ["big"], value=one),
                helper.make_node("ReduceSum", ["big"], ["r"], keepdims=0),
                helper.make_node("Add", ["x", "r"], ["y"]),
            ],
            [shape],
        ),
        "external-length-beyond-file": _graph_model([helper.make_node("Add", ["x", "W"], ["y"])], [far]),
    }
    paths = {}
    for name, model in models.items():
        target = folder / ("beyond" if name.startswith("external") else name) / "m.onnx"
        paths[name] = save_model(model, target)
    return paths


def truncated_copies(path: Path, folder: Path, fractions=(0.0005, 0.1, 0.5, 0.999)) -> dict[str, Path]:
    """The file cut short at several points (a crashed copy, a partial download)."""
    data = path.read_bytes()
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for fraction in fractions:
        cut = folder / f"cut{fraction:g}{path.suffix}"
        cut.write_bytes(data[: max(1, int(len(data) * fraction))])
        out[f"truncated-{fraction:g}"] = cut
    return out


def nudge_onnx_weight(path: Path) -> None:
    """Change one weight of an ONNX file by one float32 step: still loadable, no longer the exported bytes."""
    data = bytearray(path.read_bytes())
    weight = external_weight_bytes(path)
    start = bytes(data).find(weight)
    assert start > 0
    value = np.frombuffer(bytes(data[start : start + 4]), dtype=np.float32)
    data[start : start + 4] = np.nextafter(value, np.float32(np.inf)).astype(np.float32).tobytes()
    path.write_bytes(bytes(data))


ESCAPES = ("dot-dot", "absolute", "symlink")


def escaping_onnx_models(real_onnx: Path, folder: Path) -> dict[str, tuple[Path, Path]]:
    """Copies of a real ONNX file in ``folder/model/`` whose largest weight reads its bytes from outside that folder.

    For each way out (``../``, an absolute path, a symbolic link inside the folder
    that leads out) two targets in ``folder/outside/``: ``weights.bin``, a regular
    file holding the true weight bytes (so a loader that follows the reference
    gets a working model), and ``weights.fifo``, a named pipe with no writer:
    opening it for reading blocks forever, so a loader that so much as opens it
    hangs. Returns ``{"escape/target": (model file, target file)}``.
    """
    model_dir, outside = folder / "model", folder / "outside"
    model_dir.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "weights.bin").write_bytes(external_weight_bytes(real_onnx))
    os.mkfifo(outside / "weights.fifo")
    files = {}
    for target in ("weights.bin", "weights.fifo"):
        kind = target.split(".")[1]
        link = model_dir / f"link-{kind}.bin"
        os.symlink((outside / target).resolve(), link)
        locations = {
            "dot-dot": f"../outside/{target}",
            "absolute": str((outside / target).resolve()),
            "symlink": link.name,
        }
        for escape, location in locations.items():
            files[f"{escape}/{kind}"] = (
                move_to_external(real_onnx, model_dir / f"{escape}-{kind}.onnx", location),
                outside / target,
            )
    return files


def computed_shape_model(real_onnx: Path, path: Path) -> Path:
    """A model with a real card whose ConstantOfShape asks, at run time only, for 2^40 floats (4 TB).

    The shape is computed (2^20 * 2^20), so no static check can see it: the
    runtime must fail the allocation and say so, not hang or crash.
    """
    s = helper.make_tensor("s", TensorProto.INT64, [1], [2**20])
    one = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    model = _graph_model(
        [
            helper.make_node("Mul", ["s", "s"], ["s2"]),
            helper.make_node("ConstantOfShape", ["s2"], ["big"], value=one),
            helper.make_node("ReduceSum", ["big"], ["r"], keepdims=0),
            helper.make_node("Add", ["x", "r"], ["y"]),
        ],
        [s],
        ("N", 1, 28, 28),
        ("N", 1, 28, 28),
    )
    model.metadata_props.extend(onnx.load(str(real_onnx), load_external_data=False).metadata_props)
    return save_model(model, path)
