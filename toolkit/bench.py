"""Latency and throughput of every runtime x precision x batch size, measured in one interleaved run.

All runtimes are loaded side by side and timed in turns (one call each, in a
rotating order, for every iteration), so a burst of load from another process
on a shared machine hits them all alike and the ratios between them stay fair.
SOURCE may be an export folder, a checkpoint, or a model name with an input
shape; the last two are exported to a temporary folder first.
"""

from __future__ import annotations

import math
import platform
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from exporters import PRECISIONS, precisions_of_runtime
from runtimes import (
    Runtime,
    artifact_label,
    artifact_variant,
    available,
    available_memory,
    get_runtime_class,
    list_runtimes,
    open_runtime,
    physical_cores,
)
from runtimes.cards import artifact_runs, skipped_runs
from toolkit.bench_config import BenchSettings, parse_batch_sizes
from toolkit.card import MANIFEST_NAME, ModelCard
from toolkit.errors import BadInputError
from toolkit.flags import check_settings, comma_list
from toolkit.manifest import entry_path, read_manifest, verify_sha256

BLOCK = 5  # timed calls a runtime makes in a row before the next one takes its turn

Progress = Callable[[str, int, int], None]  # (task label, steps just done, steps in the task)


@dataclass
class BenchRow:
    runtime: str
    precision: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # images per second at the mean latency
    target: str | None = None
    artifact: str = ""
    device: str = ""
    format: str | None = None  # the exporter format of the file (onnx, ort, openvino, ...)

    @property
    def label(self) -> str:
        return artifact_label(self.runtime, self.precision, self.target, self.format)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchReport:
    source: str
    model: str
    input_shape: list[int]
    settings: dict[str, Any]
    rows: list[BenchRow]
    unavailable: list[dict[str, str]] = field(default_factory=list)

    def row(
        self, runtime: str, precision: str, batch: int, target: str | None = None, fmt: str | None = None
    ) -> BenchRow | None:
        for r in self.rows:
            if (
                r.runtime == runtime
                and r.precision == precision
                and r.batch == batch
                and (target is None or r.target in (target, None))
                and (fmt is None or r.format in (fmt, None))
            ):
                return r
        return None

    def ratios(self, batch: int = 1) -> dict[str, float]:
        """p50 of each row at ``batch`` divided by eager's p50 (and INT8 CPU by ONNX Runtime FP32)."""
        eager = self.row("eager", "fp32", batch)
        out: dict[str, float] = {}
        if eager:
            for r in self.rows:
                if r.batch == batch and r is not eager:
                    out[f"{r.label} / eager fp32"] = r.p50_ms / eager.p50_ms
        ort = self.row("onnxruntime", "fp32", batch, fmt="onnx")
        int8 = self.row("onnxruntime", "int8", batch, "cpu", fmt="onnx")
        if ort and int8:
            out["onnxruntime int8 (cpu) / onnxruntime fp32"] = int8.p50_ms / ort.p50_ms
        return out

    def fastest(self, batch: int = 1) -> dict[str, dict[str, Any]]:
        """Per precision, the row with the lowest p50 at ``batch``: its label, p50 and ratio to eager fp32."""
        eager = self.row("eager", "fp32", batch)
        best: dict[str, BenchRow] = {}
        for r in self.rows:
            if r.batch == batch and (r.precision not in best or r.p50_ms < best[r.precision].p50_ms):
                best[r.precision] = r
        order = sorted(best, key=lambda p: PRECISIONS.index(p) if p in PRECISIONS else len(PRECISIONS))
        return {
            p: {
                "label": best[p].label,
                "p50_ms": best[p].p50_ms,
                "vs_eager": best[p].p50_ms / eager.p50_ms if eager else None,
            }
            for p in order
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "model": self.model,
            "input_shape": self.input_shape,
            "settings": self.settings,
            "rows": [r.to_dict() for r in self.rows],
            "unavailable": self.unavailable,
            "p50_ratios_batch1": self.ratios(1),
            "fastest_batch1": self.fastest(1),
        }


def check_batch_memory(sizes: list[int], shape: tuple[int, ...], runtimes: int) -> None:
    """Refuse batches whose inputs alone would take a large part of this machine's memory."""
    need = max(sizes) * math.prod(shape) * 4 * max(1, runtimes)
    have = available_memory()
    if have and need > have // 4:
        raise BadInputError(
            f"--batch-sizes {max(sizes)} needs about {need / 2**30:.1f} GiB of input for "
            f"{runtimes} runtimes, more than a quarter of the {have / 2**30:.1f} GiB this machine "
            f"has free; choose smaller batch sizes"
        )


