"""benchmarks/gpu_check.py, the one command for a GPU machine, run here as a user would: on a CPU it reports
every GPU step unavailable with the reason, runs the rest, and exits 0."""

from __future__ import annotations

import json
import subprocess
import sys

from runtimes import available, cuda_gpus

from conftest import REPO


def test_gpu_check_runs_end_to_end_in_cpu_mode(cpu_export_dir, tmp_path):
    out = tmp_path / "check"
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--quick", "--export", str(cpu_export_dir)]
    result = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)
    document = json.loads((out / "gpu_check.json").read_text())
    rows = {row["name"]: row for row in document["rows"]}
    failed = {name: row["reason"] for name, row in rows.items() if row["status"] == "failed"}
    assert result.returncode == 0 and not failed, (failed, result.stderr[-2000:])
    assert document["passed"] is True
    for name in ("parity --device auto", "bench --batch-sizes 1,64 --device auto"):
        assert rows[name]["status"] == "ok", rows[name]
    assert (out / "parity.json").is_file() and (out / "outputs.npz").is_file() and (out / "bench.json").is_file()
    assert "onnxruntime fp32" in rows["parity --device auto"]["details"]["rows"]
    gpu_rows = [
        'GPU tests (pytest -m "gpu or tensorrt")',
        "infer --runtime tensorrt --precision fp16",
        "infer --runtime tensorrt --precision int8",
        "INT8 engine runs its convolutions in INT8 (engine inspector)",
        "tampered engine refused",
        "engine of another TensorRT version refused",
        "engine of another GPU model refused",
    ]
    if cuda_gpus()[0] == 0:
        _, no_tensorrt = available("tensorrt")
        for name in gpu_rows:
            assert rows[name]["status"] == "unavailable" and rows[name]["reason"], rows[name]
            assert f"SKIPPED {name}: {rows[name]['reason']}" in result.stdout
        assert rows["INT8 engine runs its convolutions in INT8 (engine inspector)"]["reason"] == no_tensorrt
        assert "no CUDA GPU" in rows['GPU tests (pytest -m "gpu or tensorrt")']["reason"]
    markdown = (out / "gpu_check.md").read_text()
    assert markdown.startswith("# rtool GPU check") and "| parity --device auto | ok |" in markdown
    assert "**PASSED**" in markdown
