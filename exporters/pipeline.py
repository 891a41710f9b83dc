"""One export run: resolve SOURCE, write every requested format x precision, then ``manifest.json``.

Everything is written into a hidden staging folder inside the output folder
and moved into place only when every file has passed its checks; the manifest
comes last. A failed run therefore leaves no file under a final name.

The export folder is self-contained: beside the exported files it holds
``model.pt``, the eager FP32 checkpoint (weights + card, no training state),
which parity checks and ``rtool infer`` use as the reference.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

import toolkit
from exporters import (
    CHECKPOINT_FILE,
    PRECISIONS,
    Artifact,
    ExportContext,
    ExporterEntry,
    all_targets,
    exporters,
    get_exporter,
    option_classes,
    owned_patterns,
)
from exporters.gate import apply_gate
from exporters.validation import GateOptions, compare, eager_logits, reference
from toolkit.card import InputSpec, ModelCard, library_versions
from toolkit.checkpoint import load_model, load_pretrained_weights, make_card, save_checkpoint
from toolkit.errors import BadInputError, UnavailableError
from toolkit.fileio import ensure_writable_dir
from toolkit.flags import comma_list, from_values
from toolkit.manifest import companions, is_inside, read_manifest, sha256_file, write_manifest, written_by_rtool
from toolkit.models import create_model, get_entry, input_shape_of, list_models
from toolkit.thresholds import default_thresholds

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
    left: list[str] = field(default_factory=list)  # files listed by the old manifest that rtool cannot prove it wrote
    failed: list[str] = field(default_factory=list)  # files kept by --keep-failed although they missed the gate


@dataclass
class Source:
    model: torch.nn.Module
    card: ModelCard
    info: dict[str, Any]
    default_out: Path


# ---------------------------------------------------------------- source


def default_input_spec(channels: int, height: int, width: int) -> InputSpec:
    """ImageNet mean/std for RGB, 0.5/0.5 for grey: the card of a model rtool did not train."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (GREY_MEAN, GREY_STD)
    return InputSpec(channels=channels, height=height, width=width, mean=list(mean), std=list(std))


def resolve_source(
    source: str | Path,
    *,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    weights: str | Path | None = None,
) -> Source:
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
        raise BadInputError(
            "--input-size, --num-classes and --weights go with a model name, not a checkpoint "
            "(its card already fixes them)"
        )
    model, card = load_model(path)
    info = {"kind": "checkpoint", "path": str(path.resolve()), "sha256": sha256_file(path)}
    return Source(model, card, info, path.resolve().parent / "export")


def _model_source(
    name: str, input_shape: tuple[int, ...] | None, num_classes: int | None, weights: str | Path | None
) -> Source:
    entry = get_entry(name)
    shape = input_shape_of(entry, tuple(input_shape) if input_shape else None)
    if shape[0] not in (1, 3):
        raise BadInputError(
            f"--input-size must have 1 or 3 channels (e.g. 224, 32x48 or 3x224x224), got {'x'.join(map(str, shape))}"
        )
    classes = num_classes or entry.default_classes
    model = create_model(name, in_channels=shape[0], num_classes=classes)
    info: dict[str, Any] = {"kind": "model", "model": name}
    training: dict[str, Any] = {"weights": "untrained"}
    if weights:
        replaced = load_pretrained_weights(model, weights)
        info.update(path=str(Path(weights).resolve()), sha256=sha256_file(Path(weights)))
        training = {"weights": Path(weights).name, "reinitialised": replaced}
    card = make_card(
        name, class_names=[str(i) for i in range(classes)], input_spec=default_input_spec(*shape), training=training
    )
    return Source(model.eval(), card, info, Path("export") / name)


# ---------------------------------------------------------------- plan


def _precisions_for(entry: ExporterEntry, wanted: list[str], everything: bool) -> list[str]:
    if wanted:
        return [p for p in wanted if p in entry.precisions]
    return list(entry.precisions) if everything else [entry.precisions[0]]


