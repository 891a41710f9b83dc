"""``manifest.json``: the record of an export folder, read, written and checked in one place.

Every export writes one; parity, bench, infer and eval trust a file only when
its bytes match what the manifest recorded. A manifest is also what lets rtool
clean up after itself: a file may be removed only when rtool can prove it
wrote it (a name rtool writes, listed here, with the sha256 recorded at
export). Anything else in the folder is the user's and stays.

Manifests are read as untrusted input: every entry's path must stay inside the
folder (one rule, ``entry_path``), and malformed JSON, versions or entries
are one-line errors.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable

from toolkit.card import MANIFEST_NAME
from toolkit.errors import BadInputError, UnsafeFileError
from toolkit.fileio import atomic_write_text
from toolkit.jsonsafe import MAX_JSON_BYTES, load_json_text

MANIFEST_VERSION = 1


def sha256_file(path: Path) -> str:
    """The file's sha256; BadInputError (one line) if it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as e:
        raise BadInputError(
            f"cannot read {path} ({e.strerror or e.__class__.__name__}); check its permissions"
        ) from None
    return digest.hexdigest()


def is_inside(folder: Path, name: str) -> bool:
    """True if ``name`` is a relative path that stays inside ``folder``, symbolic links resolved."""
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        return False
    return (folder / name).resolve().is_relative_to(folder.resolve())


def entry_path(folder: Path, entry: dict[str, Any]) -> Path:
    """The file a manifest entry names; UnsafeFileError if the name leaves the folder."""
    name = entry.get("file")
    if not isinstance(name, str) or not is_inside(folder, name):
        raise UnsafeFileError(f"{folder / MANIFEST_NAME} lists a file outside its folder ({name!r}); re-export it")
    return folder / name


def _parse(path: Path) -> Any:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise BadInputError(f"{path} is {path.stat().st_size:,} bytes, far too large for a manifest; export again")
    try:
        text = path.read_bytes()
    except OSError as e:
        raise BadInputError(f"{path} is unreadable ({e.strerror or e.__class__.__name__}); export again") from None
    return load_json_text(text, str(path))


def _export_hint(folder: Path) -> str:
    """What to run instead: the export folder beside it, or how to make one (a run folder is not one)."""
    if (folder / "export" / MANIFEST_NAME).is_file():
        return f"did you mean {folder / 'export'}?"
    if (folder / "best.pt").is_file():
        return (
            f"it looks like a training run; export it with `rtool export {folder / 'best.pt'}` and use "
            f"{folder / 'export'}"
        )
    return "make one with `rtool export CHECKPOINT --out FOLDER` and pass that folder"


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    """The folder's ``manifest.json``, with its shape checked; BadInputError (one line) otherwise."""
    path = Path(export_dir) / MANIFEST_NAME
    if Path(export_dir).is_file():
        raise BadInputError(f"{export_dir} is a file, not an export folder; make one with `rtool export {export_dir}`")
    if not path.is_file():
        raise BadInputError(f"{export_dir} has no {MANIFEST_NAME}; {_export_hint(Path(export_dir))}")
    manifest = _parse(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), list):
        raise BadInputError(f"{path} lists no artifacts; export again")
    version = manifest.get("manifest_version")
    if type(version) is not int or version < 1:
        raise BadInputError(f"{path} has no valid manifest_version ({version!r}); export again")
    if version > MANIFEST_VERSION:
        raise BadInputError(f"{path} was written by a newer rtool (manifest v{version}); upgrade rtool")
    for entry in manifest["artifacts"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise BadInputError(f"{path} holds a malformed entry ({str(entry)[:60]}); export again")
    return manifest


def write_manifest(export_dir: Path, manifest: dict[str, Any]) -> Path:
    path = export_dir / MANIFEST_NAME
    atomic_write_text(path, json.dumps({"manifest_version": MANIFEST_VERSION, **manifest}, indent=2) + "\n")
    return path


def companions(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The files recorded with an entry that belong to it (an OpenVINO IR's .bin weights), each with its sha256."""
    found = entry.get("companions")
    if not isinstance(found, list):
        return []
    return [c for c in found if isinstance(c, dict) and isinstance(c.get("file"), str)]


def _file_problem(folder: Path, record: dict[str, Any]) -> str:
    """Why one recorded file (an entry or a companion) is not what was exported; '' when it is."""
    name = record["file"]
    if not is_inside(folder, name):
        return f"{name!r} points outside the export folder"
    path = folder / name
    if not path.is_file():
        return f"{name} is listed but missing"
    if path.stat().st_size != record.get("size"):
        return f"{name} has {path.stat().st_size} bytes, the manifest says {record.get('size')}"
    if sha256_file(path) != record.get("sha256"):
        return f"{name} does not match its sha256 (changed after export)"
    return ""


def verify_manifest(export_dir: str | Path) -> list[str]:
    """Problems with the folder against its manifest (missing files, sizes, sha256); empty when all is well."""
    folder = Path(export_dir)
    records = [r for entry in read_manifest(folder)["artifacts"] for r in (entry, *companions(entry))]
    return [problem for problem in (_file_problem(folder, record) for record in records) if problem]


def verify_sha256(path: Path, entry: dict[str, Any]) -> None:
    """Refuse a file (or a companion beside it) whose bytes differ from what its manifest recorded at export,
    or whose record holds no sha256."""
    for record in (entry, *companions(entry)):
        name = Path(record["file"]).name if record is not entry else path.name
        if record is not entry and Path(record["file"]).parent != Path(str(entry.get("file"))).parent:
            raise UnsafeFileError(f"{MANIFEST_NAME} lists {record['file']} with {path.name} but not beside it")
        target = path if record is entry else path.parent / name
        if record is not entry and not target.is_file():
            raise BadInputError(f"{name}, which {path.name} needs, is missing beside it; re-export")
        expected = record.get("sha256")
        if not isinstance(expected, str) or not expected:
            raise UnsafeFileError(
                f"{MANIFEST_NAME} lists {name} without a sha256, so its bytes cannot be checked; "
                f"re-export it rather than run it"
            )
        if sha256_file(target) != expected:
            raise UnsafeFileError(
                f"{name} does not match its {MANIFEST_NAME} (sha256 differs): it changed "
                f"after export; re-export it rather than run it"
            )


def written_by_rtool(folder: Path, entry: dict[str, Any], patterns: Iterable[re.Pattern[str]]) -> bool:
    """True only if the entry names a file rtool writes (one of ``patterns``) whose bytes are the ones recorded.

    A name added to the manifest by hand, a file replaced by the user, a link:
    all False, so rtool never removes them.
    """
    name = entry.get("file")
    if not isinstance(name, str) or not is_inside(folder, name) or not any(p.fullmatch(name) for p in patterns):
        return False
    path = folder / name
    if path.is_symlink() or not path.is_file():
        return False
    try:
        return sha256_file(path) == entry.get("sha256")
    except BadInputError:
        return False
