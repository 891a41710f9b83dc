"""Hostile model cards: wrong types, absurd or inconsistent sizes, line-breaking class names, JSON nested 100,000
deep or too big, and cards that do not fit their ONNX graph. Each is refused in one line (exit 2), whichever file
carries it (checkpoint, ONNX metadata, TorchScript or torch.export extra file), before anything is sized by it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Callable

import onnx
import pytest
import torch

from runtimes import open_runtime
from runtimes.cards import check_card_fits_input, read_card
from toolkit.card import EXTRA_FILE_NAME, MAX_INPUT_SIDE, ONNX_METADATA_KEY, InputSpec, ModelCard
from toolkit.checkpoint import make_card
from toolkit.errors import BadInputError
from toolkit.jsonsafe import MAX_JSON_BYTES, MAX_JSON_DEPTH, load_json_text

from conftest import MNIST_SPEC, assert_one_line_error
from reliability.payloads import _real_payload
from reliability.runner import run_many

DEEP = 100_000


def real_card() -> dict[str, Any]:
    return make_card(
        "resnet20", class_names=[str(d) for d in range(10)], input_spec=MNIST_SPEC, dataset="mnist5k"
    ).to_dict()


def changed(**fields: Any) -> Callable[[], str]:
    """The real card's JSON with fields replaced; ``a__b`` reaches into an object (``input__height``)."""

    def text() -> str:
        card = real_card()
        for dotted, value in fields.items():
            *parents, key = dotted.split("__")
            target = card
            for parent in parents:
                target = target[parent]
            target[key] = value
        return json.dumps(card)

    return text


def nested_in_training() -> str:
    """A valid card whose training settings hold a list nested 100,000 deep (json.loads recursed until it died)."""
    return json.dumps(real_card())[:-1] + ', "extra": ' + "[" * DEEP + "]" * DEEP + "}"


HOSTILE_CARDS: dict[str, tuple[Callable[[], str], str]] = {
    "num_classes 2e9": (changed(num_classes=2_000_000_000), "num_classes is 2000000000"),
    "num_classes text": (changed(num_classes="ten"), "num_classes is 'ten'"),
    "num_classes float": (changed(num_classes=10.0), "num_classes is 10.0"),
    "model_args.num_classes 2e9": (changed(model_args__num_classes=2_000_000_000), "model_args.num_classes"),
    "model_args.num_classes text": (changed(model_args__num_classes="10"), "model_args.num_classes"),
    "model_args.in_channels mismatch": (changed(model_args__in_channels=3), "model_args.in_channels"),
    "model_args a million blocks": (changed(model_args__n=1_000_000), "model_args may set only"),
    "model_args a list": (changed(model_args__shortcut=["A"]), "model_args may set only"),
    "fewer class_names than num_classes": (changed(class_names=["a", "b", "c"]), "class_names lists 3"),
    "200,000 classes": (changed(class_names=[f"c{k}" for k in range(200_000)]), "limit 100,000"),
    "duplicate class name": (changed(class_names=["0"] * 10), "appears twice"),
    "class name a number": (changed(class_names=list(range(10))), "class name must be non-empty text"),
    "empty class name": (changed(class_names=[""] + [str(d) for d in range(1, 10)]), "non-empty text"),
    "class name of 5000 characters": (
        changed(class_names=["x" * 5000] + [str(d) for d in range(1, 10)]),
        "5,000 characters",
    ),
    "input 40000x40000": (changed(input__height=40_000, input__width=40_000), f"at most {MAX_INPUT_SIDE}"),
    "input 2 channels": (changed(input__channels=2), "1 or 3 channels"),
    "input height 0": (changed(input__height=0), "positive size"),
    "input height text": (changed(input__height="28"), "whole numbers"),
    "input height 28.5": (changed(input__height=28.5), "whole numbers"),
    "input height true": (changed(input__height=True), "whole numbers"),
    "input not an object": (changed(input=[1, 28, 28]), "input must be an object"),
    "mean too long": (changed(input__mean=[0.1, 0.2]), "mean/std length"),
    "mean NaN": (changed(input__mean=[float("nan")]), "finite numbers"),
    "std Infinity": (changed(input__std=[float("inf")]), "finite numbers"),
    "mean text": (changed(input__mean=["0.1"]), "finite numbers"),
    "std zero": (changed(input__std=[0.0]), "std values must be positive"),
    "std negative": (changed(input__std=[-0.3]), "std values must be positive"),
    "output unknown": (changed(output="softmax"), "output must be one of"),
    "training a list": (changed(training=[1, 2]), "training must be an object"),
    "versions a string": (changed(versions="2.14"), "versions must be an object"),
    "format_version 1.5": (changed(format_version=1.5), "format_version"),
    "model a number": (changed(model=20), "model name must be non-empty text"),
    "model name with a newline": (changed(model="resnet20\nx"), "U+000A"),
    "dataset a list": (changed(dataset=["mnist"]), "dataset must be text"),
    "JSON nested 100k deep inside": (nested_in_training, f"more than {MAX_JSON_DEPTH} levels"),
    "JSON array nested 100k deep": (lambda: "[" * DEEP + "]" * DEEP, f"more than {MAX_JSON_DEPTH} levels"),
    "JSON object nested 100k deep": (lambda: '{"a":' * DEEP + "1" + "}" * DEEP, f"more than {MAX_JSON_DEPTH} levels"),
    "JSON of 20 MB": (lambda: json.dumps({**real_card(), "pad": "x" * (20 << 20)}), f"limit {MAX_JSON_BYTES:,}"),
    "integer of 5000 digits": (lambda: json.dumps(real_card())[:-1] + ', "n": ' + "9" * 5000 + "}", "digits"),
    "not UTF-8": (lambda: b"\xff\xfe\x00", "not valid JSON"),
    "not an object": (lambda: "[1, 2]", "not a JSON object"),
}
CONTROL_CHARACTERS = ["\n", "\r", "\x00", "\t", "\x1b", "\x85", "\u2028", "\u2029", "\ud800"]


