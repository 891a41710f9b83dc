"""``rtool study degradation``: a tiny study (depth 20, one epoch, a slice of mnist5k), its files, and resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_one_line_error, run_cli
from toolkit.checkpoint import load_checkpoint
from toolkit.errors import BadInputError
from toolkit.models import create_model
from toolkit.models.summary import count_params
from toolkit.plots import draw_degradation
from toolkit.study.config import PAPER_RECIPE, DegradationConfig
from toolkit.study.degradation import figure_panels, run_study
from toolkit.study.runs import RESTART, START, plan_run
from toolkit.train import read_metrics

# Two batches of 128 per epoch: the study's recipe, on a slice small enough for a test.
TINY = ["--depths", "20", "--epochs", "1", "--train-limit", "256", "--test-limit", "64", "--seeds", "0", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Batches this small gain little from a second thread, and on a busy 2-core machine two spinning OpenMP
    threads made each tiny run several times slower (40 s against 7.6 s, measured one after the other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("study") / "degradation"
    return out, run_cli("study", "degradation", *TINY, "--out", out)


def test_study_writes_figure_and_tables_from_its_runs(study):
    out, result = study
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "degradation.json").read_text())
    assert document["recipe"] == {**PAPER_RECIPE, "shift": 2, "flip": False, "epochs": 1}
    assert [n["model"] for n in document["nets"]] == ["plain20", "resnet20"]
    markdown = (out / "degradation.md").read_text()
    for net in document["nets"]:
        run_dir = out / "runs" / f"{net['model']}-seed0"
        rows = read_metrics(run_dir)
        assert len(rows) == 1 and load_checkpoint(run_dir / "last.pt").card.training["batch_size"] == 128
        assert net["final_train_error"] == pytest.approx(100 * (1 - rows[-1]["train_acc"]), abs=1e-4)
        assert net["final_test_error"] == pytest.approx(100 * (1 - rows[-1]["test_acc"]), abs=1e-4)
        assert net["train_seconds_per_epoch"] == pytest.approx(rows[-1]["train_seconds"], abs=1e-3)
        assert net["params"] == count_params(create_model(net["model"], in_channels=1, num_classes=10))
        cells = f"| {net['final_train_error']:.2f} | {net['final_test_error']:.2f} |"
        assert cells in markdown, (cells, markdown)
        assert f"{net['model']}: train error {net['final_train_error']:.2f}%" in result.stdout
    assert "rtool study degradation --depths 20 --dataset mnist5k --epochs 1" in markdown
    assert (out / "degradation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    fig = draw_degradation(figure_panels(document["nets"]))  # what the PNG shows: plain left, ResNet right
    left, right = fig.axes[:2]
    assert (left.get_title(), right.get_title()) == ("plain", "ResNet")
    for ax, net in zip((left, right), document["nets"]):
        train_line, test_line = ax.get_lines()
        assert train_line.get_linestyle() == "--" and test_line.get_linewidth() > train_line.get_linewidth()
        assert list(train_line.get_ydata()) == pytest.approx([net["final_train_error"]], abs=1e-3)
        assert list(test_line.get_ydata()) == pytest.approx([net["final_test_error"]], abs=1e-3)


def test_a_second_run_skips_finished_runs(study):
    out, _ = study
    lasts = sorted((out / "runs").glob("*/last.pt"))
    before = [p.stat().st_mtime_ns for p in lasts]
    again = run_cli("study", "degradation", *TINY, "--out", out)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("finished earlier (1 epoch), skipped") == 2
    assert [p.stat().st_mtime_ns for p in lasts] == before  # nothing trained again
    last = json.loads((out / "degradation.json").read_text())["last_invocation"]
    assert last["trained"] == [] and last["skipped"] == ["plain20-seed0", "resnet20-seed0"]
    assert "skipped plain20-seed0, resnet20-seed0 (finished earlier)" in (out / "degradation.md").read_text()


def test_a_stopped_study_resumes_onto_the_uninterrupted_result(study, tmp_path):
    out, _ = study
    config = DegradationConfig(
        depths="20", epochs=1, train_limit=256, test_limit=64, quiet=True, out=str(tmp_path / "s")
    )
    stopped = run_study(config, say=lambda line: None, should_stop=lambda: True)  # stops after the first batch
    assert stopped.interrupted and stopped.stopped_run.endswith("plain20-seed0") and not stopped.files
    state = load_checkpoint(tmp_path / "s" / "runs" / "plain20-seed0" / "last.pt").train_state
    assert (state["epoch"], state["batch"]) == (0, 1)
    assert not (tmp_path / "s" / "runs" / "resnet20-seed0").exists()

    lines: list[str] = []
    resumed = run_study(config, say=lines.append)
    assert not resumed.interrupted and lines == ["[1/2] plain20-seed0: resume", "[2/2] resnet20-seed0: start"]
    for name in ("plain20-seed0", "resnet20-seed0"):
        whole = load_checkpoint(out / "runs" / name / "last.pt").state_dict
        parts = load_checkpoint(tmp_path / "s" / "runs" / name / "last.pt").state_dict
        assert all(torch.equal(whole[k], parts[k]) for k in whole), name
    first = json.loads((out / "degradation.json").read_text())["nets"]
    assert [n["final_train_error"] for n in resumed.nets] == [n["final_train_error"] for n in first]


def test_run_folders_restart_or_refuse(tmp_path):
    config = DegradationConfig(depths="20", epochs=1, out=str(tmp_path)).train_configs()[0]
    run_dir = Path(config.out)
    assert plan_run(config).state == START
    run_dir.mkdir(parents=True)
    (run_dir / ".best.pt.k2j3.tmp").write_bytes(b"half")  # killed before its first last.pt
    (run_dir / "curves.png").write_bytes(b"old")
    assert plan_run(config).state == RESTART
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(BadInputError, match="notes.txt"):
        plan_run(config)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--depths", "21"], "no plain/residual pair of depth 21"),
        (["--depths", "20;56"], "--depths"),
        (["--seeds", "a"], "--seeds"),
        (["--epochs", "0"], "--epochs"),
    ],
)
def test_bad_flags_are_one_line(tmp_path, args, message):
    assert_one_line_error(run_cli("study", "degradation", *args, "--out", tmp_path / "s"), 2, message)
    assert not (tmp_path / "s" / "runs").exists()


def test_other_settings_in_the_same_folder_are_refused_before_training(study):
    out, _ = study
    changed = [*TINY[:2], "--epochs", "2", *TINY[4:]]
    result = run_cli("study", "degradation", *changed, "--out", out)
    assert_one_line_error(result, 2, "holds a run with other settings (epochs 1 vs 2)")
    assert [r["epoch"] for r in read_metrics(out / "runs" / "plain20-seed0")] == [1]