def _buildable_precisions(
    entry: ExporterEntry, chosen: list[str], skipped: list[dict[str, Any]], everything: bool
) -> list[str]:
    """The chosen precisions this machine can build; the others go to ``skipped`` with the reason.

    A format named on its own whose every chosen precision is unbuildable here is refused in one line.
    """
    buildable = []
    for precision in chosen:
        ok, reason = entry.precision_available(precision)
        if ok:
            buildable.append(precision)
        else:
            skipped.append({"format": entry.name, "precision": precision, "reason": reason})
    if not buildable and not everything:
        raise UnavailableError(f"cannot export {entry.name} {', '.join(chosen)} here: {skipped[-1]['reason']}")
    return buildable


def _jobs_of(entry: ExporterEntry, precision: str, target: str | None, everything: bool) -> list[Job]:
    """One job per INT8 target the format declares at this precision (the asked one, all, or its default)."""
    targets = entry.targets.get(precision)
    if not targets:
        return [Job(entry.name, precision)]
    if target:
        return [Job(entry.name, precision, target)] if target in targets else []
    return [Job(entry.name, precision, t) for t in (targets if everything else targets[:1])]


def plan(
    formats: str | Iterable[str] = "all", precisions: str | Iterable[str] | None = None, target: str | None = None
) -> tuple[list[Job], list[dict[str, Any]]]:
    """(jobs to run, skipped with reasons) for the requested formats x precisions x INT8 targets."""
    names = comma_list(formats) or ["all"]
    everything = "all" in names
    entries = [e for e in exporters() if e.in_all] if everything else [get_exporter(n) for n in names]
    wanted = comma_list(precisions, PRECISIONS, "--precision", "precision")
    if target is not None and target not in all_targets():
        raise BadInputError(f"unknown target '{target}'; choose one of: {', '.join(all_targets())}")
    jobs: list[Job] = []
    skipped: list[dict[str, Any]] = []
    for entry in entries:
        chosen = _precisions_for(entry, wanted, everything)
        if not chosen:
            if len(entries) == 1:
                raise BadInputError(f"{entry.name} exports {', '.join(entry.precisions)}; not {', '.join(wanted)}")
            continue
        ok, reason = entry.available()
        if not ok:
            if not everything:
                raise UnavailableError(f"cannot export {entry.name} here: {reason}")
            skipped += [{"format": entry.name, "precision": p, "reason": reason} for p in chosen]
            continue
        buildable = _buildable_precisions(entry, chosen, skipped, everything)
        jobs += [job for p in buildable for job in _jobs_of(entry, p, target, everything)]
    if target and not any(j.target for j in jobs):
        raise BadInputError("--target picks the form of an INT8 ONNX file; add --precision int8 and --format onnx")
    return jobs, skipped


def export_option_classes() -> list[type]:
    """The export's own options (the gate) and every format's: what `rtool export` has flags for."""
    return [GateOptions, *option_classes()]


def export_options(values: dict[str, Any]) -> dict[type, Any]:
    """Typed, validated options of the export and every format from flag values (None: the default holds)."""
    classes = export_option_classes()
    known = {f.name for cls in classes for f in dataclasses.fields(cls)}
    unknown = sorted(k for k, v in values.items() if k not in known and v is not None)
    if unknown:
        raise BadInputError(f"unknown export option '{unknown[0]}'; known: {', '.join(sorted(known))}")
    return {cls: from_values(cls, values) for cls in classes}


def check_options(jobs: list[Job], values: dict[str, Any]) -> dict[type, Any]:
    """The typed options of ``values``, refused before any slow work when bad or when no job reads them.

    Options that only make sense with some jobs say so themselves
    (``check_jobs``: e.g. --embed-preprocessing needs an FP32 ONNX job).
    """
    options = export_options(values)
    for instance in options.values():
        if hasattr(instance, "check_jobs"):
            instance.check_jobs(jobs)
    return options


# ---------------------------------------------------------------- run


