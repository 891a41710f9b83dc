"""Typed options: a dataclass is the one place an option's default, range and help live.

A module declares its settings as a frozen dataclass whose fields are made
with ``option(...)``; ``check`` validates an instance (one BadInputError line
naming the flag), ``from_values`` builds one from whatever the CLI or a
caller passed, and ``click_options`` turns the fields into command-line flags,
so the CLI never restates a default.

    @dataclass(frozen=True)
    class OnnxOptions:
        opset: int = option(18, "ONNX opset.", low=18, high=30)
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Callable, TypeVar

from toolkit.errors import BadInputError

T = TypeVar("T")
MAX_TEXT = 4096  # longest text option: a path or a name, never a document


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None, low: float | None = None,
           high: float | None = None, flag: str | None = None, pattern: str | None = None,
           what: str | None = None) -> Any:
    """A dataclass field with what ``check`` and ``click_options`` need: help, choices, bounds, flag name,
    and ``what`` the value is called in messages ("calibration method")."""
    meta = {"help": help, "choices": choices, "low": low, "high": high, "flag": flag, "pattern": pattern,
            "what": what}
    return dataclasses.field(default=default, metadata=meta)


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _base_type(cls: type, field: dataclasses.Field) -> type:
    """int, float, str or bool from the annotation (``int | None`` -> int)."""
    hint = typing.get_type_hints(cls)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _check_number(name: str, value: Any, kind: type, low: float | None, high: float | None) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInputError(f"{name} must be a number, got {value!r}")
    if kind is int and (isinstance(value, float) and not value.is_integer()):
        raise BadInputError(f"{name} must be a whole number, got {value!r}")
    if not math.isfinite(value):
        raise BadInputError(f"{name} must be a finite number, got {value!r}")
    if low is not None and value < low:
        raise BadInputError(f"{name} must be at least {low:g}, got {value:g}")
    if high is not None and value > high:
        raise BadInputError(f"{name} must be at most {high:g}, got {value:g}")
    return int(value) if kind is int else float(value)


def _check_text(name: str, value: Any, meta: Any) -> str:
    import re

    if not isinstance(value, str):
        raise BadInputError(f"{name} must be text, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        what = meta.get("what") or f"{name} value"
        raise BadInputError(f"unknown {what} '{value}'; choose one of: {', '.join(meta['choices'])}")
    if len(value) > MAX_TEXT or any(ord(c) < 32 for c in value):
        raise BadInputError(f"{name} must be one line of text (no control characters, at most {MAX_TEXT})")
    if meta.get("pattern") and not re.fullmatch(meta["pattern"], value):
        raise BadInputError(f"{name}: '{value}' is not allowed (expected {meta['pattern']})")
    return value


def check(instance: T) -> T:
    """Validate every field of an options instance; one BadInputError line naming the flag."""
    cls = type(instance)
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if value is None:
            continue
        kind, meta, name = _base_type(cls, field), field.metadata, flag_name(field)
        if kind is bool:
            if not isinstance(value, bool):
                raise BadInputError(f"{name} is a switch (true or false), got {value!r}")
        elif kind in (int, float):
            object.__setattr__(instance, field.name, _check_number(name, value, kind, meta.get("low"),
                                                                   meta.get("high")))
        else:
            _check_text(name, value, meta)
    if hasattr(instance, "validate"):  # checks that span fields or ask a library (e.g. the opsets it runs)
        instance.validate()
    return instance


def from_values(cls: type[T], values: dict[str, Any]) -> T:
    """An instance of ``cls`` from the values it knows in ``values``; None (flag not given) keeps the default."""
    known = {f.name for f in dataclasses.fields(cls)}
    return check(cls(**{k: v for k, v in values.items() if k in known and v is not None}))


def click_params(classes: typing.Iterable[type]) -> list[Any]:
    """One click option per field of ``classes``; defaults stay None so the dataclass keeps them."""
    import click

    params = []
    for cls in classes:
        for field in dataclasses.fields(cls):
            kind, meta = _base_type(cls, field), field.metadata
            default = "" if field.default in (None, dataclasses.MISSING, False) else f" (default {field.default})"
            if kind is bool:
                params.append(click.Option([flag_name(field), field.name], is_flag=True, default=None,
                                           help=meta["help"]))
                continue
            click_type: Any = {int: click.INT, float: click.FLOAT}.get(kind, click.STRING)
            if meta.get("choices"):
                click_type = click.Choice(meta["choices"])
            params.append(click.Option([flag_name(field), field.name], type=click_type, default=None,
                                       help=meta["help"] + default))
    return params


def click_options(classes: typing.Iterable[type]) -> Callable[[Callable], Callable]:
    """A decorator adding ``click_params(classes)`` to a click command function."""
    params = click_params(classes)

    def apply(command: Callable) -> Callable:
        command.__dict__.setdefault("__click_params__", []).extend(reversed(params))
        return command

    return apply


def comma_list(value: str | typing.Iterable[str] | None, allowed: typing.Sequence[str] | None = None,
               flag: str = "", what: str = "") -> list[str]:
    """'a, b,,c' (or an iterable) -> ['a', 'b', 'c'], lower-cased; each checked against ``allowed`` when given."""
    if value is None:
        return []
    items = [part for text in ([value] if isinstance(value, str) else value) for part in str(text).split(",")]
    names = list(dict.fromkeys(i.strip().lower() for i in items if i and i.strip()))
    unknown = [n for n in names if allowed is not None and n not in allowed]
    if unknown:
        where, kind = (f"{flag}: " if flag else ""), (f"{what} " if what else "")
        raise BadInputError(f"{where}unknown {kind}'{unknown[0]}'; choose from: {', '.join(allowed or [])}")
    return names
