"""Checkpoints: round trip, atomic writes, refusal of pickled code, clear errors on bad files."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from toolkit import checkpoint as ckpt_module
from toolkit.card import InputSpec
from toolkit.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    load_model,
    make_card,
    safe_torch_load,
    save_checkpoint,
)
from toolkit.errors import BadInputError, UnsafeFileError
from toolkit.models import create_model

SPEC = InputSpec(channels=1, height=28, width=28, mean=[0.1311], std=[0.3083])
CLASSES = [str(d) for d in range(10)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread beats two that wait on each other when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("resnet20", in_channels=1, num_classes=10)
    for m in model.modules():  # running statistics are part of what must survive
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    return model


def card(**overrides):
    return make_card(
        "resnet20",
        class_names=CLASSES,
        input_spec=SPEC,
        dataset="mnist5k",
        training={"epochs": 3},
        metrics={"test_accuracy": 0.5},
        **overrides,
    )


class WritesMarker:
    """A pickle payload: unpickling it would create a file (and could do anything else)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_round_trip_keeps_card_weights_and_train_state(tmp_path):
    model, c = small_model(), card()
    path = save_checkpoint(tmp_path / "run" / "best.pt", model, c, train_state={"epoch": 3, "lr": 0.1})
    loaded = load_checkpoint(path)
    assert loaded.card == c
    assert loaded.card.model_args == {"in_channels": 1, "num_classes": 10}
    assert loaded.train_state == {"epoch": 3, "lr": 0.1}
    assert list(loaded.state_dict) == list(model.state_dict())
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in model.state_dict().items())

    rebuilt, rebuilt_card = load_model(path)
    assert not rebuilt.training and rebuilt_card == c
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model.eval()(x), rtol=0, atol=0)


def test_wrapped_models_save_their_plain_keys(tmp_path):
    model = small_model()
    wrapper = torch.nn.Module()
    wrapper.module = model  # what DistributedDataParallel looks like
    path = save_checkpoint(tmp_path / "ddp.pt", wrapper, card())
    assert list(load_checkpoint(path).state_dict) == list(model.state_dict())


def test_failed_write_leaves_the_old_file_and_no_temporary_files(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "best.pt", small_model(0), card())
    before = path.read_bytes()

    def crash_midway(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_module.torch, "save", crash_midway)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, small_model(1), card())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
    monkeypatch.undo()
    assert load_checkpoint(path).card == card()


def test_pickled_code_in_a_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    hostile = tmp_path / "hostile.pt"
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "card": card().to_json(),
            "state_dict": small_model().state_dict(),
            "train_state": {"x": WritesMarker(marker)},
        },
        hostile,
    )
    with pytest.raises(UnsafeFileError, match=r"refused to load .*io\.open"):
        load_checkpoint(hostile)
    with pytest.raises(UnsafeFileError):
        load_model(hostile)
    assert not marker.exists()


def test_pickled_code_in_a_plain_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "marker"
    for protocol in (2, 4, 5):
        hostile = tmp_path / f"hostile{protocol}.pth"
        hostile.write_bytes(pickle.dumps({"fc.weight": WritesMarker(marker)}, protocol=protocol))
        with pytest.raises(UnsafeFileError, match="could run code"):
            safe_torch_load(hostile)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "empty", "random", "text"])
def test_damaged_files_are_bad_input_not_a_crash(tmp_path, damage):
    path = save_checkpoint(tmp_path / "best.pt", small_model(), card())
    data = path.read_bytes()
    path.write_bytes(
        {
            "truncate": data[: len(data) // 2],
            "empty": b"",
            "random": os.urandom(4096),
            "text": b"this is a text file\n",
        }[damage]
    )
    with pytest.raises(BadInputError, match="not a readable PyTorch checkpoint") as error:
        load_checkpoint(path)
    assert not isinstance(error.value, UnsafeFileError)  # damaged, not hostile
    assert "\n" not in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_a_plain_state_dict_is_not_an_rtool_checkpoint(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(small_model().state_dict(), path)
    with pytest.raises(BadInputError, match="not an rtool checkpoint.*--weights"):
        load_checkpoint(path)


def payload(**changes):
    base = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "card": card().to_json(),
        "state_dict": small_model().state_dict(),
        "train_state": {},
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"version": 99}, "newer rtool"),
        ({"version": "1"}, "no valid checkpoint version"),
        ({"card": {"model": "resnet20"}}, "no model card"),
        ({"card": "{not json"}, "not valid JSON"),
        ({"state_dict": None}, "no weights"),
        ({"state_dict": "resnet32"}, "weights do not match resnet20"),
    ],
)
def test_tampered_checkpoints_are_refused(tmp_path, changes, words):
    if changes.get("state_dict") == "resnet32":  # another architecture's weights under a resnet20 card
        changes = {"state_dict": create_model("resnet32", in_channels=1).state_dict()}
    path = tmp_path / "tampered.pt"
    torch.save(payload(**changes), path)
    with pytest.raises(BadInputError, match=words):
        load_model(path)


def test_newer_card_format_is_refused(tmp_path):
    newer = card().to_dict() | {"format_version": 99}
    path = tmp_path / "newer.pt"
    torch.save(payload(card=json.dumps(newer)), path)
    with pytest.raises(BadInputError, match="newer than this rtool understands"):
        load_checkpoint(path)
