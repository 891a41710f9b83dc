"""Every GPU path of rtool in one command, for the few minutes a GPU machine is at hand (no network needed).

    python benchmarks/gpu_check.py                          # into runs/gpu-check; < 10 minutes on one H100/H200
    python benchmarks/gpu_check.py --deps gpu-deps          # Python packages carried in a folder (pip --target)
    python benchmarks/gpu_check.py --load-outputs cpu.npz --from-export runs/r20/export   # judge vs a CPU box
    python benchmarks/gpu_check.py --quick --export runs/r20/export   # small sizes, an export made before

Steps (each one row of the summary; one that cannot run here is "unavailable" with the reason, never a crash):
the GPU tests (pytest -m "gpu or tensorrt"), 2 epochs of training with --device cuda --amp bf16, export of
every format (TensorRT engines included), rtool infer --runtime tensorrt for FP16 and INT8, parity with
--device auto (--require tensorrt where TensorRT runs) saving its outputs, bench at batch 1 and 64, the
engine inspector's proof that the INT8 engine runs its convolutions in INT8, and the refusal of a tampered
engine, of an engine stamped with another TensorRT version and of one stamped with another GPU model.

It writes OUT/gpu_check.json and OUT/gpu_check.md, prints every row that was skipped and why, and exits 1
if a row failed (0 otherwise). On a machine without a GPU every GPU row is "unavailable", training runs on
the CPU as a stand-in so the steps after it still run, and the exit code is 0.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NEEDED = ("torch", "numpy", "onnx", "onnxruntime", "onnxscript", "onnxconverter_common", "click", "rich", "PIL")
NEEDED += ("matplotlib", "mlxtend")
TEST_NEEDS = ("pytest", "hypothesis")
MIN_INT8_SHARE = 0.9  # convolutions of the INT8 engine that must run in INT8 (an FP32 fallback gives 0)


@dataclass
class Row:
    """One step: ok | failed | unavailable, with why and what was measured."""

    name: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    command: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Check:
    """The run's settings and its rows."""

    out: Path
    quick: bool
    epochs: int
    deps: Path | None
    export: Path | None
    load_outputs: Path | None
    from_export: Path | None
    env: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        mark = {"ok": "ok", "failed": "FAILED", "unavailable": "unavailable"}[row.status]
        print(f"[gpu-check] {row.name}: {mark}{' - ' + row.reason if row.reason else ''}", flush=True)
        return row


