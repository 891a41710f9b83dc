"""The gate at export: a file that misses its precision's parity thresholds is not written.

Every exporter measures its file against the eager model before it exists
(``exporters.validation``): FP32 files on 16 test images, FP16 and INT8 files
on ``--gate-images`` held-out test images. The pipeline then holds those
figures to the thresholds ``rtool parity`` uses for the same precision
(``toolkit.thresholds``), so a badly quantized file (or engine) never lands in
an export folder looking good. ``--keep-failed`` writes it anyway, marked
``failed`` in the manifest, and the command still exits 1.

On random pixels (the card names no data set, or it is not on this machine)
there are no labels and noise says nothing about accuracy: the gate records
that it did not run, and FP32 files keep their exact-match check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exporters import Artifact
from toolkit.errors import CheckFailedError
from toolkit.thresholds import Thresholds, check_thresholds


@dataclass
class Measurement:
    """An exported file's validation figures in the units parity's thresholds are written in."""

    agreement: float | None  # percent
    max_abs_diff_rel: float | None
    accuracy_delta: float | None  # points


def measurement(stats: dict[str, Any]) -> Measurement | None:
    """The figures of ``exporters.validation.compare``; None where the images had no labels (random pixels)."""
    if stats.get("accuracy_delta") is None:
        return None
    return Measurement(100.0 * stats["top1_agreement"], stats.get("max_abs_diff_rel"), stats["accuracy_delta"])


def verdict(stats: dict[str, Any], limits: Thresholds) -> dict[str, Any]:
    """The gate's record for one file: passed or failed (with each broken threshold), or why it did not run."""
    measured = measurement(stats)
    if measured is None:
        return {
            "status": "not run",
            "reason": f"no labelled held-out images ({stats.get('inputs', 'none')}): the card names no data set "
            "or it is not on this machine (--data-dir)",
        }
    broken = check_thresholds(measured, limits)
    return {
        "status": "failed" if broken else "passed",
        "thresholds": limits.describe(),
        "failed": broken,
        "images": stats.get("images"),
        "inputs": stats.get("inputs"),
    }


def apply_gate(artifacts: list[Artifact], thresholds: dict[str, Thresholds], keep_failed: bool) -> list[str]:
    """Record the gate's verdict in each artifact's validation; refuse a failed one unless ``keep_failed``.

    Returns one line per failed file that was kept (the command exits 1 for them after writing).
    """
    kept = []
    for artifact in artifacts:
        if artifact.format == "checkpoint" or not artifact.validation:  # the eager copy; files that are not models
            continue
        limits = thresholds.get(artifact.precision, Thresholds())
        result = verdict(artifact.validation, limits)
        artifact.validation["gate"] = result
        if result["status"] != "failed":
            continue
        what = (
            f"{artifact.path.name} misses the {artifact.precision} parity thresholds on {result['inputs']}: "
            f"{'; '.join(result['failed'])}"
        )
        if not keep_failed:
            raise CheckFailedError(
                f"{what}; not written (nothing was; --keep-failed writes it, marked failed in the manifest)"
            )
        kept.append(what)
    return kept
