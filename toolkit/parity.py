"""Parity: every runtime x precision in an export folder against the eager FP32 model, on the test set.

The eager model (``model.pt``, the checkpoint copied into the export) is the
reference. The card's test images are preprocessed once and fed, in the same
order and the same batches, to every artifact the manifest lists. Each row
compares logits and top-1 predictions with the reference and checks the
thresholds of its precision; runtimes that cannot run here (TensorRT without
a GPU) are rows with the reason, failures only when ``require`` names them.

The INT8 ONNX file made for TensorRT (symmetric int8) runs on ONNX Runtime's
TensorRT provider where it is usable; elsewhere its Q/DQ graph is computed in
float on the CPU (``simulate_qdq``), which is exactly the quantization the
file defines, free of the int16 saturation of x86 int8 kernels without VNNI
(see docs/parity.md). Its latency there says nothing about TensorRT's.

Device 'auto' (the default) runs each runtime on its own best device: eager,
TorchScript and pt2 on a CUDA GPU where one is usable, ONNX Runtime on the
provider its graph suits, TensorRT engines on the GPU. Across machines,
``save_outputs`` keeps the reference and every row's logits and
``load_outputs`` judges this machine's rows against the stored reference, so
one report holds both machines' rows (toolkit.parity_outputs).

A file whose model ends in a softmax (the web page's, run by the ``browser``
runtime in headless Chromium) gives log-probabilities; its row is compared
with the eager model's log-softmax (``compared_as``), with the same thresholds.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from exporters import PRECISIONS, precisions_of_runtime
from runtimes import (
    artifact_label,
    artifact_variant,
    available,
    error_summary,
    list_runtimes,
    log_softmax,
    open_runtime,
)
from runtimes.cards import artifact_runs, skipped_runs
from toolkit import parity_outputs as outputs
from toolkit.card import MANIFEST_NAME, ModelCard
from toolkit.errors import BadInputError, RtoolError, UnsafeFileError
from toolkit.flags import comma_list
from toolkit.manifest import entry_path, read_manifest, verify_manifest, verify_sha256
from toolkit.preprocess import prepare_batch
from toolkit.thresholds import Thresholds, check_thresholds, default_thresholds

BATCH_SIZE = 100  # images per inference call; every runtime gets the same batches
LOG_PROBABILITIES = "log-probabilities"  # how rows of models that end in a softmax are compared

Progress = Callable[[str, int, int], None]  # (task label, images just done, images in the task)


@dataclass
class ParityRow:
    """One runtime x precision artifact compared with eager. Percentages are 0..100."""

    runtime: str
    precision: str
    artifact: str | None
    target: str | None = None
    device: str | None = None
    status: str = "ok"  # ok | failed | unavailable
    reason: str = ""
    accuracy: float | None = None
    accuracy_delta: float | None = None  # points versus eager (negative: worse)
    agreement: float | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    max_abs_diff_rel: float | None = None  # max_abs_diff / eager logit range
    latency_ms: float | None = None  # mean per batch
    failed_thresholds: list[str] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)  # INT8 files: layers kept in float (--max-accuracy-drop)
    machine: str = ""  # with --load-outputs: "saved" (the other machine's row) or "here"
    compared_as: str = "logits"  # or log-probabilities: the model ends in a softmax (eager's log_softmax compared)
    format: str | None = None  # the exporter format of the file (onnx, ort, openvino, ...)

    @property
    def label(self) -> str:
        label = artifact_label(self.runtime, self.precision, self.target, self.format)
        return label + (f" @{self.machine}" if self.machine else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ParityReport:
    export_dir: Path
    reference: dict[str, Any]
    rows: list[ParityRow]
    thresholds: dict[str, Thresholds]
    machines: dict[str, str] = field(default_factory=dict)  # "saved" / "here" -> the machine, with --load-outputs

    @property
    def passed(self) -> bool:
        return all(row.status != "failed" for row in self.rows)

    @property
    def failures(self) -> list[ParityRow]:
        return [row for row in self.rows if row.status == "failed"]

    def failure_summary(self) -> str:
        """One line naming each failed row and why."""
        return "; ".join(f"{row.label} ({row.artifact or 'no file'}): {row.reason}" for row in self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {
            "export_dir": str(self.export_dir),
            "reference": self.reference,
            "thresholds": {p: asdict(t) for p, t in self.thresholds.items()},
            "rows": [row.to_dict() for row in self.rows],
            "machines": self.machines,
            "passed": self.passed,
        }


def missing_folder(export_dir: Path) -> str:
    """Why ``export_dir`` is not an export folder, saying what to run instead."""
    if Path(export_dir).is_file():
        return (
            f"{export_dir} is a file, not an export folder; export it with `rtool export {export_dir}` and "
            f"pass the folder that writes"
        )
    return f"export folder {export_dir} does not exist (make one with `rtool export`)"


def verify_export(export_dir: str | Path) -> None:
    """Refuse a folder whose files changed after export (sha256 and size against its manifest), before any runs."""
    if not Path(export_dir).is_dir():
        raise BadInputError(missing_folder(export_dir))
    problems = verify_manifest(export_dir)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise UnsafeFileError(
            f"{export_dir} is not what was exported: {problems[0]}{more}; re-export it "
            f"(or pass --no-verify to run it anyway)"
        )


def reference_entry(export_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    entries = [a for a in manifest["artifacts"] if isinstance(a, dict) and a.get("runtime") == "eager"]
    if not entries:
        raise BadInputError(
            f"{export_dir} has no eager reference (model.pt) in its {MANIFEST_NAME}; "
            f"re-export the model with `rtool export`"
        )
    return entries[0]


def test_images(
    card: ModelCard, dataset: str | None, limit: int | None, data_dir: str | Path | None = None
) -> tuple[str, np.ndarray, np.ndarray]:
    """(data set name, float32 model input, labels) of the card's test set (or ``limit`` of it), preprocessed once."""
    from toolkit.data import load_dataset

    name = dataset or card.dataset
    if not name:
        raise BadInputError("the model card names no data set; choose one with --dataset")
    data = load_dataset(name, data_dir)
    if list(data.class_names) != list(card.class_names):
        raise BadInputError(
            f"{data.name}'s classes ({', '.join(data.class_names[:5])}, ...) are not the model's "
            f"({', '.join(card.class_names[:5])}, ...); use --dataset with the data it was trained on"
        )
    total = len(data.test)
    if total < 1:
        raise BadInputError(f"{data.name} has no test images to compare on")
    # A limit takes evenly spaced images, so a test set stored class by class still gives every class.
    index = (
        np.arange(total) if limit is None or limit >= total else np.linspace(0, total - 1, limit).round().astype(int)
    )
    pixels = data.test.pixels(index, card.input)
    return data.name, prepare_batch(pixels, card.input), data.test.labels.numpy()[index]