def export_model(
    source: str | Path,
    formats: str | Iterable[str] = "all",
    precisions: str | Iterable[str] | None = None,
    out_dir: str | Path | None = None,
    *,
    target: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    data_dir: str | None = None,
    progress: Callable[[str], None] | None = None,
    **option_values: Any,
) -> ExportResult:
    """Export ``source`` to every requested format x precision in ``out_dir`` and write its manifest.

    ``option_values`` are the formats' typed options by field name (opset,
    calib_size, batch_range, triton_model_name, ...; see ``export_options``),
    all validated before any slow work starts.
    """
    jobs, skipped = plan(formats, precisions, target)
    context = ExportContext(options=check_options(jobs, option_values), data_dir=data_dir)
    src = resolve_source(source, input_shape=input_shape, num_classes=num_classes, weights=weights)
    out = ensure_writable_dir(Path(out_dir) if out_dir else src.default_out)
    staging = Path(tempfile.mkdtemp(prefix=".rtool-export-", dir=out))
    try:
        artifacts, failed = _run_jobs(src, jobs, staging, context, progress or (lambda message: None))
        entries = [_entry(a, staging) for a in artifacts]
        written = {e["file"] for e in entries} | {c["file"] for e in entries for c in e.get("companions", [])}
        kept, stale, left = _previous_entries(out, src, written)
        _move_into_place(staging, out)
        for artifact in artifacts:
            artifact.path = out / artifact.path.relative_to(staging)
            artifact.companions = [out / c.relative_to(staging) for c in artifact.companions]
        _remove_stale(out, stale)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    context.notes.extend(
        f"left {name} in place: the old manifest lists it, but rtool cannot prove it wrote it "
        f"(not one of its file names, or changed since); remove it yourself if it is stale"
        for name in left
    )
    manifest_path = write_manifest(
        out,
        {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "rtool_version": toolkit.__version__,
            "source": src.info,
            "card": src.card.to_dict(),
            "artifacts": entries + kept,
            "skipped": skipped,
            "versions": _versions(),
        },
    )
    return ExportResult(artifacts, skipped, manifest_path, context.notes, sorted(stale), sorted(left), failed)


def _run_jobs(
    src: Source, jobs: list[Job], staging: Path, context: ExportContext, say: Callable[[str], None]
) -> tuple[list[Artifact], list[str]]:
    """(the checkpoint copy and every job's files, written into ``staging``; the files kept by --keep-failed).

    Each file passes the gate (its precision's parity thresholds) as soon as it is written: a failure stops the
    run, so nothing reaches the export folder, unless --keep-failed keeps it, marked failed.
    """
    say(f"checkpoint copy -> {CHECKPOINT_FILE}")
    artifacts = [_write_checkpoint_copy(src, staging, context)]
    thresholds, keep_failed = default_thresholds(), context.option(GateOptions).keep_failed
    failed: list[str] = []
    for number, job in enumerate(jobs, 1):
        entry = get_exporter(job.format)
        say(f"[{number}/{len(jobs)}] {job.describe()} -> {entry.filename(job.precision, job.target) or entry.name}")
        written = entry.export(
            src.model, src.card, staging, precision=job.precision, target=job.target, context=context
        )
        written = written if isinstance(written, list) else [written]
        failed += apply_gate(written, thresholds, keep_failed)
        artifacts += written
    return artifacts, failed


def _write_checkpoint_copy(src: Source, staging: Path, context: ExportContext) -> Artifact:
    """``model.pt``: the eager reference, saved the safe way and reloaded to prove it."""
    path = staging / CHECKPOINT_FILE
    save_checkpoint(path, src.model, src.card)
    batch, expected, source = reference(src.model, src.card, context)
    reloaded, _ = load_model(path)
    stats = compare(expected, eager_logits(reloaded, batch), source)
    return Artifact(
        format="checkpoint",
        precision="fp32",
        path=path,
        runtime="eager",
        settings={"contents": "weights + model card (no training state)"},
        validation=stats,
    )


