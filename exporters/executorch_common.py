"""What the ExecuTorch exporter and runtime share: quiet imports, the card inside the ``.pte``, loading a program.

A ``.pte`` holds methods, not metadata, so rtool stores the ModelCard (UTF-8
JSON as a uint8 tensor) as a constant method beside ``forward``:
``rtool_card``; any ExecuTorch runtime can read it
(``program.load_method("rtool_card")``). The largest batch a program takes
is the one its memory was planned for, read from ``forward``'s metadata.

Importing ExecuTorch logs a torch pytree deprecation warning, and its
XNNPACK thread pool prints cpuinfo lines on stderr (from C++) when it starts;
neither is for rtool's user, so both are kept out of the output (set
``RTOOL_DEBUG=1`` to see them).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

from toolkit.errors import BadInputError, UnavailableError

CARD_METHOD = "rtool_card"
INSTALL_HINT = "pip install 'rtool[edge]'"


# What running and lowering a program need. Found by name, not imported: importing ExecuTorch takes seconds (it
# parses its edge-dialect operator tables), which every command that lists runtimes would pay for nothing.
PACKAGES = ("executorch.runtime", "executorch.extension.pybindings.portable_lib", "executorch.backends.xnnpack")


def executorch_missing() -> str:
    """'' if ExecuTorch's runtime and XNNPACK lowering are installed, else the one-line reason."""
    try:
        found = all(importlib.util.find_spec(name) is not None for name in PACKAGES)
    except (ImportError, ValueError):  # a parent package that is missing or cannot be read
        found = False
    return "" if found else f"executorch is not installed ({INSTALL_HINT})"


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """torch's pytree logger warns when ExecuTorch registers its enums, and ExecuTorch's Python bindings warn
    that they are experimental; rtool's user has nothing to do about either."""
    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="This API is experimental")
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Send what C++ code writes to file descriptor 2 to /dev/null meanwhile (Python's own errors still raise)."""
    if os.environ.get("RTOOL_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@functools.lru_cache(maxsize=1)
def _runtime() -> Any:
    """ExecuTorch's runtime, imported on first use; an installation that does not import is one line."""
    try:
        with quiet_logs(), quiet_native_stderr():  # its native library prints cpuinfo lines as it loads
            from executorch.runtime import Runtime

            return Runtime.get()
    except ImportError as e:
        reason = str(e).splitlines()[0][:140] if str(e) else type(e).__name__
        raise UnavailableError(f"executorch does not import ({reason}); reinstall it: {INSTALL_HINT}") from None


def load_program(source: Path | bytes, threads: int | None = None) -> Any:
    """An ExecuTorch Program from a file or bytes, flatbuffer verified (``Verification.InternalConsistency``)."""
    runtime = _runtime()
    from executorch.runtime import Verification

    set_threads(threads)
    name = source.name if isinstance(source, Path) else "the program"
    try:
        with quiet_native_stderr():
            data = source if isinstance(source, bytes) else str(source)
            return runtime.load_program(data, verification=Verification.InternalConsistency)
    except (RuntimeError, ValueError) as e:
        raise BadInputError(f"{name} is not a loadable ExecuTorch program ({str(e).splitlines()[0][:140]})") from None


def set_threads(threads: int | None) -> None:
    """XNNPACK's thread pool (one per process) at ``threads`` threads."""
    if not threads:
        return
    from executorch.extension.pybindings import portable_lib

    with quiet_native_stderr():  # the pool starts on first use and prints cpuinfo lines then
        if portable_lib._threadpool_get_thread_count() != threads:
            portable_lib._unsafe_reset_threadpool(int(threads))


def planned_batch(method: Any) -> int:
    """The largest batch a loaded ``forward`` takes: its input's memory is planned for that many images."""
    return int(method.metadata.input_tensor_meta(0).sizes()[0])


def stored_card_json(program: Any) -> str | None:
    """The ModelCard JSON stored in the program (constant method ``rtool_card``), or None."""
    if CARD_METHOD not in program.method_names:
        return None
    with quiet_native_stderr():
        value = program.load_method(CARD_METHOD).execute([])[0]
    try:
        return bytes(value.numpy().astype("uint8").tolist()).decode("utf-8")
    except (AttributeError, UnicodeDecodeError):
        raise BadInputError(f"the program's {CARD_METHOD} is not UTF-8 JSON; re-export it") from None