def tensorrt_provider_missing(device: str) -> str:
    """'' if ONNX Runtime's TensorRT provider can run here on ``device``, else why not."""
    from runtimes.onnxruntime_runtime import provider_status

    why = provider_status()["TensorrtExecutionProvider"]
    if not why and device == "cpu":
        return "parity runs with --device cpu (use --device auto)"
    return why


def run_logits(
    runtime_name: str,
    path: Path,
    batch: np.ndarray,
    label: str,
    device: str,
    options: dict[str, Any],
    progress: Progress | None,
) -> tuple[np.ndarray, float, str, str]:
    """(logits, mean ms per batch, device, what the logits are) of one artifact over ``batch``; one untimed
    warm-up call first. A model that ends in a softmax gives log-probabilities (``LOG_PROBABILITIES``)."""
    with open_runtime(runtime_name, path, device, **options) as runtime:
        step = min(x for x in (BATCH_SIZE, runtime.max_batch) if x)
        runtime.infer(batch[:step])  # warm-up: first-call allocation and graph set-up are not latency
        outputs, seconds = [], 0.0
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            began = time.perf_counter()
            outputs.append(runtime.infer(chunk))
            seconds += time.perf_counter() - began
            if progress:
                progress(label, len(chunk), len(batch))
        calls = math.ceil(len(batch) / step)
        kind = LOG_PROBABILITIES if runtime.card is not None and runtime.card.output == "probabilities" else "logits"
        return np.concatenate(outputs), 1000 * seconds / calls, runtime.device, kind


