"""Atomic file writing: a file appears under its final name complete, or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from toolkit.errors import BadInputError


def check_writable_dir(directory: str | Path, flag: str = "--out") -> Path:
    """Say in one line why files cannot be written in ``directory``, without creating it.

    Commands call this before long work, so a bad output path fails at once
    instead of after training or a parity run. A missing folder is fine if its
    nearest existing parent is a writable folder (it is created on first write).
    """
    directory = Path(directory)
    existing = directory
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise BadInputError(
            f"cannot create output folder {directory}: {existing} is a file, not a folder; choose another {flag}"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadInputError(f"output folder {existing} is not writable; choose another {flag}")
    return directory


def ensure_writable_dir(directory: str | Path, flag: str = "--out") -> Path:
    """Create ``directory`` (and parents) or say in one line why it cannot be written."""
    directory = check_writable_dir(directory, flag)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInputError(f"cannot create output folder {directory} ({e.strerror}); choose another {flag}") from None
    if not os.access(directory, os.W_OK):
        raise BadInputError(f"output folder {directory} is not writable; choose another {flag}")
    return directory


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success fsync and rename it into place.

    On any error the temporary file is removed and ``final`` is left as it was.
    """
    final = Path(final)
    ensure_writable_dir(final.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the final file gets what open() would give it
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        with contextlib.suppress(OSError):  # make the rename itself durable
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(final: str | Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(final: str | Path, text: str) -> None:
    atomic_write_bytes(final, text.encode("utf-8"))


def cache_dir(*parts: str) -> Path:
    """rtool's folder under the user's cache ($XDG_CACHE_HOME or ~/.cache): timing caches, engine caches."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").joinpath("rtool", *parts)


def slug(text: str) -> str:
    """A file-name-safe form of a name ('NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3')."""
    import re

    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "unknown"
