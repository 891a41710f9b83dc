"""One export run: resolve SOURCE, write every requested format x precision, then ``manifest.json``.

Everything is written into a hidden staging folder inside the output folder
and moved into place only when every file has passed its checks; the manifest
comes last. A failed run therefore leaves no file under a final name.

The export folder is self-contained: beside the exported files it holds
``model.pt``, the eager FP32 checkpoint (weights + card, no training state),
which parity checks and ``rtool infer`` use as the reference.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

import toolkit
from exporters import PRECISIONS, Artifact, artifact_filename, get_exporter
from exporters.onnx_embed import embedding_requested, export_embedded, variant_filename
from exporters.validation import compare, eager_logits, reference
from toolkit.card import MANIFEST_NAME, InputSpec, ModelCard, library_versions
from toolkit.checkpoint import load_model, load_pretrained_weights, make_card, save_checkpoint
from toolkit.errors import BadInputError, UnavailableError
from toolkit.fileio import atomic_write_text, ensure_writable_dir
from toolkit.models import create_model, get_entry, list_models

MANIFEST_VERSION = 1
ALL_FORMATS = ("torchscript", "pt2", "onnx", "tensorrt")  # what --format all writes; others by name only
ONNX_TARGETS = ("cpu", "tensorrt")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
GREY_MEAN, GREY_STD = [0.5], [0.5]


@dataclass(frozen=True)
class Job:
    format: str
    precision: str
    target: str | None = None

    def describe(self) -> str:
        return f"{self.format} {self.precision}" + (f" (target {self.target})" if self.target else "")


@dataclass
class ExportResult:
    artifacts: list[Artifact]
    skipped: list[dict[str, Any]]
    manifest_path: Path
    notes: list[str] = field(default_factory=list)  # warnings the caller should show (e.g. random calibration)
    removed: list[str] = field(default_factory=list)  # stale files of another model, removed from the folder


@dataclass
class Source:
    model: torch.nn.Module
    card: ModelCard
    info: dict[str, Any]
    default_out: Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- source

def default_input_spec(channels: int, height: int, width: int) -> InputSpec:
    """ImageNet mean/std for RGB, 0.5/0.5 for grey: the card of a model rtool did not train."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (GREY_MEAN, GREY_STD)
    return InputSpec(channels=channels, height=height, width=width, mean=list(mean), std=list(std))


def resolve_source(source: str | Path, *, input_shape: tuple[int, ...] | None = None,
                   num_classes: int | None = None, weights: str | Path | None = None) -> Source:
    """A checkpoint file, or a registered model name (untrained, or with torchvision-style ``weights``)."""
    text = str(source)
    if text in list_models() and not Path(text).is_file():
        return _model_source(text, input_shape, num_classes, weights)
    path = Path(text)
    if not path.is_file() and path.suffix not in (".pt", ".pth"):
        if input_shape or num_classes or weights:  # meant as a model name: say which names exist
            get_entry(text)
        raise BadInputError(f"'{text}' is neither a checkpoint file nor a model name; see `rtool models`")
    if input_shape or num_classes or weights:
        raise BadInputError("--input-shape, --num-classes and --weights go with a model name, not a checkpoint "
                            "(its card already fixes them)")
    model, card = load_model(path)
    info = {"kind": "checkpoint", "path": str(path.resolve()), "sha256": sha256_file(path)}
    return Source(model, card, info, path.resolve().parent / "export")


def _model_source(name: str, input_shape: tuple[int, ...] | None, num_classes: int | None,
                  weights: str | Path | None) -> Source:
    entry = get_entry(name)
    shape = tuple(input_shape) if input_shape else entry.default_input
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise BadInputError(f"--input-shape must be CxHxW with C 1 or 3 (e.g. 3x224x224), got {'x'.join(map(str, shape))}")
    classes = num_classes or entry.default_classes
    model = create_model(name, in_channels=shape[0], num_classes=classes)
    info: dict[str, Any] = {"kind": "model", "model": name}
    training: dict[str, Any] = {"weights": "untrained"}
    if weights:
        replaced = load_pretrained_weights(model, weights)
        info.update(path=str(Path(weights).resolve()), sha256=sha256_file(Path(weights)))
        training = {"weights": Path(weights).name, "reinitialised": replaced}
    card = make_card(name, class_names=[str(i) for i in range(classes)],
                     input_spec=default_input_spec(*shape), training=training)
    return Source(model.eval(), card, info, Path("export") / name)


