"""Parity outputs saved on one machine and judged on another (``rtool parity --save-outputs / --load-outputs``).

A CPU box saves the eager reference and every row's logits on the test
images; a GPU box loads them, runs its own rows (TensorRT, CUDA) on the same
images and compares them with the stored reference, so one report shows both
machines' rows against one reference (Polygraphy's --save-outputs /
--load-outputs, for a whole parity report).

The file is NumPy's ``.npz`` (a zip of plain arrays) read with
``allow_pickle=False``: loading it never runs code. A JSON header inside
holds the model card, the data set, the sha256 of the exact model input, each
row's label, file and device, the machine, and the sha256 of every array, so
a file changed after it was saved, another model's outputs or other test
images are refused in one line.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

import toolkit
from toolkit.errors import BadInputError, UnsafeFileError
from toolkit.fileio import atomic_path

FORMAT = "rtool-parity-outputs"
VERSION = 1
MAX_BYTES = 8 << 30  # uncompressed arrays a file may hold: far above any test set's logits, far below a zip bomb
ROW_FIELDS = (
    "runtime",
    "precision",
    "artifact",
    "target",
    "device",
    "status",
    "reason",
    "latency_ms",
    "compared_as",
    "format",
)


@dataclass
class StoredOutputs:
    """What a parity run saved: its header, the reference logits, labels and each row's logits (None: no run)."""

    path: Path
    meta: dict[str, Any]
    reference: np.ndarray
    labels: np.ndarray
    rows: list[tuple[dict[str, Any], np.ndarray | None]]

    @property
    def machine(self) -> str:
        return str(self.meta.get("machine", "unknown machine"))


def machine_label() -> str:
    """This machine in a few words: host name and its GPU (or CPU) model."""
    from runtimes import cuda_device_name, cuda_gpus

    if cuda_gpus()[0]:
        device = cuda_device_name(0)
    else:
        device = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    device = line.partition(":")[2].strip()
                    break
        except OSError:
            pass
    return f"{platform.node() or 'this machine'} ({device})"


