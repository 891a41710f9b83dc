"""Command-line flags generated from a settings dataclass: a default, a help text or a bound is written once.

A field made with ``setting(default, help, ...)`` carries a ``Flag`` in its metadata (help text, choices,
numeric range). ``click_options(cls)`` turns every such field into a click option (``batch_size`` becomes
``--batch-size``; a bool becomes an on/off flag), and ``check_settings(obj)`` applies the same rules to an
instance built in code, so the API and the command line refuse the same values. Numbers must be finite:
click's FloatRange lets ``nan`` through every bound. ``run_command`` runs a click command with rtool's
contract: an error the user can fix is one line and its exit code (2 bad input, 1 a failed check).
"""

from __future__ import annotations

import math
import os
import re
import sys
import typing
from dataclasses import Field, dataclass, field, fields
from typing import Any, Callable, NoReturn, TypeVar

import click

from toolkit.errors import BadInputError, RtoolError

Command = TypeVar("Command", bound=Callable[..., Any])
T = TypeVar("T")
MAX_TEXT = 4096  # longest text setting: a path or a name


@dataclass(frozen=True)
class Flag:
    """How a setting appears on the command line and which values it accepts."""

    help: str
    choices: tuple[str, ...] = ()
    low: int | float | None = None
    high: int | float | None = None
    low_open: bool = False  # True: the bound itself is refused
    high_open: bool = False
    pattern: str | None = None  # text settings: the whole value must match this regular expression
    what: str | None = None  # what a value is called in messages ("calibration method")

    def describe_range(self) -> str:
        """The accepted range in click's words (``x>=1``, ``0<=x<1``)."""
        left = "<" if self.low_open else "<="
        right = "<" if self.high_open else "<="
        if self.high is None:
            return f"x{'>' if self.low_open else '>='}{self.low}"
        if self.low is None:
            return f"x{right}{self.high}"
        return f"{self.low}{left}x{right}{self.high}"

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this setting, or None when it is accepted."""
        if self.choices:
            unknown = f"unknown {self.what}; " if self.what else ""
            return None if value in self.choices else f"{unknown}choose one of: {', '.join(self.choices)}"
        if isinstance(value, str):
            return _text_problem(value, self.pattern, self.what)
        if self.low is None and self.high is None and not isinstance(value, float):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "not a number"
        if not math.isfinite(value):
            return "not a finite number"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return f"not in the range {self.describe_range()}" if too_low or too_high else None


def _text_problem(value: str, pattern: str | None, what: str | None = None) -> str | None:
    """Text settings are one line of at most MAX_TEXT characters (names and paths, never documents)."""
    if len(value) > MAX_TEXT or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return f"not one line of text (no control characters, at most {MAX_TEXT} characters)"
    if pattern and not re.fullmatch(pattern, value):
        return f"not {what}" if what else f"not allowed here (expected {pattern})"
    return None


def setting(default: Any, help: str, **rules: Any) -> Any:
    """A dataclass field whose default, help text and accepted values also make its command-line flag."""
    return field(default=default, metadata={"flag": Flag(help=help, **rules)})


def flag_name(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def check_settings(obj: Any) -> None:
    """Refuse, in one line, the first field of ``obj`` whose value its ``Flag`` does not accept (None is a default).

    A settings class may add a ``validate()`` method for rules that span fields or ask a library.
    """
    for f in fields(obj):
        rule, value = f.metadata.get("flag"), getattr(obj, f.name)
        problem = None if rule is None or value is None else rule.problem(value)
        if problem:
            raise BadInputError(f"{flag_name(f.name)} {value!r}: {problem}")
    if hasattr(obj, "validate"):
        obj.validate()


def from_values(cls: type[T], values: dict[str, Any]) -> T:
    """A checked instance of the settings class ``cls`` from the values it knows (None keeps the default)."""
    known = {f.name for f in fields(cls)}
    instance = cls(**{k: v for k, v in values.items() if k in known and v is not None})
    check_settings(instance)
    return instance


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange that also refuses nan and inf (nan passes every bound comparison)."""

    name = "float range"  # as click names its FloatRange in --help

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


