"""What the OpenVINO exporter and runtime share: the card's place in the IR, the CPU's abilities, and compiling
for the CPU at an explicit inference precision.

OpenVINO's CPU plugin picks the inference precision itself unless told: on a
CPU with AMX or AVX512-BF16 an FP32 model is computed in bf16 (ResNet-18 logits
2.3e-2 off eager). rtool always passes ``INFERENCE_PRECISION_HINT`` and reads
back what the compiled model really uses, because a hint the CPU cannot follow
(bf16 on an AVX2-only CPU) is dropped silently, not refused.
"""

from __future__ import annotations

import functools
from typing import Any

from toolkit.errors import UnavailableError

CARD_KEY = ["rtool", "card"]  # rt_info path of the ModelCard (JSON) inside the IR's .xml
PRECISION_KEY = ["rtool", "precision"]  # rt_info path of the rtool precision the IR was written for
INSTALL_HINT = "pip install openvino"
# rtool precision -> the CPU inference precision it asks for. FP16 IRs hold FP16 weights; the CPU computes f16
# only where it has the instructions (else f32, said in the runtime's device line). INT8 IRs run their
# quantized layers in int8 whatever the hint; the hint sets the precision of the layers left in float.
HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
CAPABILITY = {"f16": "FP16", "bf16": "BF16"}  # OPTIMIZATION_CAPABILITIES entry a hint needs


def openvino_missing() -> str:
    """'' if the openvino package imports, else the one-line reason."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return f"openvino is not installed ({INSTALL_HINT})"
    return ""


@functools.lru_cache(maxsize=1)
def core() -> Any:
    """One OpenVINO Core per process (creating one loads the plugins)."""
    import openvino as ov

    return ov.Core()


@functools.lru_cache(maxsize=1)
def cpu_description() -> tuple[str, tuple[str, ...]]:
    """(CPU name, OpenVINO's OPTIMIZATION_CAPABILITIES for it, e.g. ('FP32', 'INT8', 'BF16'))."""
    cpu = core()
    return str(cpu.get_property("CPU", "FULL_DEVICE_NAME")), tuple(cpu.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def precision_support(precision: str) -> tuple[bool, str]:
    """(True, '') where this CPU computes ``precision`` as asked; bf16 needs AMX or AVX512-BF16."""
    missing = openvino_missing()
    if missing:
        return False, missing
    if precision != "bf16":
        return True, ""
    name, capabilities = cpu_description()
    if CAPABILITY["bf16"] in capabilities:
        return True, ""
    return False, (
        f"this CPU ({name}) does not compute bf16: OpenVINO lists {', '.join(capabilities)} "
        f"(bf16 needs AMX or AVX512-BF16)"
    )


def inference_hint(precision: str) -> str:
    """The INFERENCE_PRECISION_HINT for an IR of ``precision`` on this CPU (f16 falls back to f32 where absent)."""
    hint = HINTS.get(precision, "f32")
    needed = CAPABILITY.get(hint)
    if needed and needed not in cpu_description()[1]:
        if precision == "bf16":
            raise UnavailableError(precision_support("bf16")[1])
        return "f32"
    return hint


def compile_for_cpu(model: Any, precision: str, threads: int | None = None) -> tuple[Any, str]:
    """(compiled model, the inference precision it really uses), compiled for the CPU at an explicit hint.

    UnavailableError where the CPU would not compute what is asked (OpenVINO would fall back silently).
    """
    hint = inference_hint(precision)
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core().compile_model(model, "CPU", config)
    used = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if _short_type(used) != hint:
        raise UnavailableError(
            f"OpenVINO compiled the model in {_short_type(used)} when {hint} was asked for; this CPU "
            f"({cpu_description()[0]}) cannot run {precision} as exported"
        )
    return compiled, hint


def _short_type(text: str) -> str:
    """OpenVINO's element type as text ("<Type: 'float32'>", 'f32', 'bf16') -> 'f32' / 'f16' / 'bf16'."""
    lowered = text.lower()
    for long, short in (("bfloat16", "bf16"), ("bf16", "bf16"), ("float16", "f16"), ("f16", "f16")):
        if long in lowered:
            return short
    return "f32" if "32" in lowered else lowered
