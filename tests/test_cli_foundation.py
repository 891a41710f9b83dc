"""`rtool --version`, `rtool models`, `rtool summary` and a missing data set.

`models --json` runs as a real subprocess, alone, so that its own CPU time can
be measured; the other command lines go through the real entry point in this
process, up front, and the tests read the results.
"""

from __future__ import annotations

import json
import resource

import pytest

import toolkit

from conftest import assert_one_line_error, run_cli, run_rtool

MODELS = [f"resnet{d}" for d in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110)] + [
    f"plain{d}" for d in (20, 32, 44, 56, 110)
]

BAD_INPUT = {
    "unknown model": (["summary", "resnet19"], "unknown model 'resnet19'"),
    "five dimensions": (["summary", "resnet18", "--input", "1x1x3x224x224"], "N, HxW, CxHxW or NxCxHxW"),
    "not a number": (["summary", "resnet18", "--input", "1x3xAx224"], "not a shape"),
    "zero size": (["summary", "resnet18", "--input", "1x3x0x224"], "positive"),
    "zero classes": (["summary", "resnet18", "--num-classes", "0"], "num-classes"),
    "unknown option": (["models", "--bogus"], "no such option"),
}


@pytest.fixture(scope="module")
def runs(untrained_checkpoint, tmp_path_factory):
    empty = tmp_path_factory.mktemp("data") / "no-data"
    commands = {
        "version": ["--version"],
        "models table": ["models"],
        "summary grey": ["summary", "resnet18", "--input", "1x1x224x224"],
        "summary grey, batch 1": ["summary", "resnet18", "--input-size", "1x224x224"],
        "summary 7 classes": ["summary", "resnet18", "--input", "1x1x224x224", "--num-classes", "7"],
        "missing data": ["infer", str(untrained_checkpoint), "--dataset", "mnist", "--data-dir", str(empty)],
        **{name: args for name, (args, _) in BAD_INPUT.items()},
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = {"models json": run_rtool("models", "--json")}  # alone, so its CPU time can be read
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    done["models json cpu"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    done.update({name: run_cli(*args) for name, args in commands.items()})  # the entry point, in-process
    done["empty dir"] = empty
    return done


def ok(runs, name):
    result = runs[name]
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_version(runs):
    assert ok(runs, "version").strip() == f"rtool, version {toolkit.__version__}"


def test_models_json_lists_the_fifteen_models_in_seconds(runs):
    rows = json.loads(ok(runs, "models json"))
    assert [r["name"] for r in rows] == MODELS
    by_name = {r["name"]: r for r in rows}
    # torchvision's published figures: params and GFLOPs (multiply-accumulates) at 224x224
    assert by_name["resnet18"]["params"] == 11_689_512 and round(by_name["resnet18"]["gflops"], 2) == 1.81
    assert by_name["resnet50"]["params"] == 25_557_032 and round(by_name["resnet50"]["gflops"], 2) == 4.09
    assert by_name["resnet20"]["params"] == by_name["plain20"]["params"] == 269_722  # option A: 0.27M
    assert {r["family"] for r in rows} == {"imagenet-resnet", "cifar-resnet", "cifar-plain"}
    assert all(r["default_input"] == ("3x224x224" if r["family"] == "imagenet-resnet" else "3x32x32") for r in rows)
    # CPU seconds, not wall time, so a busy machine does not fail it. Models are built on the meta device:
    # about 3 s for the PyTorch import and 5 s for the walk; a real forward of all 15 takes several times that.
    assert runs["models json cpu"] < 20, f"rtool models --json used {runs['models json cpu']:.1f} CPU seconds"


def test_models_table(runs):
    out = ok(runs, "models table")
    for name in MODELS:
        assert f" {name} " in out
    assert "11.69" in out and "1.814" in out  # resnet18: params (M), GFLOPs


def test_models_table_piped_without_columns_keeps_one_line_per_model():
    out = run_rtool("models", env={"COLUMNS": ""})  # not a terminal, no width given: rich would wrap at 80
    assert out.returncode == 0, out.stderr
    rows = table_rows(out.stdout)
    assert sorted(rows) == sorted(MODELS)
    assert "imagenet-resnet" in rows["resnet18"] and "1.814" in rows["resnet18"] and "torchvision" in rows["resnet18"]


def table_rows(out: str) -> dict[str, str]:
    return {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 4}


def test_summary_resnet18_on_a_grey_224_input_walks_every_layer(runs):
    out = ok(runs, "summary grey")
    assert out.strip().splitlines()[-1].rstrip().endswith("[1, 1000]")
    rows = table_rows(out)
    for layer, shape in (
        ("conv1", "[1, 64, 112, 112]"),
        ("maxpool", "[1, 64, 56, 56]"),
        ("layer2.0", "[1, 128, 28, 28]"),
        ("layer3.1", "[1, 256, 14, 14]"),
        ("layer4.1", "[1, 512, 7, 7]"),
        ("avgpool", "[1, 512, 1, 1]"),
        ("fc", "[1, 1000]"),
    ):
        assert shape in rows[layer], (layer, rows.get(layer))
    assert "3,136" in rows["conv1"]  # 64 x 1 x 7 x 7: the stem takes one channel
    assert "11,683,240" in out  # resnet18's 11,689,512 less 64 x 2 x 49 stem weights


def test_summary_input_size_takes_the_same_spellings_as_train(runs):
    """--input-size 1x224x224 (CxHxW, batch 1) walks what --input 1x1x224x224 (the old spelling) walks."""
    assert ok(runs, "summary grey, batch 1") == ok(runs, "summary grey")


def test_summary_with_another_class_count(runs):
    out = ok(runs, "summary 7 classes")
    assert out.strip().splitlines()[-1].rstrip().endswith("[1, 7]")
    assert "[1, 7]" in table_rows(out)["fc"] and "3,591" in table_rows(out)["fc"]  # 512 x 7 + 7


@pytest.mark.parametrize("name", BAD_INPUT)
def test_bad_input_is_exit_2_and_one_line(runs, name):
    assert_one_line_error(runs[name], code=2, contains=BAD_INPUT[name][1])


def test_missing_data_set_through_the_cli_names_the_folder_and_download(runs):
    """`rtool infer --dataset` is the user's path to a data set: offline and missing, one line, exit 2."""
    result = runs["missing data"]
    assert_one_line_error(result, code=2, contains=str(runs["empty dir"]))
    assert "--download" in result.stderr
