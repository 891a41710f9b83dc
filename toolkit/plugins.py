"""Targets that live outside rtool's own packages: plugin modules, imported when the registries load.

A plugin is a Python module that registers formats and runtimes exactly as
rtool's own modules do (``@register_exporter``, ``@register_runtime``). rtool
imports every module named in the ``RTOOL_PLUGINS`` environment variable
(comma-separated) and every ``rtool.plugins`` entry point of installed
packages, once, before it reads a registry. docs/extending.md shows one.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from importlib import metadata

from toolkit.errors import BadInputError

ENV_VAR = "RTOOL_PLUGINS"
ENTRY_POINT_GROUP = "rtool.plugins"
_imported: set[str] = set()
_scanned: set[str] = set()


def load_registry(package: str, path: list[str]) -> None:
    """Import every module of a registry package once (each registers itself), then the plugin modules."""
    if package in _scanned:
        return
    _scanned.add(package)
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")
    import_plugins()


def plugin_modules() -> list[str]:
    """Module names from RTOOL_PLUGINS and from installed packages' ``rtool.plugins`` entry points."""
    named = [name.strip() for name in os.environ.get(ENV_VAR, "").split(",") if name.strip()]
    points = [point.value for point in metadata.entry_points(group=ENTRY_POINT_GROUP)]
    return list(dict.fromkeys(named + points))


def import_plugins() -> None:
    """Import each plugin module once; one line if one cannot be imported."""
    for name in plugin_modules():
        if name in _imported:
            continue
        _imported.add(name)
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise BadInputError(
                f"plugin module '{name}' (from {ENV_VAR} or an {ENTRY_POINT_GROUP} entry point) cannot be imported: {e}"
            ) from None