def percentile_row(entry: dict[str, Any], batch: int, times_s: list[float], device: str) -> BenchRow:
    ms = np.asarray(times_s) * 1000.0
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    mean = float(ms.mean())
    return BenchRow(
        runtime=str(entry["runtime"]),
        precision=str(entry["precision"]),
        batch=batch,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=mean,
        throughput=1000.0 * batch / mean,
        target=entry.get("target"),
        artifact=str(entry["file"]),
        device=device,
        format=entry.get("format"),
    )


def timed_rounds(
    runtimes: list[Runtime], batch: np.ndarray, warmup: int, iters: int, tick: Callable[[int], None] | None = None
) -> list[list[float]]:
    """Seconds per call for each runtime, ``iters`` timed calls each after ``warmup`` untimed ones.

    Runtimes take turns in blocks of BLOCK calls, the order rotating every
    round, so drift and bursts of load from other processes reach all of them
    alike. Each turn starts with one untimed call: a thread pool that has just
    finished (ONNX Runtime's spin-waiting workers, OpenMP's) keeps the cores
    busy for a moment, and that moment belongs to neither runtime.
    """
    for runtime in runtimes:
        for _ in range(warmup):
            runtime.infer(batch)
    times: list[list[float]] = [[] for _ in runtimes]
    count = len(runtimes)
    for round_number in range(math.ceil(iters / BLOCK)):
        calls = min(BLOCK, iters - round_number * BLOCK)
        for k in range(count):
            j = (round_number + k) % count
            runtimes[j].infer(batch)
            for _ in range(calls):
                began = time.perf_counter()
                runtimes[j].infer(batch)
                times[j].append(time.perf_counter() - began)
        if tick:
            tick(calls)
    return times


def cpu_description() -> dict[str, Any]:
    """The CPU model and whether it has int8 dot-product instructions (they decide what INT8 gains)."""
    name, flags = platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    vnni = sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    return {
        "cpu": name,
        "physical_cores": physical_cores(),
        "int8_dot_product": ", ".join(vnni) or "none found",
        "python": platform.python_version(),
    }


