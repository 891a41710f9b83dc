"""Find the ModelCard and the right file in any artifact or export folder.

Every file rtool writes carries its card (checkpoint payload, ONNX
``metadata_props``, TorchScript / torch.export extra files) and every export
folder has a ``manifest.json`` listing its files with format, precision,
target and sha256. Runtimes read the card from the file itself and fall back
to the manifest (engines carry their card only there).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Sequence

from exporters import artifact_filename
from toolkit.card import EXTRA_FILE_NAME, MANIFEST_NAME, ONNX_METADATA_KEY, ModelCard
from toolkit.errors import BadInputError
from toolkit.jsonsafe import MAX_JSON_BYTES
from toolkit.manifest import entry_path, read_manifest, verify_sha256
from toolkit.safety import DAMAGED_ZIP_ERRORS


def check_card_fits_input(card: ModelCard, dims: Sequence[Any], raw_pixels: bool, source: Path) -> None:
    """Refuse a card whose image size is not the one the ONNX graph takes.

    Every image is resized to the card's size before the graph sees it, so a
    card that claims 40000x40000 for a 28x28 graph would make rtool allocate
    gigabytes for a batch the graph then rejects. ``dims`` is the graph
    input's shape (whole numbers for fixed sizes, names or None for free
    ones); ``raw_pixels`` graphs take uint8 NHWC, the others float NCHW.
    """
    if not dims:  # no shape recorded: nothing to compare (the card's own size limit still holds)
        return
    spec = card.input
    expected = (spec.height, spec.width, spec.channels) if raw_pixels else spec.shape
    layout = "NHWC" if raw_pixels else "NCHW"
    fixed = [d if isinstance(d, int) and d > 0 else None for d in dims]
    if len(fixed) != 4 or any(got is not None and got != want for got, want in zip(fixed[1:], expected)):
        shown = "x".join(str(d) if d is not None else "?" for d in fixed)
        raise BadInputError(
            f"{source.name}: its model card says images are {'x'.join(map(str, spec.shape))} "
            f"(CxHxW), but the graph takes {layout} input {shown}; the card does not belong to this "
            f"model, re-export it"
        )


def onnx_input_dims(model: Any) -> tuple[list[Any], bool]:
    """(shape, takes uint8 pixels) of the first real input of an ONNX ModelProto (initializers are not inputs);
    ([], False) for a graph without one."""
    from onnx import TensorProto

    initializers = {t.name for t in model.graph.initializer}
    graph_input = next((v for v in model.graph.input if v.name not in initializers), None)
    if graph_input is None:
        return [], False
    tensor_type = graph_input.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    return dims, tensor_type.elem_type == TensorProto.UINT8


def card_from_json(text: str | bytes, source: Path) -> ModelCard:
    """Parse a stored card, naming the file it came from in any error."""
    try:
        return ModelCard.from_json(text)
    except BadInputError as e:
        raise BadInputError(f"{source.name}: {e}") from None


def manifest_entry(path: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(manifest, this file's entry) from the manifest beside ``path``, or None if it does not list it."""
    if not (path.parent / MANIFEST_NAME).is_file():
        return None
    manifest = read_manifest(path.parent)
    for entry in manifest["artifacts"]:
        if isinstance(entry, dict) and entry.get("file") == path.name:
            return manifest, entry
    return None


def card_beside(path: Path) -> ModelCard | None:
    """The card the manifest beside ``path`` holds for it, if any."""
    found = manifest_entry(path)
    if found is None or not found[0].get("card"):
        return None
    card = found[0]["card"]
    return card_from_json(json.dumps(card) if isinstance(card, dict) else card, path.parent / MANIFEST_NAME)


def _zip_extra_card(path: Path) -> ModelCard | None:
    """The card stored as an extra file in a TorchScript or torch.export zip archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith(f"/{EXTRA_FILE_NAME}") or info.filename == EXTRA_FILE_NAME:
                    if info.file_size > MAX_JSON_BYTES:  # checked before reading: it may be a compressed bomb
                        raise BadInputError(
                            f"{path.name}: its model card claims {info.file_size:,} bytes (limit "
                            f"{MAX_JSON_BYTES:,}); the file is corrupt or hostile"
                        )
                    return card_from_json(archive.read(info), path)
    except DAMAGED_ZIP_ERRORS as e:
        raise BadInputError(
            f"{path.name} is not a readable model archive ({e.__class__.__name__}: {str(e)[:120]}); re-export it"
        ) from None
    return None


def _onnx_card(path: Path) -> ModelCard | None:
    from toolkit.safety import check_onnx_file

    model = check_onnx_file(path)  # parsed without its external data, after the safety checks
    stored = next((prop.value for prop in model.metadata_props if prop.key == ONNX_METADATA_KEY), None)
    card = card_from_json(stored, path) if stored is not None else card_beside(path)
    if card is not None:
        check_card_fits_input(card, *onnx_input_dims(model), path)
    return card


def _ort_card(path: Path) -> ModelCard | None:
    """The card in a .ort file's metadata (ONNX Runtime reads the flatbuffer once it passed its check)."""
    import onnxruntime as ort

    from toolkit.safety import check_ort_file

    check_ort_file(path)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.load_model_format", "ORT")
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ONNX Runtime's own exception classes
        raise BadInputError(f"{path.name} is not a loadable ONNX Runtime format model ({str(e)[:120]})") from None
    stored = session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
    return card_from_json(stored, path) if stored else None


