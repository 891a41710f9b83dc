"""OpenVINO (IR ``.xml`` + ``.bin``) on the CPU, compiled at the IR's own inference precision.

The precision the IR was exported for (``rtool/precision`` in its rt_info,
else its manifest entry) picks ``INFERENCE_PRECISION_HINT``; the compiled
model is asked what it really uses, and an IR whose precision this CPU
cannot compute (bf16 without AMX or AVX512-BF16) is refused with the reason
instead of being run in another precision under its name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporters import PRECISIONS
from exporters.openvino_common import CARD_KEY, PRECISION_KEY, compile_for_cpu, core, openvino_missing
from runtimes import Runtime, error_summary, physical_cores, register_runtime
from runtimes.cards import card_beside, card_from_json, check_card_fits_input, manifest_entry
from toolkit.devices import parse_device
from toolkit.errors import BadInputError

MAX_XML_BYTES = 64 << 20  # an IR's .xml is the graph only (weights are in the .bin): ResNets take well under 1 MB


def _rt_info(model: object, key: list[str]) -> str | None:
    if not model.has_rt_info(key):  # type: ignore[attr-defined]
        return None
    return str(model.get_rt_info(key).astype(str))  # type: ignore[attr-defined]


def ir_precision(model: object, path: Path) -> str:
    """The rtool precision an IR was written for: its rt_info, else its manifest entry, else fp32."""
    stored = _rt_info(model, PRECISION_KEY)
    if stored is None:
        found = manifest_entry(path)
        stored = str(found[1].get("precision")) if found else "fp32"
    if stored not in PRECISIONS:
        raise BadInputError(f"{path.name} says it is '{stored}'; rtool knows {', '.join(PRECISIONS)}; re-export it")
    return stored


@register_runtime
class OpenVinoRuntime(Runtime):
    """Options: ``threads`` (INFERENCE_NUM_THREADS; default: physical cores)."""

    name = "openvino"
    suffixes = (".xml",)
    formats = ("openvino",)
    order = 32
    devices = ("cpu",)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        missing = openvino_missing()
        return not missing, missing

    def load(self, artifact_path: str | Path, device: str = "auto") -> None:
        path = self.expect_file(artifact_path)
        if parse_device(device)[0] == "cuda":  # rtool compiles for OpenVINO's CPU device only
            self.notes.append(f"--device {device}: the openvino runtime runs on the CPU (OpenVINO's CPU device)")
        weights = path.with_suffix(".bin")
        if not weights.is_file():
            raise BadInputError(f"{path.name} needs its weights {weights.name} beside it; copy both files")
        if path.stat().st_size > MAX_XML_BYTES:
            raise BadInputError(f"{path.name} is {path.stat().st_size:,} bytes, not an IR graph rtool wrote")
        try:
            model = core().read_model(str(path), str(weights))
        except RuntimeError as e:
            raise BadInputError(f"{path.name} is not a readable OpenVINO IR ({error_summary(e)})") from None
        stored = _rt_info(model, CARD_KEY)
        self.card = card_from_json(stored, path) if stored else card_beside(path)
        if self.card is None:
            raise BadInputError(f"{path.name} carries no rtool model card (rt_info rtool/card); export it with rtool")
        if len(model.inputs) != 1:
            raise BadInputError(f"{path.name} takes {len(model.inputs)} inputs; rtool models take one image batch")
        shape = model.inputs[0].get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
        check_card_fits_input(self.card, dims, False, path)
        self.precision = ir_precision(model, path)
        threads = self.options.get("threads") or physical_cores()
        try:
            compiled, hint = compile_for_cpu(model, self.precision, threads)
        except RuntimeError as e:
            raise BadInputError(f"OpenVINO could not compile {path.name} ({error_summary(e)})") from None
        self.request = compiled.create_infer_request()
        self.device = f"CPU ({hint})"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self.request.infer({0: batch}, share_inputs=True)[0]
        except RuntimeError as e:
            raise BadInputError(
                f"OpenVINO failed to run this model ({error_summary(e)}); the file may be corrupt, re-export it"
            ) from None

    def close(self) -> None:
        self.request = None