def select_artifacts(
    manifest: dict[str, Any], runtimes: list[str] | None, precisions: list[str] | None
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(manifest entries to time, one per runtime that runs them, in table order; what cannot be timed here)."""

    def chosen(runtime: Any, precision: Any) -> bool:
        return (runtimes is None or runtime in runtimes) and (precisions is None or precision in precisions)

    runnable, unavailable = [], []
    for runtime, entry in artifact_runs(manifest):
        if not chosen(runtime, entry.get("precision")):
            continue
        ok, why = available(runtime)
        if ok:
            runnable.append({**entry, "runtime": runtime})
        else:
            unavailable.append({"runtime": runtime, "precision": str(entry["precision"]), "reason": why})
    for runtime, skip in skipped_runs(manifest):
        if chosen(runtime, skip.get("precision")):
            unavailable.append(
                {
                    "runtime": runtime,
                    "precision": str(skip.get("precision")),
                    "reason": f"not exported: {skip.get('reason')}",
                }
            )
    listed = {e["runtime"] for e in runnable} | {u["runtime"] for u in unavailable}
    for name in runtimes or list_runtimes():
        ok, why = available(name)
        if not ok and name not in listed:
            unavailable += [
                {"runtime": name, "precision": p, "reason": why} for p in precisions_of_runtime(name) if chosen(name, p)
            ]
    order = list_runtimes()
    runnable.sort(
        key=lambda e: (
            order.index(e["runtime"]) if e["runtime"] in order else len(order),
            PRECISIONS.index(e["precision"]) if e["precision"] in PRECISIONS else 99,
            artifact_variant(e["runtime"], e["precision"], e.get("target"), e.get("format")),
        )
    )
    return runnable, unavailable


def bench_export_dir(
    export_dir: str | Path,
    settings: BenchSettings | None = None,
    *,
    runtimes: Iterable[str] | None = None,
    precisions: Iterable[str] | None = None,
    device: str = "auto",
    source: str | None = None,
    progress: Progress | None = None,
) -> BenchReport:
    """Time every chosen artifact of an export folder; see the module docstring."""
    export_dir = Path(export_dir)
    settings = settings or BenchSettings()
    check_settings(settings)
    sizes, warmup, iters = parse_batch_sizes(settings.batch_sizes), settings.warmup, settings.iters
    threads = settings.threads or physical_cores()
    manifest = read_manifest(export_dir)
    card = ModelCard.from_dict(manifest.get("card") or {})
    runnable, unavailable = select_artifacts(
        manifest,
        comma_list(runtimes, list_runtimes(), "--runtimes") or None,
        comma_list(precisions, PRECISIONS, "--precisions") or None,
    )
    check_batch_memory(sizes, card.input.shape, len(runnable))
    if not runnable:
        raise BadInputError(
            f"nothing to time: {export_dir} holds no runnable artifact for the chosen runtimes and precisions"
        )
    rows: list[BenchRow] = []
    rng = np.random.default_rng(0)
    with ExitStack() as stack:
        loaded = []
        for entry in runnable:
            path = entry_path(export_dir, entry)
            if not path.is_file():
                raise BadInputError(f"{path.name} is listed in {MANIFEST_NAME} but missing; re-export")
            verify_sha256(path, entry)
            loaded.append(stack.enter_context(open_runtime(entry["runtime"], path, device, threads=threads)))
        for size in sizes:
            fits = [k for k, rt in enumerate(loaded) if not rt.max_batch or size <= rt.max_batch]
            unavailable += [
                {
                    "runtime": runnable[k]["runtime"],
                    "precision": str(runnable[k]["precision"]),
                    "reason": f"batch {size} is above the {loaded[k].max_batch} that {runnable[k]['file']} takes",
                }
                for k in range(len(loaded))
                if k not in fits
            ]
            if not fits:
                continue
            batch = rng.standard_normal((size, *card.input.shape)).astype(np.float32)
            label = f"batch {size}: {len(fits)} runtimes x {iters} timed calls"
            tick = (lambda calls, label=label: progress(label, calls, iters)) if progress else None
            times = timed_rounds([loaded[k] for k in fits], batch, warmup, iters, tick)
            rows += [percentile_row(runnable[k], size, t, loaded[k].device) for k, t in zip(fits, times)]
    settings = {
        "batch_sizes": sizes,
        "warmup": warmup,
        "iters": iters,
        "threads": threads,
        "device": device,
        "block": BLOCK,
        "machine": cpu_description(),
    }
    return BenchReport(
        source=source or str(export_dir),
        model=card.model,
        input_shape=list(card.input.shape),
        settings=settings,
        rows=rows,
        unavailable=unavailable,
    )


def export_for_bench(
    source: str,
    out_dir: Path,
    runtimes: list[str] | None,
    precisions: list[str] | None,
    input_shape: tuple[int, ...] | None,
) -> Path:
    """Export a checkpoint or a model name (with ``input_shape``) to ``out_dir`` in the formats the runtimes need."""
    from exporters.pipeline import export_model

    if runtimes is None:  # everything, both INT8 forms included
        export_model(source, "all", precisions, out_dir, input_shape=input_shape)
        return out_dir
    formats = list(
        dict.fromkeys(fmt for runtime in runtimes for fmt in get_runtime_class(runtime).formats if fmt != "checkpoint")
    )
    # model.pt (eager) comes with every export; the smallest format stands in when eager alone is asked for.
    export_model(source, formats or ["torchscript"], precisions or list(PRECISIONS), out_dir, input_shape=input_shape)
    return out_dir


def run_bench(
    source: str | Path,
    settings: BenchSettings | None = None,
    *,
    runtimes: Iterable[str] | None = None,
    precisions: Iterable[str] | None = None,
    device: str = "auto",
    input_shape: tuple[int, ...] | None = None,
    progress: Progress | None = None,
    say: Callable[[str], None] | None = None,
) -> BenchReport:
    """Bench an export folder as is; export a checkpoint or model name to a temporary folder first."""
    runtime_names = comma_list(runtimes, list_runtimes(), "--runtimes") or None
    precision_names = comma_list(precisions, PRECISIONS, "--precisions") or None
    settings = settings or BenchSettings()
    check_settings(settings)  # before a long export, not after it
    options = dict(
        runtimes=runtime_names, precisions=precision_names, device=device, source=str(source), progress=progress
    )
    path = Path(source)
    if path.is_dir():
        if input_shape:
            raise BadInputError("--input-shape goes with a model name; an export folder's card fixes its shape")
        return bench_export_dir(path, settings, **options)
    with tempfile.TemporaryDirectory(prefix="rtool-bench-") as work:
        if say:
            say(f"exporting {source} to a temporary folder first")
        export_dir = export_for_bench(str(source), Path(work), runtime_names, precision_names, input_shape)
        return bench_export_dir(export_dir, settings, **options)