def _openvino_card(path: Path) -> ModelCard | None:
    """The card in an OpenVINO IR's rt_info (the graph is read, not compiled)."""
    from exporters.openvino_common import CARD_KEY, core, openvino_missing

    if openvino_missing() or not path.with_suffix(".bin").is_file():
        return None
    model = core().read_model(str(path), str(path.with_suffix(".bin")))
    return card_from_json(str(model.get_rt_info(CARD_KEY).astype(str)), path) if model.has_rt_info(CARD_KEY) else None


def _executorch_card(path: Path) -> ModelCard | None:
    """The card an ExecuTorch program returns from its rtool_card constant method."""
    from exporters.executorch_common import executorch_missing, load_program, stored_card_json

    if executorch_missing():
        return None
    stored = stored_card_json(load_program(path))
    return card_from_json(stored, path) if stored else None


def read_card(artifact_path: str | Path) -> ModelCard:
    """The ModelCard of any rtool file: checkpoint, .ts, .pt2, .onnx, .ort, OpenVINO .xml, .pte, or an engine
    (via its manifest)."""
    path = Path(artifact_path)
    if not path.is_file():
        raise BadInputError(f"model file {path} does not exist")
    if path.suffix in (".pt", ".pth"):
        from toolkit.checkpoint import load_checkpoint

        return load_checkpoint(path).card
    readers = {
        ".ts": _zip_extra_card,
        ".pt2": _zip_extra_card,
        ".onnx": _onnx_card,
        ".ort": _ort_card,
        ".xml": _openvino_card,
        ".pte": _executorch_card,
    }
    card = readers.get(path.suffix, lambda p: None)(path)
    card = card or card_beside(path)
    if card is None:
        raise BadInputError(
            f"{path.name} carries no rtool model card (and no {MANIFEST_NAME} beside it lists "
            f"one); export it with `rtool export`"
        )
    return card


def describe_artifacts(manifest: dict[str, Any]) -> str:
    """'model.onnx (onnxruntime fp32), model.int8-cpu.onnx (onnxruntime int8, target cpu), ...'"""
    parts = []
    for a in manifest["artifacts"]:
        target = f", target {a['target']}" if a.get("target") else ""
        parts.append(f"{a.get('file')} ({a.get('runtime')} {a.get('precision')}{target})")
    return ", ".join(parts) or "nothing"


def resolve_artifact(
    export_dir: str | Path,
    runtime: str = "onnxruntime",
    precision: str = "fp32",
    target: str | None = None,
    verify: bool = True,
) -> Path:
    """The file in an export folder that ``runtime`` runs at ``precision`` (and ``target``), checked by sha256
    unless ``verify`` is False."""
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    matches = [
        a
        for a in manifest["artifacts"]
        if isinstance(a, dict)
        and a.get("runtime") == runtime
        and a.get("precision") == precision
        and (target is None or a.get("target") in (target, None))
    ]
    # Several files may fit (e.g. model.onnx and model.raw.onnx for apps, model.ort): prefer the runtime's own
    # format, then the standard name, then the CPU-tuned INT8 file when no target was asked for.
    from runtimes import get_runtime_class, list_runtimes

    home = get_runtime_class(runtime).formats[:1] if runtime in list_runtimes() else ()
    matches.sort(
        key=lambda a: (
            a.get("format") not in home,
            a.get("file") != artifact_filename(str(a.get("format")), precision, a.get("target")),
            target is None and a.get("target") not in (None, "cpu"),
        )
    )
    if not matches:
        wanted = f"{runtime} {precision}" + (f" (target {target})" if target else "")
        raise BadInputError(f"{export_dir} has no {wanted} file; it holds: {describe_artifacts(manifest)}")
    entry = matches[0]
    path = entry_path(export_dir, entry)
    if not path.is_file():
        raise BadInputError(f"{export_dir / MANIFEST_NAME} lists {entry['file']} but the file is missing; re-export")
    if verify:
        verify_sha256(path, entry)
    return path


def artifact_runs(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(runtime, entry) for every listed file rtool runs, once per registered runtime that runs its format.

    Files whose own runtime rtool does not run (apps' raw-pixel variants,
    Triton models) were validated when exported and are left out.
    """
    from runtimes import list_runtimes, runtimes_for_format

    known = list_runtimes()
    runs = []
    for entry in manifest["artifacts"]:
        if entry.get("runtime") not in known:
            continue
        runs += [
            (runtime, entry) for runtime in runtimes_for_format(str(entry.get("format"))) or [str(entry["runtime"])]
        ]
    return runs


def skipped_runs(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(runtime, skip record) for every format x precision the export skipped, per runtime that would run it."""
    from runtimes import runtimes_for_format

    return [
        (runtime, skip)
        for skip in manifest.get("skipped") or []
        if isinstance(skip, dict)
        for runtime in runtimes_for_format(str(skip.get("format")))
    ]