def _value_type(hint: Any) -> Any:
    """``int | None`` -> int."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _click_type(kind: Any, rule: Flag) -> click.ParamType:
    if rule.choices:
        return click.Choice(rule.choices)
    bounds = dict(min=rule.low, max=rule.high, min_open=rule.low_open, max_open=rule.high_open)
    if kind is int:
        return click.IntRange(**bounds)
    if kind is float:
        return FiniteFloatRange(**bounds)
    return click.STRING


def _declaration(f: Field, kind: Any, rule: Flag) -> tuple[list[str], dict[str, Any]]:
    """The click option's names and settings for one field."""
    name = flag_name(f.name)
    if kind is bool:  # off by default: a plain flag; on (or None: decided later) by default: --x/--no-x
        declaration = name if f.default is False else f"{name}/--no-{name[2:]}"
        return [declaration, f.name], dict(
            is_flag=True, default=f.default, show_default=bool(f.default), help=rule.help
        )
    return [name, f.name], dict(
        type=_click_type(kind, rule), default=f.default, show_default=f.default is not None, help=rule.help
    )


def _option(f: Field, kind: Any, rule: Flag) -> Callable[[Command], Command]:
    names, settings = _declaration(f, kind, rule)
    return click.option(*names, **settings)


def click_params(classes: typing.Iterable[type]) -> list[click.Option]:
    """One click option per ``setting`` field of each class: for commands that add them when they run."""
    params = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.metadata.get("flag") is not None:
                names, settings = _declaration(f, _value_type(hints[f.name]), f.metadata["flag"])
                params.append(click.Option(names, **settings))
    return params


def click_options(cls: type) -> Callable[[Command], Command]:
    """Decorate a click command with one option per ``setting`` field of the dataclass ``cls``, in field order."""
    hints = typing.get_type_hints(cls)

    def decorate(command: Command) -> Command:
        for f in reversed(fields(cls)):
            rule = f.metadata.get("flag")
            if rule is not None:
                command = _option(f, _value_type(hints[f.name]), rule)(command)
        return command

    return decorate


def given_on_command_line(ctx: click.Context, names: typing.Iterable[str]) -> set[str]:
    """The options the user typed (not those left at their defaults)."""
    return {name for name in names if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}


def one_line(text: str) -> str:
    """A message as one line: line breaks (also those echoed from user input) become spaces."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def run_command(command: click.Command, argv: list[str] | None = None, prog_name: str | None = None) -> NoReturn:
    """Run ``command`` and exit with rtool's codes: 0 ok, 1 a check failed, 2 bad input, 130 interrupted, 3 a bug.

    Every error but a bug is one ``rtool: error:`` line; a bug is one line too, with its traceback on
    request (RTOOL_DEBUG=1).
    """
    try:
        command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("rtool: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (`rtool infer ... | head -1`): not a failed check
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except click.ClickException as e:
        context = getattr(e, "ctx", None) or click.get_current_context(silent=True)
        hint = f" (see `{context.command_path} --help`)" if context else f" (see `{prog_name or 'rtool'} --help`)"
        click.echo(f"rtool: error: {one_line(e.format_message())}{hint}", err=True)
        sys.exit(2)
    except RtoolError as e:
        click.echo(f"rtool: error: {one_line(str(e))}", err=True)
        sys.exit(e.exit_code)
    except Exception as e:  # a bug, not bad input
        if os.environ.get("RTOOL_DEBUG"):
            raise
        click.echo(
            f"rtool: internal error: {e.__class__.__name__}: {one_line(str(e))} (set RTOOL_DEBUG=1 for the traceback)",
            err=True,
        )
        sys.exit(3)
    sys.exit(0)


def comma_list(
    value: str | typing.Iterable[str] | None,
    allowed: typing.Sequence[str] | None = None,
    flag: str = "",
    what: str = "",
) -> list[str]:
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
