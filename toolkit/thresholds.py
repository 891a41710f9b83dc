"""Per-precision thresholds: what a file must keep against the eager model, checked by `rtool export` (the gate
before a file is written) and by `rtool parity` (every runtime on the test set). One definition serves both, so
a file that passes at export passes the same rules in parity.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Protocol

from toolkit.errors import BadInputError

THRESHOLD_LIMITS = {"agreement": 100.0, "accuracy_drop": 100.0, "max_abs_diff": None}  # largest meaningful value


@dataclass
class Thresholds:
    """What a precision must keep; None means not checked.

    agreement: minimum top-1 agreement with eager, in percent.
    max_abs_diff: largest absolute logit difference, as a fraction of the eager logit range.
    accuracy_drop: largest loss of accuracy versus eager, in percentage points.
    """

    agreement: float | None = None
    max_abs_diff: float | None = None
    accuracy_drop: float | None = None

    def describe(self) -> str:
        parts = []
        if self.agreement is not None:
            parts.append(f"agreement >= {self.agreement:g}%")
        if self.max_abs_diff is not None:
            parts.append(f"max abs diff <= {self.max_abs_diff:g} x logit range")
        if self.accuracy_drop is not None:
            parts.append(f"accuracy drop <= {self.accuracy_drop:g} points")
        return ", ".join(parts) or "none"


THRESHOLD_KEYS = tuple(f.name for f in fields(Thresholds))


def default_thresholds() -> dict[str, Thresholds]:
    return {
        "fp32": Thresholds(agreement=99.9, max_abs_diff=1e-3),
        "fp16": Thresholds(agreement=99.5),
        # bf16 keeps 8 significant bits (fp16 keeps 11): OpenVINO's bf16 ResNet-18 logits were 2.3e-2 off
        "bf16": Thresholds(agreement=99.0, accuracy_drop=0.5),
        "int8": Thresholds(agreement=99.0, accuracy_drop=1.0),
    }


def _threshold_value(value: Any, where: str, high: float | None = None) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "off", "")):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadInputError(f"{where}: '{value}' is not a number (or 'none' to switch the check off)") from None
    if not math.isfinite(number) or number < 0:
        raise BadInputError(f"{where}: {value} must be a finite number >= 0")
    if high is not None and number > high:
        raise BadInputError(f"{where}: {value} is above {high:g}, the largest value this threshold can take")
    return number


def apply_threshold(thresholds: dict[str, Thresholds], precision: str, key: str, value: Any, where: str) -> None:
    """Set one threshold, checking the precision, key and value."""
    if precision not in thresholds:
        raise BadInputError(f"{where}: unknown precision '{precision}'; choose one of: {', '.join(thresholds)}")
    if key not in THRESHOLD_KEYS:
        raise BadInputError(f"{where}: unknown threshold '{key}'; choose one of: {', '.join(THRESHOLD_KEYS)}")
    setattr(thresholds[precision], key, _threshold_value(value, where, THRESHOLD_LIMITS.get(key)))


def load_thresholds(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict[str, Thresholds]:
    """Defaults, then a JSON or TOML file, then ``PRECISION.KEY=VALUE`` overrides (flags).

    File layout: ``{"int8": {"agreement": 99.5, "accuracy_drop": 0.5}, "fp32": {"max_abs_diff": 1e-4}}``
    (TOML: an ``[int8]`` table with the same keys).
    """
    thresholds = default_thresholds()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise BadInputError(f"thresholds file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix.lower() == ".toml":
                import tomllib

                data = tomllib.loads(text)
            else:
                data = json.loads(text)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
            raise BadInputError(
                f"thresholds file {path} is not valid {kind} ({str(e).splitlines()[0][:120]})"
            ) from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise BadInputError(
                f"thresholds file {path} must map each precision to its thresholds, e.g. "
                f'{{"int8": {{"agreement": 99.0, "accuracy_drop": 1.0}}}}'
            )
        for precision, values in data.items():
            for key, value in values.items():
                apply_threshold(thresholds, precision, key, value, f"thresholds file {path}")
    for text in overrides:
        name, sep, value = text.partition("=")
        precision, dot, key = name.strip().partition(".")
        if not sep or not dot:
            raise BadInputError(f"--threshold '{text}' is not PRECISION.KEY=VALUE (e.g. int8.agreement=99.5)")
        apply_threshold(thresholds, precision, key.strip(), value.strip(), f"--threshold {text}")
    return thresholds


class Measured(Protocol):
    """What the thresholds are checked against (a parity row, an exported file's validation)."""

    agreement: float | None  # percent
    max_abs_diff_rel: float | None  # max |logit - eager| / eager logit range
    accuracy_delta: float | None  # points versus eager (negative: worse)


def check_thresholds(row: Measured, limits: Thresholds) -> list[str]:
    """The thresholds a measurement breaks, each as 'name value vs limit'."""
    broken = []
    if limits.agreement is not None and row.agreement is not None and row.agreement < limits.agreement:
        broken.append(f"agreement {row.agreement:.2f}% < {limits.agreement:g}%")
    if (
        limits.max_abs_diff is not None
        and row.max_abs_diff_rel is not None
        and row.max_abs_diff_rel > limits.max_abs_diff
    ):
        broken.append(f"max abs diff {row.max_abs_diff_rel:.3g} x logit range > {limits.max_abs_diff:g}")
    if (
        limits.accuracy_drop is not None
        and row.accuracy_delta is not None
        and -row.accuracy_delta > limits.accuracy_drop
    ):
        broken.append(f"accuracy drop {-row.accuracy_delta:.2f} points > {limits.accuracy_drop:g}")
    return broken