def compare(
    row: ParityRow,
    logits: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray,
    reference_accuracy: float,
    logit_range: float,
) -> None:
    """Fill the row's measurements from its logits and the reference's."""
    if logits.shape != reference.shape:
        raise BadInputError(f"logits of shape {logits.shape}, the eager model gives {reference.shape}")
    if not np.isfinite(logits).all():
        raise BadInputError("logits hold NaN or Inf values")
    diff = np.abs(logits.astype(np.float64) - reference.astype(np.float64))
    predicted = logits.argmax(axis=1)
    row.accuracy = 100.0 * float((predicted == labels).mean())
    row.accuracy_delta = row.accuracy - reference_accuracy
    row.agreement = 100.0 * float((predicted == reference.argmax(axis=1)).mean())
    row.max_abs_diff = float(diff.max())
    row.mean_abs_diff = float(diff.mean())
    row.max_abs_diff_rel = row.max_abs_diff / logit_range


def _sort_key(row: ParityRow) -> tuple[int, int, str]:
    order = list_runtimes()
    runtime = order.index(row.runtime) if row.runtime in order else len(order)
    precision = PRECISIONS.index(row.precision) if row.precision in PRECISIONS else len(PRECISIONS)
    return runtime, precision, artifact_variant(row.runtime, row.precision, row.target, row.format)


def runnable_rows(manifest: dict[str, Any], chosen: Callable[[str, str], bool]) -> list[tuple[ParityRow, dict]]:
    """One row per listed file (the eager reference aside) and per registered runtime that runs its format."""
    return [
        (
            ParityRow(
                runtime,
                str(entry.get("precision")),
                entry["file"],
                entry.get("target"),
                float_layers=float_layers(entry),
                format=entry.get("format"),
            ),
            entry,
        )
        for runtime, entry in artifact_runs(manifest)
        if entry.get("format") != "checkpoint" and chosen(runtime, str(entry.get("precision")))
    ]


def float_layers(entry: dict[str, Any]) -> list[str]:
    """The layers an INT8 file keeps in float, as its manifest entry records them (names only, as text)."""
    settings = entry.get("settings")
    names = settings.get("float_layers") if isinstance(settings, dict) else None
    return [str(name) for name in names] if isinstance(names, list) else []


def unavailable_rows(
    manifest: dict[str, Any], chosen: Callable[[str, str], bool], covered: set[tuple[str, str, Any]]
) -> list[tuple[ParityRow, None]]:
    """Rows for what the export skipped and for runtimes that cannot run here, each with its reason."""
    plan: list[tuple[ParityRow, None]] = []
    for runtime, skip in skipped_runs(manifest):
        precision = str(skip.get("precision"))
        if not chosen(runtime, precision) or (runtime, precision, skip.get("format")) in covered:
            continue
        reason = f"not exported: {skip.get('reason') or 'no reason given'}"
        row = ParityRow(
            runtime, precision, None, skip.get("target"), status="unavailable", reason=reason, format=skip.get("format")
        )
        plan.append((row, None))
        covered.add((runtime, precision, skip.get("format")))
    for runtime in list_runtimes():  # a runtime that cannot run here and that the manifest does not mention
        ok, why = available(runtime)
        if ok or any(r == runtime for r, _, _ in covered):
            continue
        plan += [
            (ParityRow(runtime, precision, None, status="unavailable", reason=why), None)
            for precision in precisions_of_runtime(runtime)
            if chosen(runtime, precision)
        ]
    return plan