def environment(deps: Path | None) -> dict[str, Any]:
    """What this machine has: GPU, torch, TensorRT, ONNX Runtime providers, missing packages (torch-free probe)."""
    if deps:
        sys.path.insert(0, str(deps))
    sys.path.insert(0, str(REPO))
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    env: dict[str, Any] = {"python": platform.python_version(), "host": platform.node(), "missing": missing}
    env["test_missing"] = [name for name in TEST_NEEDS if importlib.util.find_spec(name) is None]
    for package in ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-cu13"):
        try:
            env[f"{package} version"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    if missing:
        env.update(gpu=False, gpu_reason="rtool cannot run here", tensorrt=False, tensorrt_reason="rtool cannot run")
        return env
    from runtimes import available, cuda_device_name, cuda_gpus

    gpus, why = cuda_gpus()
    env["gpu"] = bool(gpus)
    env["gpu_reason"] = why
    if gpus:
        import torch

        env["gpu"] = torch.cuda.is_available()
        env["gpu_reason"] = "" if env["gpu"] else "PyTorch here cannot use the GPU (a CPU-only build?)"
        env["gpu_name"] = cuda_device_name(0)
        env["torch cuda"] = torch.version.cuda
    env["tensorrt"], env["tensorrt_reason"] = available("tensorrt")
    from runtimes.onnxruntime_runtime import provider_status

    env["onnxruntime providers"] = {name: why or "usable" for name, why in provider_status().items()}
    return env


def run(check: Check, args: list[str], timeout: float, cwd: Path | None = None) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, seconds) of a command with rtool and the carried packages importable."""
    path = [str(REPO)] + ([str(check.deps)] if check.deps else []) + [os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p), "COLUMNS": "160"}
    began = time.perf_counter()
    try:
        done = subprocess.run(args, cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout)
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as e:
        code, out, err = 124, str(e.stdout or ""), f"timed out after {timeout:.0f} s"
    return code, out, err, time.perf_counter() - began


def rtool(check: Check, name: str, args: list[str], timeout: float, expect: int = 0) -> tuple[Row, str]:
    """Run one `rtool` command as a row: ok when it exits ``expect``; (row, stdout)."""
    command = [sys.executable, "-m", "toolkit.cli", *map(str, args)]
    code, out, err, seconds = run(check, command, timeout)
    last = next((line for line in reversed(err.splitlines()) if line.strip()), "")
    status = "ok" if code == expect else "failed"
    reason = "" if status == "ok" else f"exit {code} (expected {expect}): {last[:300]}"
    shown = "rtool " + " ".join(map(str, args))
    return Row(name, status, reason, round(seconds, 1), shown, {"exit": code, "stderr_last": last[:300]}), out


def unavailable(check: Check, name: str, reason: str) -> None:
    check.add(Row(name, "unavailable", reason))


def gpu_tests(check: Check) -> None:
    name = 'GPU tests (pytest -m "gpu or tensorrt")'
    if not check.env["gpu"]:
        return unavailable(check, name, check.env["gpu_reason"])
    if check.env["test_missing"]:
        return unavailable(check, name, f"not installed here: {', '.join(check.env['test_missing'])}")
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu or tensorrt", "tests", "-p", "no:cacheprovider"]
    code, out, err, seconds = run(check, command, 360)
    summary = next((line for line in reversed(out.splitlines()) if " passed" in line or " failed" in line), "")
    skipped = [line[:200] for line in out.splitlines() if line.startswith("SKIPPED")]
    row = Row(name, "ok" if code == 0 else "failed", "" if code == 0 else f"exit {code}: {summary or err[-300:]}")
    row.seconds, row.command, row.details = round(seconds, 1), " ".join(command[1:]), {"summary": summary}
    row.details["skipped"] = skipped
    check.add(row)


def train(check: Check) -> Path | None:
    """2 epochs with --device cuda --amp bf16; without a GPU the same on the CPU, so later steps have a model."""
    run_dir = check.out / "run"
    sizes = ["--train-limit", "256", "--test-limit", "200"] if check.quick else []
    base = ["train", "--epochs", check.epochs, "--out", run_dir, "--overwrite", "--quiet", "--seed", "0", *sizes]
    name = "train --device cuda --amp bf16"
    if check.env["gpu"]:
        row, _ = rtool(check, name, [*base, "--device", "cuda", "--amp", "bf16"], 300)
    else:
        unavailable(check, name, check.env["gpu_reason"])
        row, _ = rtool(check, "train --device cpu (stand-in: no GPU)", [*base, "--device", "cpu"], 600)
    check.add(row)
    return run_dir / "best.pt" if row.status == "ok" else None


def export(check: Check, checkpoint: Path | None) -> Path | None:
    """Every format (engines included where TensorRT runs), or the folder given with --export."""
    if check.export is not None:
        check.add(Row("export", "ok", f"used {check.export} (--export)"))
        return check.export
    if checkpoint is None:
        return unavailable(check, "export --format all", "no checkpoint: training failed")
    out = check.out / "export"
    if check.quick:
        formats = ["--format", "onnx,tensorrt" if check.env["tensorrt"] else "onnx", "--precision", "fp16,int8"]
        formats += ["--target", "tensorrt", "--calib-size", "32"]
    else:
        formats = ["--format", "all"]
    row, stdout = rtool(
        check, "export " + " ".join(formats[:2]), ["export", checkpoint, *formats, "--out", out, "--json"], 420
    )
    if row.status == "ok":
        document = json.loads(stdout)
        row.details["files"] = [a.get("file") for a in document.get("artifacts", [])]
        row.details["skipped"] = document.get("skipped", [])
    check.add(row)
    return out if row.status == "ok" else None


def engine_entry(export_dir: Path, precision: str) -> dict[str, Any] | None:
    manifest = json.loads((export_dir / "manifest.json").read_text())
    return next(
        (a for a in manifest["artifacts"] if a.get("format") == "tensorrt" and a.get("precision") == precision), None
    )


def no_engine_reason(check: Check, export_dir: Path | None, precision: str) -> str:
    """'' if a model.PRECISION.engine can run here, else why not."""
    if not check.env["tensorrt"]:
        return str(check.env["tensorrt_reason"])
    if export_dir is None:
        return "no export folder: the export step failed"
    if engine_entry(export_dir, precision) is None:
        return f"{export_dir} holds no {precision} engine (see the export row)"
    return ""


def infer_engines(check: Check, export_dir: Path | None) -> None:
    for precision in ("fp16", "int8"):
        name = f"infer --runtime tensorrt --precision {precision}"
        why = no_engine_reason(check, export_dir, precision)
        if why:
            unavailable(check, name, why)
            continue
        args = ["infer", export_dir, "--runtime", "tensorrt", "--precision", precision]
        row, stdout = rtool(check, name, [*args, "--dataset", "mnist5k", "--first", "64", "--json"], 180)
        if row.status == "ok":
            document = json.loads(stdout)
            predictions = document.get("predictions", [])
            correct = sum(1 for p in predictions if p.get("correct"))
            row.details.update(device=document.get("device"), correct=f"{correct}/{len(predictions)}")
        check.add(row)


def parity(check: Check, export_dir: Path | None) -> None:
    require = ["--require", "tensorrt"] if check.env["tensorrt"] else []
    name = "parity --device auto" + (" --require tensorrt" if require else "")
    if export_dir is None:
        return unavailable(check, name, "no export folder: the export step failed")
    sizes = ["--limit", "100", "--runtimes", "onnxruntime,tensorrt"] if check.quick else []
    files = ["--json", check.out / "parity.json", "--markdown", check.out / "parity.md"]
    args = ["parity", export_dir, "--device", "auto", *require, *sizes, *files]
    row, _ = rtool(check, name, [*args, "--save-outputs", check.out / "outputs.npz"], 420, expect=0)
    row.details.update(parity_rows(check.out / "parity.json"))
    check.add(row)
    if not require:
        unavailable(check, "parity --require tensorrt", str(check.env["tensorrt_reason"]))


def parity_rows(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    document = json.loads(path.read_text())
    rows = {
        f"{r['runtime']} {r['precision']}{' (' + r['target'] + ')' if r.get('target') else ''}": (
            r["status"] if r["status"] != "ok" else f"ok, agreement {r['agreement']:.2f}%, on {r['device']}"
        )
        for r in document.get("rows", [])
    }
    return {"rows": rows, "reference device": document.get("reference", {}).get("device")}


def parity_across_machines(check: Check) -> None:
    """With --load-outputs/--from-export: this GPU's rows judged against the CPU box's stored reference."""
    name = "parity --load-outputs (rows of both machines)"
    if check.load_outputs is None or check.from_export is None:
        return unavailable(check, name, "no --load-outputs FILE --from-export DIR given")
    out = check.out / "cross-export"
    formats = "onnx,tensorrt" if check.env["tensorrt"] else "onnx"
    row, _ = rtool(
        check,
        "export for --load-outputs",
        [
            "export",
            check.from_export / "model.pt",
            "--format",
            formats,
            "--precision",
            "fp16,int8",
            "--target",
            "tensorrt",
            "--out",
            out,
            "--json",
        ],
        420,
    )
    if row.status != "ok":
        check.add(row)
        return unavailable(check, name, "its export failed")
    require = ["--require", "tensorrt"] if check.env["tensorrt"] else []
    files = ["--json", check.out / "parity-cross.json", "--markdown", check.out / "parity-cross.md"]
    row, _ = rtool(check, name, ["parity", out, "--load-outputs", check.load_outputs, *require, *files], 420)
    row.details.update(parity_rows(check.out / "parity-cross.json"))
    check.add(row)


def bench(check: Check, export_dir: Path | None) -> None:
    name = "bench --batch-sizes 1,64 --device auto"
    if export_dir is None:
        return unavailable(check, name, "no export folder: the export step failed")
    sizes = ["--iters", "3", "--warmup", "1", "--runtimes", "onnxruntime,tensorrt"] if check.quick else []
    files = ["--json", check.out / "bench.json", "--markdown", check.out / "bench.md"]
    row, _ = rtool(check, name, ["bench", export_dir, "--batch-sizes", "1,64", "--device", "auto", *sizes, *files], 300)
    if (check.out / "bench.json").is_file():
        document = json.loads((check.out / "bench.json").read_text())
        row.details["p50 ms"] = {
            f"{r['runtime']} {r['precision']}{' (' + r['target'] + ')' if r.get('target') else ''} b{r['batch']}": (
                round(r["p50_ms"], 3)
            )
            for r in document.get("rows", [])
        }
    check.add(row)


def int8_layers(check: Check, export_dir: Path | None) -> None:
    """The engine inspector: INT8 engine convolutions in INT8, FP16 engine's in none."""
    name = "INT8 engine runs its convolutions in INT8 (engine inspector)"
    why = no_engine_reason(check, export_dir, "int8") or no_engine_reason(check, export_dir, "fp16")
    if why:
        return unavailable(check, name, why)
    reports = {}
    for precision in ("int8", "fp16"):
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--inspect-engine",
            str(export_dir / f"model.{precision}.engine"),
        ]
        code, out, err, _ = run(check, command, 120)
        if code != 0:
            return check.add(Row(name, "failed", f"inspecting the {precision} engine: {err.strip()[-300:]}"))
        reports[precision] = json.loads(out)
    int8, fp16 = reports["int8"], reports["fp16"]
    share = int8["int8_convolutions"] / max(1, int8["convolutions"])
    ok = int8["convolutions"] > 0 and share >= MIN_INT8_SHARE and fp16["int8_convolutions"] == 0
    reason = (
        ""
        if ok
        else (
            f"{int8['int8_convolutions']}/{int8['convolutions']} INT8 convolutions in the INT8 engine (need "
            f">= {MIN_INT8_SHARE:.0%}), {fp16['int8_convolutions']} in the FP16 engine (need 0)"
        )
    )
    check.add(Row(name, "ok" if ok else "failed", reason, details=reports))


