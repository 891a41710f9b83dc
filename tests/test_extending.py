"""A target is one module: a throwaway format and runtime, written to a temporary folder and registered the
documented way (docs/extending.md), appear in `rtool export`, `rtool parity` and `rtool bench` with no other
file touched. The registries also refuse a name taken twice.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from conftest import REPO, run_rtool

PLUGIN = textwrap.dedent('''
    """A copy of the FP32 ONNX graph, run by ONNX Runtime on one thread: a target in one module."""
    from pathlib import Path

    import numpy as np

    from exporters import Artifact, register_exporter
    from exporters.onnx import fp32_graph
    from exporters.onnx_common import OnnxOptions, check_file, run_onnxruntime, save_single_file, with_card
    from exporters.validation import compare, reference, require_fp32_match
    from runtimes import Runtime, register_runtime
    from toolkit.fileio import atomic_path


    @register_exporter("onnx-copy", precisions=("fp32",), runtime="ort-one-thread",
                       files={"fp32": "model.copy.onnx"}, in_all=False, options=(OnnxOptions,))
    def export(model, card, out_dir, *, precision, target, context):
        path = Path(out_dir) / "model.copy.onnx"
        batch, expected, source = reference(model, card, context)
        with atomic_path(path) as tmp:
            save_single_file(with_card(fp32_graph(model, card, context), card), tmp)
            check_file(tmp, path.name)
            stats = compare(expected, run_onnxruntime(tmp, batch), source)
            require_fp32_match(path.name, stats, expected)
        return Artifact(format="onnx-copy", precision=precision, path=path, runtime="ort-one-thread",
                        validation=stats)


    @register_runtime
    class OneThreadRuntime(Runtime):
        name = "ort-one-thread"
        suffixes = (".copy.onnx",)
        formats = ("onnx-copy",)
        order = 35

        def load(self, artifact_path, device="auto"):
            import onnxruntime as ort

            from runtimes.cards import read_card

            path = self.expect_file(artifact_path)
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.card = read_card(path)

        def _run(self, batch):
            return self.session.run(["logits"], {"input": batch})[0]
''')


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "throwaway_target.py").write_text(PLUGIN)
    return {"PYTHONPATH": f"{folder}{os.pathsep}{REPO}", "RTOOL_PLUGINS": "throwaway_target"}


def test_a_new_format_and_runtime_appear_everywhere(untrained_checkpoint, tmp_path, plugin_env):
    out = tmp_path / "export"
    result = run_rtool(
        "export", untrained_checkpoint, "--format", "onnx-copy", "--opset", "18", "--out", out, "--json", env=plugin_env
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(e for e in manifest["artifacts"] if e["format"] == "onnx-copy")
    assert entry["file"] == "model.copy.onnx" and entry["runtime"] == "ort-one-thread"

    listed = run_rtool("export", "--help", env=plugin_env)
    assert "onnx-copy" in listed.stdout

    parity = run_rtool("parity", out, "--limit", "40", "--json", "-", env=plugin_env)
    assert parity.returncode == 0, parity.stderr
    rows = {(r["runtime"], r["precision"]): r for r in json.loads(parity.stdout)["rows"]}
    assert rows[("ort-one-thread", "fp32")]["status"] == "ok"
    assert rows[("ort-one-thread", "fp32")]["agreement"] == 100.0

    bench = run_rtool(
        "bench", out, "--batch-sizes", "1", "--warmup", "1", "--iters", "3", "--json", "-", env=plugin_env
    )
    assert bench.returncode == 0, bench.stderr
    assert "ort-one-thread" in {r["runtime"] for r in json.loads(bench.stdout)["rows"]}


def test_without_the_plugin_the_names_are_unknown(untrained_checkpoint, tmp_path):
    result = run_rtool("export", untrained_checkpoint, "--format", "onnx-copy", "--out", tmp_path)
    assert result.returncode == 2 and "unknown format 'onnx-copy'" in result.stderr


def test_a_name_registered_twice_is_refused():
    from exporters import get_exporter, register_exporter
    from runtimes import Runtime, get_runtime_class, register_runtime

    get_exporter("onnx")  # loads the registry
    with pytest.raises(ValueError, match="format 'onnx' is registered twice"):
        register_exporter("onnx", precisions=("fp32",), runtime="onnxruntime", files={"fp32": "x.onnx"})(
            lambda *a, **k: None
        )

    class Impostor(Runtime):
        name = "onnxruntime"

    get_runtime_class("onnxruntime")
    with pytest.raises(ValueError, match="runtime 'onnxruntime' is registered twice"):
        register_runtime(Impostor)