def chooser(runtimes: list[str] | None, precisions: list[str] | None) -> Callable[[str, str], bool]:
    """Whether a (runtime, precision) is among those asked for (None: all)."""

    def chosen(runtime: str, precision: str) -> bool:
        return (runtimes is None or runtime in runtimes) and (precisions is None or precision in precisions)

    return chosen


def planned_rows(
    manifest: dict[str, Any], runtimes: list[str] | None, precisions: list[str] | None
) -> list[tuple[ParityRow, dict[str, Any] | None]]:
    """Rows for every listed artifact, every skipped one, and every runtime that cannot run here."""
    chosen = chooser(runtimes, precisions)
    plan: list[tuple[ParityRow, dict[str, Any] | None]] = list(runnable_rows(manifest, chosen))
    plan += unavailable_rows(manifest, chosen, {(r.runtime, r.precision, r.format) for r, _ in plan})
    plan.sort(key=lambda item: _sort_key(item[0]))
    return plan


def run_parity(
    export_dir: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    runtimes: Iterable[str] | None = None,
    precisions: Iterable[str] | None = None,
    require: Iterable[str] | None = None,
    limit: int | None = None,
    thresholds: dict[str, Thresholds] | None = None,
    device: str = "auto",
    threads: int | None = None,
    progress: Progress | None = None,
    verify: bool = True,
    save_outputs: str | Path | None = None,
    load_outputs: str | Path | None = None,
) -> ParityReport:
    """Compare every artifact of ``export_dir`` with its eager model; see the module docstring.

    Each file's sha256 is checked against the manifest before it runs (a mismatch fails the reference
    or its row); ``verify=False`` skips that (``--no-verify``). ``device`` 'auto' runs each runtime on its
    own best device. ``save_outputs`` writes the reference and every row's logits to a file;
    ``load_outputs`` takes the reference from such a file, saved on another machine, and adds its rows
    to this machine's (toolkit.parity_outputs).
    """
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise BadInputError(missing_folder(export_dir))
    if limit is not None and limit < 1:
        raise BadInputError("--limit must be at least 1")
    if save_outputs and load_outputs:
        raise BadInputError("--save-outputs and --load-outputs go one at a time: save on one machine, load on another")
    runtime_names = comma_list(runtimes, list_runtimes(), "--runtimes") or None
    precision_names = comma_list(precisions, PRECISIONS, "--precisions") or None
    required = comma_list(require, list_runtimes(), "--require")
    thresholds = thresholds or default_thresholds()
    manifest = read_manifest(export_dir)
    if not isinstance(manifest.get("card"), dict):
        raise BadInputError(f"{export_dir / MANIFEST_NAME} holds no model card; re-export the model")
    card = ModelCard.from_dict(manifest["card"])
    stored = outputs.load_outputs(load_outputs) if load_outputs else None
    if stored is not None:
        dataset, limit = stored_test_set(stored, dataset, limit)
    run = ParityRun(export_dir, device, {"threads": threads} if threads else {}, progress, verify, stored)
    run.measure_reference(manifest, card, dataset, limit, data_dir)
    plan = planned_rows(manifest, runtime_names, precision_names)
    if stored is not None and chooser(runtime_names, precision_names)("eager", "fp32"):
        plan.insert(0, (ParityRow("eager", "fp32", run.reference_entry["file"]), run.reference_entry))
    plan += missing_required(plan, required, precision_names, export_dir)
    if not plan:
        raise BadInputError(
            f"nothing to compare: {export_dir} holds no artifact for the chosen runtimes and precisions"
        )
    measured = [(row, run.run_row(row, entry, thresholds, required)) for row, entry in plan]
    if save_outputs:
        run.save(save_outputs, manifest["card"], limit, measured)
    rows = [row for row, _ in plan]
    if stored is None:
        return ParityReport(export_dir, run.reference, rows, thresholds)
    for row in rows:
        row.machine = "here"
    saved = stored_rows(stored, chooser(runtime_names, precision_names), thresholds)
    machines = {"saved": stored.machine, "here": outputs.machine_label()}
    return ParityReport(export_dir, run.reference, saved + rows, thresholds, machines)