def _remove_stale(out: Path, stale: list[str]) -> None:
    """Remove another model's files (proven rtool's by ``_previous_entries``), then the folders they leave empty."""
    for name in stale:
        (out / name).unlink(missing_ok=True)
    folders = {parent for name in stale for parent in Path(name).parents if parent != Path(".")}
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):  # deepest first
        try:
            (out / folder).rmdir()
        except OSError:  # not empty (the user's files, or this export's) or already gone: it stays
            pass


def _move_into_place(staging: Path, out: Path) -> None:
    """Move what the exporters wrote from ``staging`` to ``out``, file by file: a file replaces the file of the
    same name, a folder (e.g. a Triton repository) is merged, so whatever else the user keeps there survives."""
    for item in sorted(staging.iterdir()):
        if item.name.startswith(".") and item.parent == staging:
            continue
        final = out / item.name
        if item.is_dir() and not item.is_symlink():
            if final.is_symlink() or (final.exists() and not final.is_dir()):
                raise BadInputError(f"{final} is in the way of the folder the export writes there; move it away")
            final.mkdir(exist_ok=True)
            _move_into_place(item, final)
        else:
            if final.is_dir() and not final.is_symlink():
                raise BadInputError(f"{final} is a folder where the export writes a file; move it away")
            os.replace(item, final)


def _entry(artifact: Artifact, staging: Path) -> dict[str, Any]:
    path = artifact.path
    return {
        "file": path.relative_to(staging).as_posix(),
        "format": artifact.format,
        "precision": artifact.precision,
        "target": artifact.target,
        "runtime": artifact.runtime,
        "sha256": sha256_file(path),
        "size": path.stat().st_size,
        "settings": artifact.settings,
        "validation": artifact.validation,
        **(
            {
                "companions": [
                    {"file": c.relative_to(staging).as_posix(), "sha256": sha256_file(c), "size": c.stat().st_size}
                    for c in artifact.companions
                ]
            }
            if artifact.companions
            else {}
        ),
    }


def _previous_entries(out: Path, src: Source, rewritten: set[str]) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """(entries of an earlier export of the same source to keep, stale files to remove, files to leave alone).

    Exporting one format after another into one folder keeps the earlier files
    (still listed, still verified); exporting another model there removes the
    earlier model's files, so the folder never mixes two models, but only
    those rtool provably wrote (``written_by_rtool``): a name added to the
    manifest by hand, or a file changed since, is left where it is.
    """
    try:
        old = read_manifest(out)
    except BadInputError:
        return [], [], []
    same = old.get("source") == src.info and old.get("card") == src.card.to_dict()
    kept, stale, left = [], [], []
    for entry in old["artifacts"]:
        name = entry["file"]
        if name in rewritten or not is_inside(out, name) or not (out / name).is_file():
            continue
        if written_by_rtool(out, entry, owned_patterns()):
            if same:
                kept.append(entry)
            else:
                stale.append(name)
                stale += [c["file"] for c in companions(entry) if written_by_rtool(out, c, owned_patterns())]
        else:
            left.append(name)
    return kept, stale, left


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


def summary_rows(result: ExportResult) -> list[dict[str, Any]]:
    """One row per written file for the command's table / JSON: name, kind, size, validation figures."""
    rows = []
    for artifact in result.artifacts:
        size = artifact.path.stat().st_size
        rows.append(
            {
                "file": artifact.path.relative_to(result.manifest_path.parent).as_posix(),
                "format": artifact.format,
                "precision": artifact.precision,
                "target": artifact.target,
                "runtime": artifact.runtime,
                "size": size,
                "size_text": f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB",
                "max_abs_diff": artifact.validation.get("max_abs_diff"),  # None: not a model (a web page's files)
                "top1_agreement": artifact.validation.get("top1_agreement"),
                "images": artifact.validation.get("images"),
                "gate": artifact.validation.get("gate", {}).get("status"),
                "float_layers": artifact.settings.get("float_layers", []),
                "int8_layers": artifact.settings.get("int8_layers"),
            }
        )
    return rows
