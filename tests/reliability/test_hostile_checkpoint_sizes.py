"""Checkpoints that lie about sizes: a zip bomb, records sharing their bytes or claiming more than the file holds,
and negative or absurd element counts. Each is refused in one line (exit 2) before anything big is allocated.

The files are laid out as torch.save lays one out (the same member names, the same pickle opcodes: a
``_rebuild_tensor_v2`` call on a persistent ``('storage', ...)`` id), so torch itself reads them; only the
sizes lie. Controls show that torch, asked directly, really inflates the bombs.
"""

from __future__ import annotations

import collections
import copy
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from toolkit.checkpoint import load_checkpoint, safe_torch_load
from toolkit.errors import BadInputError, RtoolError

from conftest import REPO, assert_one_line_error, run_rtool
from reliability.payloads import _real_payload

BOMB_BYTES = 200 * 1024 * 1024  # inflated size of the zip bomb's one record: 200 MB of zeros
SHARED_RECORD_BYTES = 2 * 1024 * 1024  # one stored record that 100 directory entries point at
SHARED_ENTRIES = 100


class Storage:
    """Pickled as torch.save pickles a storage: a persistent id naming its record and its element count."""

    def __init__(self, key: str, numel: object) -> None:
        self.key, self.numel = key, numel


class TensorOf:
    """Pickled as torch.save pickles a tensor: ``torch._utils._rebuild_tensor_v2(storage, offset, size, ...)``."""

    def __init__(self, storage: Storage, size: tuple, offset: object = 0, stride: tuple | None = None) -> None:
        self.args = (storage, offset, size, stride or (1,) * len(size), False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj: object):
        if isinstance(obj, Storage):
            return "storage", torch.FloatStorage, obj.key, "cpu", obj.numel
        return None


def checkpoint_with(weights: dict[str, TensorOf]) -> bytes:
    """The data.pkl of a real rtool checkpoint (format, version, card) whose state_dict is ``weights``."""
    payload = _real_payload()
    payload["state_dict"] = weights
    buffer = io.BytesIO()
    TorchPickler(buffer, protocol=2).dump(payload)
    return buffer.getvalue()