def missing_required(
    plan: list[tuple[ParityRow, dict[str, Any] | None]],
    required: list[str],
    precisions: list[str] | None,
    export_dir: Path,
) -> list[tuple[ParityRow, None]]:
    """A failed row for each runtime --require names that has no row at all."""
    return [
        (
            ParityRow(
                runtime,
                precisions[0] if precisions else "fp32",
                None,
                status="failed",
                reason=f"required by --require, but {export_dir} holds no {runtime} file",
            ),
            None,
        )
        for runtime in required
        if not any(row.runtime == runtime for row, _ in plan)
    ]


def stored_test_set(stored: outputs.StoredOutputs, dataset: str | None, limit: int | None) -> tuple[str, int | None]:
    """The data set and --limit the stored outputs were saved with; a different one asked for is refused."""
    saved_dataset, saved_limit = str(stored.meta.get("dataset")), stored.meta.get("limit")
    if dataset is not None and dataset != saved_dataset:
        raise BadInputError(
            f"{stored.path} was saved on {saved_dataset}, not {dataset}; leave out --dataset with --load-outputs"
        )
    if limit is not None and limit != saved_limit:
        raise BadInputError(
            f"{stored.path} was saved with --limit {saved_limit}, not {limit}; leave out --limit with --load-outputs"
        )
    return saved_dataset, saved_limit


def stored_rows(
    stored: outputs.StoredOutputs, chosen: Callable[[str, str], bool], thresholds: dict[str, Thresholds]
) -> list[ParityRow]:
    """The other machine's rows, measured again from their stored logits against the stored reference."""
    reference = stored.meta.get("reference") or {}
    rows = []
    for entry, logits in stored.rows:
        row = ParityRow(**outputs.stored_row_fields(entry, ParityRow), machine="saved")
        row.compared_as = row.compared_as or "logits"  # saved before rows said what they compare
        if not chosen(row.runtime, row.precision):
            continue
        if logits is not None:
            row.status, row.reason = "ok", ""
            expected = log_softmax(stored.reference) if row.compared_as == LOG_PROBABILITIES else stored.reference
            try:
                compare(row, logits, expected, stored.labels, reference["accuracy"], reference["logit_range"])
            except (BadInputError, KeyError, TypeError) as e:
                row.status, row.reason = "failed", f"stored logits unusable ({e})"
            else:
                judge(row, thresholds.get(row.precision, Thresholds()))
        rows.append(row)
    return rows


def judge(row: ParityRow, limits: Thresholds) -> None:
    """Fail a measured row that breaks one of its precision's thresholds, naming each."""
    row.failed_thresholds = check_thresholds(row, limits)
    if row.failed_thresholds:
        row.status, row.reason = "failed", "; ".join(row.failed_thresholds)