# ---------------------------------------------------------------- plan

def _split(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [i.strip().lower() for i in items if i and i.strip()]


def plan(formats: str | Iterable[str] = "all", precisions: str | Iterable[str] | None = None,
         target: str | None = None) -> tuple[list[Job], list[dict[str, Any]]]:
    """(jobs to run, skipped with reasons) for the requested formats x precisions x INT8 targets."""
    names = _split(formats) or ["all"]
    everything = "all" in names
    if everything:
        names = list(ALL_FORMATS)
    entries = [get_exporter(n) for n in dict.fromkeys(names)]
    wanted = _split(precisions)
    for p in wanted:
        if p not in PRECISIONS:
            raise BadInputError(f"unknown precision '{p}'; choose from: {', '.join(PRECISIONS)}")
    if target is not None and target not in ONNX_TARGETS:
        raise BadInputError(f"unknown target '{target}'; choose one of: {', '.join(ONNX_TARGETS)}")
    targets = [target] if target else (list(ONNX_TARGETS) if everything else ["cpu"])

    jobs: list[Job] = []
    skipped: list[dict[str, Any]] = []
    for entry in entries:
        chosen = [p for p in wanted if p in entry.precisions] if wanted else (
            list(entry.precisions) if everything else [entry.precisions[0]])
        if not chosen:
            if len(entries) == 1:
                raise BadInputError(f"{entry.name} exports {', '.join(entry.precisions)}; "
                                    f"not {', '.join(wanted)}")
            continue
        ok, reason = entry.available()
        if not ok:
            if not everything:
                raise UnavailableError(f"cannot export {entry.name} here: {reason}")
            skipped += [{"format": entry.name, "precision": p, "reason": reason} for p in chosen]
            continue
        for p in chosen:
            if entry.name == "onnx" and p == "int8":
                jobs += [Job("onnx", "int8", t) for t in targets]
            else:
                jobs.append(Job(entry.name, p))
    if target and not any(j.target for j in jobs):
        raise BadInputError("--target picks the form of an INT8 ONNX file; add --precision int8 and --format onnx")
    return jobs, skipped


def check_options(jobs: list[Job], opts: dict[str, Any]) -> None:
    """Refuse bad option values before any slow work starts."""
    formats = {j.format for j in jobs}
    if formats & {"onnx", "tensorrt"}:
        from exporters.onnx import DEFAULT_OPSET, check_opset

        check_opset(int(opts.get("opset") or DEFAULT_OPSET))
    if any(j.precision == "int8" for j in jobs):
        from exporters.onnx_int8 import CALIB_METHODS

        if opts.get("calib_method") and opts["calib_method"] not in CALIB_METHODS:
            raise BadInputError(f"unknown calibration method '{opts['calib_method']}'; choose one of: "
                                f"{', '.join(CALIB_METHODS)}")
        if opts.get("calib_size") is not None and int(opts["calib_size"]) < 1:
            raise BadInputError(f"--calib-size must be at least 1, got {opts['calib_size']}")
    if "tensorrt" in formats:
        from exporters.tensorrt import parse_batch_range

        parse_batch_range(opts.get("batch_range"))
        if opts.get("workspace") is not None and float(opts["workspace"]) <= 0:
            raise BadInputError(f"--workspace must be a positive number of GB, got {opts['workspace']}")
    if embedding_requested(opts) and not any(j.format in ("onnx", "triton") and j.precision == "fp32" for j in jobs):
        raise BadInputError("--embed-preprocessing/--embed-softmax add an FP32 ONNX variant: use them with "
                            "--format onnx (or triton) and --precision fp32")


# ---------------------------------------------------------------- run

def export_model(source: str | Path, formats: str | Iterable[str] = "all",
                 precisions: str | Iterable[str] | None = None, out_dir: str | Path | None = None, *,
                 target: str | None = None, input_shape: tuple[int, ...] | None = None,
                 num_classes: int | None = None, weights: str | Path | None = None,
                 progress: Callable[[str], None] | None = None, **opts: Any) -> ExportResult:
    """Export ``source`` to every requested format x precision in ``out_dir`` and write its manifest.

    ``opts`` reach every exporter: opset, batch_range, calib_size, calib_method,
    workspace, timing_cache, data_dir.
    """
    jobs, skipped = plan(formats, precisions, target)
    check_options(jobs, opts)
    src = resolve_source(source, input_shape=input_shape, num_classes=num_classes, weights=weights)
    out = ensure_writable_dir(Path(out_dir) if out_dir else src.default_out)
    notes: list[str] = []
    run_opts = {**opts, "cache": {}, "notes": notes}
    say = progress or (lambda message: None)

    staging = Path(tempfile.mkdtemp(prefix=".rtool-export-", dir=out))
    try:
        say(f"checkpoint copy -> {artifact_filename('checkpoint', 'fp32')}")
        artifacts = [_write_checkpoint_copy(src, staging, run_opts)]
        for number, job in enumerate(jobs, 1):
            name = artifact_filename(job.format, job.precision, job.target)
            say(f"[{number}/{len(jobs)}] {job.describe()} -> {name}")
            extra = {"target": job.target} if job.target else {}
            artifacts.append(get_exporter(job.format).export(src.model, src.card, staging,
                                                             precision=job.precision, **extra, **run_opts))
            if job.format == "onnx" and job.precision == "fp32" and embedding_requested(run_opts):
                say(f"[{number}/{len(jobs)}] onnx fp32, preprocessing in the graph -> "
                    f"{variant_filename(bool(run_opts.get('embed_softmax')))}")
                artifacts.append(export_embedded(src.model, src.card, staging, **run_opts))
        entries = [_entry(a, staging) for a in artifacts]
        kept, stale = _previous_entries(out, src, {e["file"] for e in entries})
        _move_into_place(staging, out)
        for artifact in artifacts:
            artifact.path = out / artifact.path.relative_to(staging)
        for name in stale:
            (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "rtool_version": toolkit.__version__,
        "source": src.info,
        "card": src.card.to_dict(),
        "artifacts": entries + kept,
        "skipped": skipped,
        "versions": _versions(),
    }
    manifest_path = out / MANIFEST_NAME
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return ExportResult(artifacts, skipped, manifest_path, notes, sorted(stale))


def _write_checkpoint_copy(src: Source, staging: Path, opts: dict[str, Any]) -> Artifact:
    """``model.pt``: the eager reference, saved the safe way and reloaded to prove it."""
    path = staging / artifact_filename("checkpoint", "fp32")
    save_checkpoint(path, src.model, src.card)
    batch, expected, source = reference(src.model, src.card, opts)
    reloaded, _ = load_model(path)
    stats = compare(expected, eager_logits(reloaded, batch), source)
    return Artifact(format="checkpoint", precision="fp32", path=path, runtime="eager",
                    settings={"contents": "weights + model card (no training state)"}, validation=stats)


def _move_into_place(staging: Path, out: Path) -> None:
    """Move what the exporters wrote from ``staging`` to ``out``: files replace files; a folder (e.g. a
    Triton repository) has each of its entries replaced, so other entries beside them survive."""
    for item in sorted(staging.iterdir()):
        if item.name.startswith("."):
            continue
        final = out / item.name
        if item.is_dir() and final.is_dir():
            for child in sorted(item.iterdir()):
                if (final / child.name).is_dir():
                    shutil.rmtree(final / child.name)
                os.replace(child, final / child.name)
        else:
            if final.is_dir():
                shutil.rmtree(final)
            os.replace(item, final)


def _inside(folder: Path, name: str) -> bool:
    """True if ``name`` is a relative path that stays inside ``folder`` (manifests are not trusted blindly)."""
    return bool(name) and not Path(name).is_absolute() and (folder / name).resolve().is_relative_to(folder.resolve())


def _entry(artifact: Artifact, staging: Path) -> dict[str, Any]:
    path = artifact.path
    return {"file": path.relative_to(staging).as_posix(), "format": artifact.format, "precision": artifact.precision,
            "target": artifact.target, "runtime": artifact.runtime, "sha256": sha256_file(path),
            "size": path.stat().st_size, "settings": artifact.settings, "validation": artifact.validation}


def _previous_entries(out: Path, src: Source, rewritten: set[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Entries of an earlier export of the same source to keep, and stale files of another model to remove.

    Exporting one format after another into one folder keeps the earlier files
    (still listed, still verified); exporting another model there removes them,
    so the folder never mixes two models.
    """
    try:
        old = read_manifest(out)
    except BadInputError:
        return [], []
    same = old.get("source") == src.info and old.get("card") == src.card.to_dict()
    kept, stale = [], []
    for entry in old["artifacts"]:
        name = str(entry.get("file", ""))
        if name in rewritten or not _inside(out, name):
            continue
        path = out / name
        if not path.is_file():
            continue
        if same and entry.get("sha256") == sha256_file(path):
            kept.append(entry)
        else:
            stale.append(name)
    return kept, stale


def _versions() -> dict[str, str]:
    """The libraries that shaped the files: the card's list plus the converters and TensorRT."""
    from importlib import metadata

    versions = library_versions()
    for dist in ("onnxscript", "onnxconverter-common", "tensorrt"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


# ---------------------------------------------------------------- reading

def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    """The folder's ``manifest.json``; BadInputError (one line) if it is missing or unreadable."""
    path = Path(export_dir) / MANIFEST_NAME
    if not path.is_file():
        raise BadInputError(f"{export_dir} has no {MANIFEST_NAME}; make one with `rtool export CHECKPOINT --out {export_dir}`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(f"{path} is unreadable ({e.__class__.__name__}); export again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), list):
        raise BadInputError(f"{path} lists no artifacts; export again")
    if int(manifest.get("manifest_version", 0)) > MANIFEST_VERSION:
        raise BadInputError(f"{path} was written by a newer rtool (manifest v{manifest['manifest_version']}); upgrade rtool")
    return manifest


def verify_manifest(export_dir: str | Path) -> list[str]:
    """Problems with the folder against its manifest (missing files, sizes, sha256); empty when all is well."""
    folder = Path(export_dir)
    problems = []
    for entry in read_manifest(folder)["artifacts"]:
        name = str(entry.get("file", ""))
        path = folder / name
        if not _inside(folder, name):
            problems.append(f"{name!r} points outside the export folder")
        elif not path.is_file():
            problems.append(f"{name} is listed but missing")
        elif path.stat().st_size != entry.get("size"):
            problems.append(f"{name} has {path.stat().st_size} bytes, the manifest says {entry.get('size')}")
        elif sha256_file(path) != entry.get("sha256"):
            problems.append(f"{name} does not match its sha256 (changed after export)")
    return problems



def summary_rows(result: ExportResult) -> list[dict[str, Any]]:
    """One row per written file for the command's table / JSON: name, kind, size, validation figures."""
    rows = []
    for artifact in result.artifacts:
        size = artifact.path.stat().st_size
        rows.append({"file": artifact.path.relative_to(result.manifest_path.parent).as_posix(),
                     "format": artifact.format, "precision": artifact.precision,
                     "target": artifact.target, "runtime": artifact.runtime, "size": size,
                     "size_text": f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB",
                     "max_abs_diff": artifact.validation.get("max_abs_diff", float("nan")),
                     "top1_agreement": artifact.validation.get("top1_agreement", float("nan"))})
    return rows