def refusals(check: Check, export_dir: Path | None) -> None:
    """A tampered engine, and engines stamped with another TensorRT version / GPU model: each refused in one line."""
    cases = {
        "tampered engine refused": ("tamper", "sha256"),
        "engine of another TensorRT version refused": ("tensorrt_version", "built with TensorRT 0.0.0"),
        "engine of another GPU model refused": ("gpu_name", "rebuild it here"),
    }
    why = no_engine_reason(check, export_dir, "fp16")
    for name, (change, expected) in cases.items():
        if why:
            unavailable(check, name, why)
            continue
        folder = check.out / f"refuse-{change}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(export_dir, folder)
        engine = folder / "model.fp16.engine"
        if change == "tamper":
            data = bytearray(engine.read_bytes())
            data[len(data) // 2] ^= 0xFF
            engine.write_bytes(bytes(data))
        else:
            manifest = json.loads((folder / "manifest.json").read_text())
            entry = next(a for a in manifest["artifacts"] if a["file"] == engine.name)
            entry["settings"][change] = "0.0.0" if change == "tensorrt_version" else "NVIDIA Other GPU"
            (folder / "manifest.json").write_text(json.dumps(manifest))
        args = ["infer", folder, "--runtime", "tensorrt", "--precision", "fp16", "--dataset", "mnist5k", "--first", "4"]
        row, _ = rtool(check, name, args, 120, expect=2)
        if row.status == "ok" and expected not in row.details["stderr_last"]:
            row.status, row.reason = "failed", f"refused, but not for the expected reason ({expected!r})"
        check.add(row)


def summary(check: Check) -> tuple[Path, Path]:
    """OUT/gpu_check.json and OUT/gpu_check.md."""
    document = {
        "environment": check.env,
        "settings": {"quick": check.quick, "epochs": check.epochs, "out": str(check.out)},
        "rows": [asdict(row) for row in check.rows],
        "passed": not any(row.status == "failed" for row in check.rows),
        "seconds": round(sum(row.seconds for row in check.rows), 1),
    }
    json_path = check.out / "gpu_check.json"
    json_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    lines = [
        "# rtool GPU check",
        "",
        f"Machine: {check.env.get('host')}, GPU: {check.env.get('gpu_name') or check.env.get('gpu_reason')}, "
        f"TensorRT: {check.env.get('tensorrt version') or check.env.get('tensorrt-cu13 version') or 'none'}, "
        f"torch {check.env.get('torch version', '?')}, onnxruntime "
        f"{check.env.get('onnxruntime-gpu version') or check.env.get('onnxruntime version', '?')}.",
        "",
        "| step | status | seconds | reason / result |",
        "|---|---|---|---|",
    ]
    for row in check.rows:
        result = row.reason or "; ".join(
            f"{k}: {v}" for k, v in row.details.items() if k not in ("exit", "stderr_last")
        )
        lines.append(f"| {row.name} | {row.status} | {row.seconds:g} | {str(result).replace('|', '/')[:400]} |")
    lines += ["", f"**{'PASSED' if document['passed'] else 'FAILED'}** in {document['seconds']} s of steps."]
    md_path = check.out / "gpu_check.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def inspect_engine(path: Path) -> int:
    """--inspect-engine: print the layer report of one engine as JSON (a separate process, as the GPU wants)."""
    sys.path.insert(0, str(REPO))
    from runtimes import open_runtime

    with open_runtime("tensorrt", path, "auto") as runtime:
        print(json.dumps(runtime.layer_report()))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-check", help="Folder for everything.")
    parser.add_argument("--quick", action="store_true", help="Small sizes (a smoke test; the CPU-mode test uses it).")
    parser.add_argument("--epochs", type=int, default=2, help="Training epochs (default 2).")
    parser.add_argument("--deps", type=Path, default=None, help="A folder of carried Python packages (pip --target).")
    parser.add_argument("--export", type=Path, default=None, help="Use this export folder instead of train+export.")
    parser.add_argument("--load-outputs", type=Path, default=None, help="Parity outputs saved on another machine.")
    parser.add_argument("--from-export", type=Path, default=None, help="The export folder those outputs came from.")
    parser.add_argument("--inspect-engine", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.inspect_engine:
        return inspect_engine(args.inspect_engine)
    check = Check(
        args.out.resolve(), args.quick, args.epochs, args.deps, args.export, args.load_outputs, args.from_export
    )
    check.out.mkdir(parents=True, exist_ok=True)
    check.env = environment(args.deps)
    if check.env["missing"]:
        check.add(Row("rtool's Python packages", "failed", f"not installed here: {', '.join(check.env['missing'])}"))
    else:
        gpu_tests(check)
        if args.export:
            unavailable(check, "train --device cuda --amp bf16", f"skipped: --export {args.export} given")
        export_dir = export(check, None if args.export else train(check))
        infer_engines(check, export_dir)
        parity(check, export_dir)
        parity_across_machines(check)
        bench(check, export_dir)
        int8_layers(check, export_dir)
        refusals(check, export_dir)
    json_path, md_path = summary(check)
    for row in check.rows:
        if row.status == "unavailable":
            print(f"SKIPPED {row.name}: {row.reason}")
    failed = [row.name for row in check.rows if row.status == "failed"]
    print(
        f"wrote {json_path} and {md_path}; {len(check.rows)} steps, {len(failed)} failed"
        + (f": {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