@dataclass
class ParityRun:
    """One parity run's shared state: the reference's logits, labels and images, fed to every row."""

    export_dir: Path
    device: str
    options: dict[str, Any]
    progress: Progress | None
    verify: bool
    stored: outputs.StoredOutputs | None = None
    reference: dict[str, Any] = field(default_factory=dict)
    reference_entry: dict[str, Any] = field(default_factory=dict)
    batch: np.ndarray = field(default_factory=lambda: np.zeros(0))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0))
    logits: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def checked_path(self, entry: dict[str, Any]) -> Path:
        path = entry_path(self.export_dir, entry)
        if not path.is_file():
            raise BadInputError(f"{path.name} is listed in {MANIFEST_NAME} but missing; re-export")
        if self.verify:
            verify_sha256(path, entry)
        return path

    def measure_reference(
        self,
        manifest: dict[str, Any],
        card: ModelCard,
        dataset: str | None,
        limit: int | None,
        data_dir: str | Path | None,
    ) -> None:
        """The eager model's logits on the test images, or with --load-outputs the stored ones (same images)."""
        self.reference_entry = reference_entry(self.export_dir, manifest)
        ref_path = self.checked_path(self.reference_entry)
        data_name, self.batch, self.labels = test_images(card, dataset, limit, data_dir)
        if self.stored is not None:
            outputs.check_matches(self.stored, manifest["card"], self.batch, self.labels)
            self.logits = self.stored.reference
            self.reference = {**(self.stored.meta.get("reference") or {}), "machine": "saved"}
            return
        self.logits, ref_ms, ref_device, _ = run_logits(
            "eager", ref_path, self.batch, "eager fp32 (reference)", self.device, self.options, self.progress
        )
        accuracy = 100.0 * float((self.logits.argmax(axis=1) == self.labels).mean())
        self.reference = {
            "runtime": "eager",
            "precision": "fp32",
            "artifact": ref_path.name,
            "device": ref_device,
            "dataset": data_name,
            "images": int(len(self.batch)),
            "batch_size": BATCH_SIZE,
            "accuracy": accuracy,
            "logit_range": float(self.logits.max() - self.logits.min()) or 1.0,
            "latency_ms": ref_ms,
        }

    def row_options(self, row: ParityRow) -> dict[str, Any]:
        options = dict(self.options)
        if row.target == "tensorrt" and row.runtime == "onnxruntime":
            if tensorrt_provider_missing(self.device):
                options["simulate_qdq"] = True  # the file's quantization, computed in float on this CPU
            else:
                options["provider"] = "tensorrt"
        return options

    def run_row(
        self, row: ParityRow, entry: dict[str, Any] | None, thresholds: dict[str, Thresholds], required: list[str]
    ) -> np.ndarray | None:
        """Measure a planned row (its logits), or settle one that has no file to run."""
        if entry is not None:
            return self.measure_row(row, entry, thresholds.get(row.precision, Thresholds()), required)
        if row.status == "unavailable" and row.runtime in required:
            row.status, row.reason = "failed", f"required by --require: {row.reason}"
        return None

    def measure_row(
        self, row: ParityRow, entry: dict[str, Any], limits: Thresholds, required: list[str]
    ) -> np.ndarray | None:
        """Run one file and fill its row: measurements, or why it is unavailable or failed; its logits if it ran."""
        ok, why = available(row.runtime)
        if not ok:
            needed = row.runtime in required or (row.target == "tensorrt" and "tensorrt" in required)
            row.status, row.reason = ("failed" if needed else "unavailable"), why
            return None
        try:
            logits, row.latency_ms, row.device, row.compared_as = run_logits(
                row.runtime,
                self.checked_path(entry),
                self.batch,
                row.label,
                self.device,
                self.row_options(row),
                self.progress,
            )
            reference = log_softmax(self.logits) if row.compared_as == LOG_PROBABILITIES else self.logits
            compare(row, logits, reference, self.labels, self.reference["accuracy"], self.reference["logit_range"])
        except RtoolError as e:
            row.status, row.reason = "failed", str(e)
            return None
        except Exception as e:  # a runtime library's own error on this file: the row fails, the report goes on
            row.status, row.reason = "failed", f"{row.runtime} raised {e.__class__.__name__}: {error_summary(e)}"
            return None
        judge(row, limits)
        return logits

    def save(
        self,
        path: str | Path,
        card: dict[str, Any],
        limit: int | None,
        measured: list[tuple[ParityRow, np.ndarray | None]],
    ) -> None:
        """--save-outputs: this run's reference and rows, for `rtool parity --load-outputs` on another machine."""
        outputs.save_outputs(
            path,
            card=card,
            dataset=self.reference["dataset"],
            limit=limit,
            inputs=self.batch,
            labels=self.labels,
            reference=self.reference,
            reference_logits=self.logits,
            rows=measured,
        )