def torch_save_shaped(
    path: Path,
    data_pkl: bytes,
    records: dict[str, bytes | int],
    *,
    deflated: tuple[str, ...] = (),
    aliases_of_first: int = 0,
) -> Path:
    """A zip with torch.save's members; ``records`` maps a storage key to its bytes, or to a count of zero bytes
    streamed in 1 MB chunks (so a 200 MB record never sits in this process's memory). ``aliases_of_first`` more
    directory entries (keys 1, 2, ...) point at the first record's bytes instead of their own."""
    root = path.stem
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{root}/data.pkl", data_pkl)
        for name, text in ((".format_version", "1"), (".storage_alignment", "64"), ("byteorder", "little")):
            archive.writestr(f"{root}/{name}", text)
        for key, content in records.items():
            info = zipfile.ZipInfo(f"{root}/data/{key}")
            info.compress_type = zipfile.ZIP_DEFLATED if key in deflated else zipfile.ZIP_STORED
            with archive.open(info, "w") as out:
                if isinstance(content, bytes):
                    out.write(content)
                else:
                    chunk = bytes(1 << 20)
                    for _ in range(content // len(chunk)):
                        out.write(chunk)
        first = archive.filelist[-1]
        for key in range(1, aliases_of_first + 1):  # the central directory is written from this list on close
            alias = copy.copy(first)
            alias.filename = alias.orig_filename = f"{root}/data/{key}"
            archive.filelist.append(alias)
        archive.writestr(f"{root}/version", "3\n")
        archive.writestr(f"{root}/.data/serialization_id", "0" * 40)
    return path


def zip_bomb(folder: Path) -> Path:
    """A real checkpoint plus one 200 MB float record stored deflated: a file of about 200 kB."""
    numel = BOMB_BYTES // 4
    return torch_save_shaped(
        folder / "bomb.pt",
        checkpoint_with({"extra": TensorOf(Storage("0", numel), (numel,))}),
        {"0": BOMB_BYTES},
        deflated=("0",),
    )


def shared_bytes_bomb(folder: Path) -> Path:
    """100 directory entries that all point at one stored 2 MB record: a 2 MB file that reads as 200 MB."""
    numel = SHARED_RECORD_BYTES // 4
    weights = {f"w{k}": TensorOf(Storage(str(k), numel), (numel,)) for k in range(SHARED_ENTRIES)}
    return torch_save_shaped(
        folder / "shared.pt", checkpoint_with(weights), {"0": SHARED_RECORD_BYTES}, aliases_of_first=SHARED_ENTRIES - 1
    )


def forged_size(folder: Path) -> Path:
    """A stored 16-byte record whose zip headers claim 3 GB (and a pickle asking for exactly that)."""
    claimed = 3_000_000_000
    path = folder / "forged.pt"
    torch_save_shaped(
        path, checkpoint_with({"extra": TensorOf(Storage("0", claimed // 4), (claimed // 4,))}), {"0": bytes(16)}
    )
    data = bytearray(path.read_bytes())
    name = f"{path.stem}/data/0".encode()
    local = zipfile.ZipFile(path).getinfo(name.decode()).header_offset
    struct.pack_into("<II", data, local + 18, claimed, claimed)  # local header: compressed, uncompressed size
    central = data.find(b"PK\x01\x02")
    while data[central + 46 : central + 46 + len(name)] != name:
        central = data.find(b"PK\x01\x02", central + 4)
    struct.pack_into("<II", data, central + 20, claimed, claimed)  # central directory: the same two sizes
    path.write_bytes(bytes(data))
    return path


MEASURE = """
import json, re, sys, time
import torch
from toolkit.checkpoint import safe_torch_load
from toolkit.errors import RtoolError

def peak_mb():
    status = open("/proc/self/status").read()
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) / 1024

before = peak_mb()
start = time.perf_counter()
try:
    (torch.load if sys.argv[1] == "torch" else safe_torch_load)(sys.argv[2], **({"weights_only": True}
                                                                            if sys.argv[1] == "torch" else {}))
    outcome = "loaded"
except RtoolError as e:
    outcome = "refused: " + str(e)
print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - start, "peak_before_mb": before,
                  "peak_growth_mb": peak_mb() - before}))
"""


def measure_load(loader: str, path: Path) -> dict:
    """Load ``path`` in a fresh process with ``torch`` (weights_only) or rtool's loader: outcome, time, and how far
    the process's peak resident memory grew during the load.

    The peak is the kernel's VmHWM of the process's own memory: resource.getrusage's ru_maxrss would do, but
    Linux carries it over from the parent across fork and exec, so a child of a large pytest process would
    start with the parent's peak and hide anything smaller.
    """
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, loader, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "make, words, inflated",
    [
        (zip_bomb, "compressed (deflate)", BOMB_BYTES),
        (shared_bytes_bomb, "claim", SHARED_RECORD_BYTES * SHARED_ENTRIES),
    ],
)
def test_bombs_are_refused_before_anything_big_is_allocated(tmp_path, make, words, inflated):
    path = make(tmp_path)
    assert path.stat().st_size < inflated / 50  # what makes it a bomb: small on disk
    control = measure_load("torch", path)
    assert control["outcome"] == "loaded" and control["peak_growth_mb"] > 0.9 * inflated / 2**20, control
    refused = measure_load("rtool", path)
    assert refused["outcome"].startswith("refused") and words in refused["outcome"], refused
    assert "\n" not in refused["outcome"]
    assert refused["peak_growth_mb"] < 20 and refused["seconds"] < 2, refused
    print(
        f"{path.name}: {path.stat().st_size:,} bytes; torch.load peak +{control['peak_growth_mb']:.0f} MB in "
        f"{control['seconds']:.2f} s; rtool refused in {refused['seconds']:.3f} s, peak +"
        f"{refused['peak_growth_mb']:.1f} MB"
    )


def test_a_record_claiming_more_than_the_file_is_refused_before_torch_reads_it(tmp_path):
    path = forged_size(tmp_path)
    assert zipfile.ZipFile(path).getinfo("forged/data/0").file_size == 3_000_000_000
    with pytest.raises(BadInputError, match="claim") as refused:
        safe_torch_load(path)
    assert "\n" not in str(refused.value) and "truncated or forged" in str(refused.value)


# Element counts, shapes and offsets torch cannot use: some raise TypeError/OverflowError inside torch.load.
BAD_COUNTS = {
    "negative numel": (Storage("0", -5), (4,), 0),
    "numel 2^70": (Storage("0", 2**70), (4,), 0),
    "numel text": (Storage("0", "four"), (4,), 0),
    "numel float": (Storage("0", 4.0), (4,), 0),
    "negative size": (Storage("0", 4), (-4,), 0),
    "size 2^70": (Storage("0", 4), (2**70,), 0),
    "size text": (Storage("0", 4), ("four",), 0),
    "negative offset": (Storage("0", 4), (4,), -3),
    "missing record": (Storage("9", 4), (4,), 0),
}


@pytest.mark.parametrize("kind", list(BAD_COUNTS))
def test_impossible_counts_are_one_line_bad_input(tmp_path, kind):
    storage, size, offset = BAD_COUNTS[kind]
    path = tmp_path / "counts.pt"
    torch_save_shaped(path, checkpoint_with({"extra": TensorOf(storage, size, offset)}), {"0": bytes(16)})
    with pytest.raises(RtoolError) as refused:
        load_checkpoint(path)
    assert refused.value.exit_code == 2 and "\n" not in str(refused.value), str(refused.value)
    assert "not a readable PyTorch checkpoint" in str(refused.value)


def test_the_cli_refuses_a_bomb_and_a_negative_count_in_one_line(tmp_path, digit_png):
    bomb = zip_bomb(tmp_path)
    negative = tmp_path / "negative.pt"
    torch_save_shaped(negative, checkpoint_with({"extra": TensorOf(Storage("0", -5), (4,))}), {"0": bytes(16)})
    assert_one_line_error(run_rtool("infer", bomb, digit_png), 2, "compressed")
    assert_one_line_error(
        run_rtool("eval", negative, "--limit", "8", "--out", tmp_path / "eval"), 2, "not a readable PyTorch checkpoint"
    )
    assert not (tmp_path / "eval").exists()


def test_real_checkpoints_and_weights_still_load(untrained_checkpoint, tmp_path):
    """The checks refuse nothing torch.save writes: a checkpoint, and a bare state_dict."""
    assert load_checkpoint(untrained_checkpoint).card.num_classes == 10
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "weights.pth")
    assert set(safe_torch_load(tmp_path / "weights.pth")) == {"weight", "bias"}


@pytest.mark.parametrize(
    "kind, value, words",
    [
        ("non-text key", {5: torch.zeros(1)}, "names to tensors"),
        ("non-tensor value", {"fc.bias": "abc"}, "names to tensors"),
        ("complex weights", {"fc.bias": torch.zeros(10, dtype=torch.complex64)}, "not real numbers"),
    ],
)
def test_weights_that_are_not_name_to_real_tensor_are_refused(tmp_path, kind, value, words):
    payload = _real_payload()
    payload["state_dict"].update(value)
    torch.save(payload, tmp_path / "odd.pt")
    with pytest.raises(BadInputError, match=words) as refused:
        load_checkpoint(tmp_path / "odd.pt")
    assert "\n" not in str(refused.value)