def digest(array: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes."""
    array = np.ascontiguousarray(array)
    header = f"{array.dtype.str}{array.shape}".encode()
    return hashlib.sha256(header + array.tobytes()).hexdigest()


def save_outputs(
    path: str | Path,
    *,
    card: dict[str, Any],
    dataset: str,
    limit: int | None,
    inputs: np.ndarray,
    labels: np.ndarray,
    reference: dict[str, Any],
    reference_logits: np.ndarray,
    rows: list[tuple[Any, np.ndarray | None]],
) -> Path:
    """Write the reference and every row (a ParityRow and its logits, or None) to ``path``, atomically."""
    arrays = {"reference": np.asarray(reference_logits, np.float32), "labels": np.asarray(labels, np.int64)}
    row_meta = []
    for number, (row, logits) in enumerate(rows):
        entry = {name: getattr(row, name) for name in ROW_FIELDS}
        if logits is not None:
            entry["key"] = f"row{number}"
            arrays[entry["key"]] = np.asarray(logits, np.float32)
        row_meta.append(entry)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "rtool_version": toolkit.__version__,
        "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_label(),
        "card": card,
        "dataset": dataset,
        "limit": limit,
        "images": int(len(inputs)),
        "inputs_sha256": digest(np.asarray(inputs, np.float32)),
        "reference": {k: v for k, v in reference.items() if k != "machine"},
        "rows": row_meta,
        "arrays": {key: digest(value) for key, value in arrays.items()},
    }
    text = json.dumps(meta)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: savez would add '.npz' to a name
        np.savez_compressed(f, meta=np.array(text), meta_sha256=np.array(_text_digest(text)), **arrays)
    return path


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, without pickle and within MAX_BYTES; BadInputError otherwise."""
    what = f"{path} is not an rtool parity outputs file (save one with `rtool parity EXPORT --save-outputs FILE`)"
    try:
        with zipfile.ZipFile(path) as archive:
            if sum(info.file_size for info in archive.infolist()) > MAX_BYTES:
                raise BadInputError(f"{path} unpacks to more than {MAX_BYTES >> 30} GiB; {what}")
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else e.__class__.__name__
        raise BadInputError(f"{what} ({reason})") from None


def _text(array: np.ndarray | None) -> str | None:
    return str(array[()]) if array is not None and array.dtype.kind == "U" and array.ndim == 0 else None


def _header(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The file's JSON header, checked against its own recorded sha256 and format."""
    text, recorded = _text(arrays.pop("meta", None)), _text(arrays.pop("meta_sha256", None))
    try:
        meta = json.loads(text) if text is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BadInputError(f"{path} holds no rtool parity outputs header; save it with `rtool parity --save-outputs`")
    if recorded != _text_digest(text):
        raise UnsafeFileError(
            f"{path}: its header does not match the sha256 recorded when it was saved (the file changed after it "
            f"was saved); save it again with `rtool parity --save-outputs`"
        )
    if meta.get("version") != VERSION:
        raise BadInputError(f"{path} is parity outputs format v{meta.get('version')}; this rtool reads v{VERSION}")
    return meta


def load_outputs(path: str | Path) -> StoredOutputs:
    """Read and check a file ``save_outputs`` wrote: header, every array's sha256, shapes; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"--load-outputs {path} does not exist")
    arrays = _read_arrays(path)
    meta = _header(path, arrays)
    recorded = meta.get("arrays") if isinstance(meta.get("arrays"), dict) else {}
    if set(recorded) != set(arrays):
        raise UnsafeFileError(f"{path} does not hold the arrays its header lists; it changed after it was saved")
    for key, value in arrays.items():
        if value.dtype.kind not in "fiu" or digest(value) != recorded[key]:
            raise UnsafeFileError(
                f"{path}: array '{key}' does not match the sha256 recorded when it was saved (the file changed "
                f"after it was saved); save it again with `rtool parity --save-outputs`"
            )
    reference, labels = arrays.get("reference"), arrays.get("labels")
    if reference is None or labels is None or reference.ndim != 2 or labels.shape != reference.shape[:1]:
        raise BadInputError(f"{path} holds no (images, classes) reference logits with one label per image")
    rows = []
    for entry in meta.get("rows") or []:
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("runtime", "precision")):
            raise BadInputError(f"{path} lists a malformed row ({str(entry)[:60]})")
        logits = arrays.get(entry["key"]) if isinstance(entry.get("key"), str) else None
        if logits is not None and logits.shape != reference.shape:
            raise BadInputError(f"{path}: row {entry['runtime']} {entry['precision']} has logits of another shape")
        rows.append((entry, logits))
    return StoredOutputs(path, meta, reference.astype(np.float32), labels, rows)


def check_matches(stored: StoredOutputs, card: dict[str, Any], inputs: np.ndarray, labels: np.ndarray) -> None:
    """Refuse stored outputs of another model (its card) or of other test images (their sha256)."""
    if stored.meta.get("card") != card:
        theirs = stored.meta.get("card") if isinstance(stored.meta.get("card"), dict) else {}
        raise BadInputError(
            f"{stored.path} holds outputs of another model ({theirs.get('model', '?')}, card differs from this "
            f"export's {card.get('model', '?')}); load it with the export folder it was saved from"
        )
    if digest(np.asarray(inputs, np.float32)) != stored.meta.get("inputs_sha256") or not np.array_equal(
        labels, stored.labels
    ):
        raise BadInputError(
            f"{stored.path} was saved on other test images ({stored.meta.get('images')} of "
            f"{stored.meta.get('dataset')}); the images here differ (another data set version or --limit)"
        )


def stored_row_fields(entry: dict[str, Any], row_type: type) -> dict[str, Any]:
    """The fields of a stored row that ``row_type`` (ParityRow) takes, as saved."""
    known = {f.name for f in fields(row_type)}
    return {k: entry.get(k) for k in ROW_FIELDS if k in known}
