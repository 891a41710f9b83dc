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
import sys
import typing
from dataclasses import Field, dataclass, field, fields
from typing import Any, Callable, NoReturn, TypeVar

import click

from toolkit.errors import BadInputError, RtoolError

Command = TypeVar("Command", bound=Callable[..., Any])


@dataclass(frozen=True)
class Flag:
    """How a setting appears on the command line and which values it accepts."""

    help: str
    choices: tuple[str, ...] = ()
    low: int | float | None = None
    high: int | float | None = None
    low_open: bool = False  # True: the bound itself is refused
    high_open: bool = False

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
            return None if value in self.choices else f"choose one of: {', '.join(self.choices)}"
        if self.low is None and self.high is None and not isinstance(value, float):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "not a number"
        if not math.isfinite(value):
            return "not a finite number"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return f"not in the range {self.describe_range()}" if too_low or too_high else None


def setting(default: Any, help: str, **rules: Any) -> Any:
    """A dataclass field whose default, help text and accepted values also make its command-line flag."""
    return field(default=default, metadata={"flag": Flag(help=help, **rules)})


def flag_name(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def check_settings(obj: Any) -> None:
    """Refuse, in one line, the first field of ``obj`` whose value its ``Flag`` does not accept (None is a default)."""
    for f in fields(obj):
        rule, value = f.metadata.get("flag"), getattr(obj, f.name)
        problem = None if rule is None or value is None else rule.problem(value)
        if problem:
            raise BadInputError(f"{flag_name(f.name)} {value!r}: {problem}")


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


def _option(f: Field, kind: Any, rule: Flag) -> Callable[[Command], Command]:
    name = flag_name(f.name)
    if kind is bool:  # off by default: a plain flag; on by default: --x/--no-x
        declaration = f"{name}/--no-{name[2:]}" if f.default else name
        return click.option(declaration, f.name, is_flag=True, default=f.default, show_default=bool(f.default),
                            help=rule.help)
    return click.option(name, f.name, type=_click_type(kind, rule), default=f.default,
                        show_default=f.default is not None, help=rule.help)


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
    except click.ClickException as e:
        context = getattr(e, "ctx", None)
        hint = f" (see `{context.command_path} --help`)" if context else ""
        click.echo(f"rtool: error: {one_line(e.format_message())}{hint}", err=True)
        sys.exit(2)
    except RtoolError as e:
        click.echo(f"rtool: error: {one_line(str(e))}", err=True)
        sys.exit(e.exit_code)
    except Exception as e:  # a bug, not bad input
        if os.environ.get("RTOOL_DEBUG"):
            raise
        click.echo(f"rtool: internal error: {e.__class__.__name__}: {one_line(str(e))} (set RTOOL_DEBUG=1 for the "
                   f"traceback)", err=True)
        sys.exit(3)
    sys.exit(0)