@pytest.mark.parametrize("kind", list(HOSTILE_CARDS))
def test_every_hostile_card_is_one_bad_input_line(kind):
    make, words = HOSTILE_CARDS[kind]
    with pytest.raises(BadInputError) as refused:
        ModelCard.from_json(make())
    message = str(refused.value)
    assert words in message and "\n" not in message and len(message) < 400, message
    assert message.endswith("re-export the model with rtool"), message


@pytest.mark.parametrize("character", CONTROL_CHARACTERS, ids=[f"U+{ord(c):04X}" for c in CONTROL_CHARACTERS])
def test_class_names_that_break_lines_are_refused_when_built_and_when_read(character):
    names = [str(d) for d in range(9)] + [f"nine{character}fake"]
    with pytest.raises(BadInputError, match=f"U\\+{ord(character):04X}") as built:
        make_card("resnet20", class_names=names, input_spec=MNIST_SPEC)
    text = json.dumps({**real_card(), "class_names": names})
    with pytest.raises(BadInputError, match=f"U\\+{ord(character):04X}") as read:
        ModelCard.from_json(text)
    assert "\n" not in str(built.value) + str(read.value)


def test_the_limits_refuse_nothing_rtool_writes():
    """Controls: a real card, 100,000 classes, the largest sides, every real file's nesting, unicode names."""
    assert ModelCard.from_json(json.dumps(real_card())).num_classes == 10
    names = [f"класс {k} 猫 é" for k in range(100_000)]
    big = make_card(
        "resnet18", class_names=names, input_spec=InputSpec(3, MAX_INPUT_SIDE, MAX_INPUT_SIDE, [0.5] * 3, [0.25] * 3)
    )
    assert ModelCard.from_json(big.to_json()) == big
    assert load_json_text("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "x") is not None
    assert load_json_text('["[[[[", {"a": "]]]]{{{{"}]', "x", max_depth=2) == ["[[[[", {"a": "]]]]{{{{"}]


# ---------------------------------------------------------------- the files that carry a card


def checkpoint_carrying(text: str, path: Path) -> Path:
    payload = _real_payload()
    payload["card"] = text
    torch.save(payload, path)
    return path


def onnx_carrying(text: str, real: Path, path: Path) -> Path:
    model = onnx.load(str(real), load_external_data=False)
    entry = next(p for p in model.metadata_props if p.key == ONNX_METADATA_KEY)
    entry.value = text
    path.write_bytes(model.SerializeToString())
    return path


def zip_carrying(text: str, real: Path, path: Path) -> Path:
    """A copy of a TorchScript or torch.export archive whose card extra file is ``text`` (every record as it was,
    compressed or not)."""
    with zipfile.ZipFile(real) as source, zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            data = text.encode() if info.filename.endswith(f"/{EXTRA_FILE_NAME}") else source.read(info)
            out.writestr(info, data)
    return path


@pytest.fixture
def carriers(export_copy, tmp_path) -> Callable[[str, str], dict[str, Path]]:
    """Files of every kind that carries a card, in a folder without a manifest, holding ``text`` as their card."""

    def make(tag: str, text: str) -> dict[str, Path]:
        folder = tmp_path / tag
        folder.mkdir()
        return {
            "checkpoint": checkpoint_carrying(text, folder / "model.pt"),
            "onnx": onnx_carrying(text, export_copy / "model.onnx", folder / "model.onnx"),
            "torchscript": zip_carrying(text, export_copy / "model.ts", folder / "model.ts"),
            "pt2": zip_carrying(text, export_copy / "model.pt2", folder / "model.pt2"),
        }

    return make


RUNTIME_OF = {"checkpoint": "eager", "onnx": "onnxruntime", "torchscript": "torchscript", "pt2": "pt2"}
CARRIED = (
    "JSON nested 100k deep inside",
    "integer of 5000 digits",
    "num_classes 2e9",
    "model_args.num_classes 2e9",
    "input 40000x40000",
)


@pytest.mark.parametrize("kind", CARRIED)
def test_every_file_kind_refuses_a_hostile_card_it_carries(carriers, kind):
    make, words = HOSTILE_CARDS[kind]
    for carrier, path in carriers(kind.replace(" ", "-"), make()).items():
        for opened_by, opener in (
            ("read_card", read_card),
            ("runtime", lambda p, carrier=carrier: open_runtime(RUNTIME_OF[carrier], p, "cpu")),
        ):
            with pytest.raises(BadInputError) as refused:
                opener(path)
            assert words in str(refused.value) and "\n" not in str(refused.value), (carrier, opened_by)


def test_cli_refuses_hostile_cards_in_one_line(carriers, digit_png, tmp_path):
    deep = carriers("deep", HOSTILE_CARDS["JSON nested 100k deep inside"][0]())
    huge = carriers("huge", HOSTILE_CARDS["input 40000x40000"][0]())
    commands = {f"infer {kind} deep": ("infer", path, digit_png) for kind, path in deep.items()}
    commands["infer checkpoint num_classes 2e9"] = (
        "infer",
        checkpoint_carrying(HOSTILE_CARDS["model_args.num_classes 2e9"][0](), tmp_path / "n.pt"),
        digit_png,
    )
    commands["infer onnx 40000x40000"] = ("infer", huge["onnx"], digit_png)
    commands["export 40000x40000"] = ("export", huge["checkpoint"], "--format", "onnx", "--out", tmp_path / "never")
    newline = checkpoint_carrying(changed(class_names=[str(d) for d in range(9)] + ["9\nfake"])(), tmp_path / "nl.pt")
    commands["export triton newline class"] = ("export", newline, "--format", "triton", "--out", tmp_path / "labels")
    for name, result in run_many(commands).items():
        assert_one_line_error(result, 2, "U+000A" if "newline" in name else "model card")
    assert not (tmp_path / "never").exists() and not (tmp_path / "labels").exists()


# ---------------------------------------------------------------- the card against the ONNX graph


def test_a_card_that_does_not_fit_the_graph_is_refused_before_any_image_is_sized(export_copy, tmp_path, digit_png):
    """The graph takes 1x28x28; a card saying 1x8000x8000 (within the size limit) or 3x28x28 does not belong."""
    wrong = {
        "8000x8000": changed(input__height=8000, input__width=8000)(),
        "3 channels": changed(
            input__channels=3, input__mean=[0.1] * 3, input__std=[0.3] * 3, model_args__in_channels=3
        )(),
        "28x29": changed(input__width=29)(),
    }
    files = {
        name: onnx_carrying(text, export_copy / "model.onnx", tmp_path / f"{name}.onnx") for name, text in wrong.items()
    }
    for path in files.values():
        for opener in (read_card, lambda p: open_runtime("onnxruntime", p, "cpu")):
            with pytest.raises(BadInputError, match="does not belong to this model") as refused:
                opener(path)
            assert "\n" not in str(refused.value)
    result = run_many({"infer": ("infer", files["8000x8000"], digit_png)})["infer"]
    assert_one_line_error(result, 2, "the graph takes NCHW input ?x1x28x28")


def test_the_input_check_reads_both_layouts_and_free_sizes():
    card = ModelCard.from_json(json.dumps(real_card()))
    where = Path("m.onnx")
    for dims, raw in ((["N", 1, 28, 28], False), ([None, 28, 28, 1], True), (["N", "C", "H", "W"], False), ([], False)):
        check_card_fits_input(card, dims, raw, where)  # fits, or says nothing to compare
    for dims, raw in (
        ([None, 1, 28, 28], True),
        (["N", 28, 28, 1], False),
        ([1, 28, 28], False),
        ([None, 1, 28, 27], False),
    ):
        with pytest.raises(BadInputError, match="does not belong"):
            check_card_fits_input(card, dims, raw, where)


def test_every_onnx_file_rtool_writes_fits_its_card(export_copy, inprocess_export_dir):
    """Controls: fp32, fp16 and both int8 files, the raw-pixel (uint8 NHWC) file and Triton's copy all pass."""
    files = sorted(export_copy.glob("*.onnx")) + sorted(inprocess_export_dir.rglob("*.onnx"))
    assert any(f.name == "model.raw.onnx" for f in files) and len(files) >= 5, files
    for path in files:
        card = read_card(path)
        with open_runtime("onnxruntime", path, "cpu") as runtime:
            assert runtime.card == card, path
