"""Markdown pages rtool writes keep user text as text, and their shell commands run what they say.

Issue 15: report.md copied ``--out`` unescaped into its Markdown and its "Reproduce" commands; the docs named
``model.raw.onnx`` where ``--embed-softmax`` writes only ``model.raw-softmax.onnx``. The pages are rendered
with a CommonMark parser (markdown-it-py, GitHub's table and strikethrough rules) and the commands are run
by a real POSIX shell.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from test_report import REFERENCE, bench_report, parity_report

from exporters.onnx_embed import EmbedOptions, variant_filename
from toolkit import report
from toolkit.errors import BadInputError
from toolkit.flags import check_settings

DOCS = Path(__file__).resolve().parents[2] / "docs"


HOSTILE = "runs/`x` *b* _i_ [l](http://e.test) <img src=x> | &amp; $\\frac{a}{$ # h\n- item"


def rendered(text: str) -> str:
    """The HTML a GitHub-like Markdown renderer (CommonMark + tables + strikethrough) makes of ``text``."""
    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(text)


def test_user_text_in_parity_markdown_stays_text():
    parity = parity_report(failed=True)
    parity.reference = {**REFERENCE, "dataset": HOSTILE, "artifact": "model ``x``.pt"}
    parity.rows[1].artifact = HOSTILE
    parity.rows[1].reason = HOSTILE
    html = rendered(report.parity_markdown(parity))
    for tag in ("<a ", "<em>", "<img", "<li>", "<h1>", "<del>"):
        assert tag not in html, tag
    assert html.count("<h2>") == 1 and html.count("<strong>") == 1  # the page's own heading and verdict
    assert "<code>model ``x``.pt</code>" in html
    assert html.count("<tr>") == 1 + 1 + 3  # no row split by the '|' or the newline
    flat = HOSTILE.replace("\n", " ").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert html.count(flat) == 4  # code span, artifact and reason cells, verdict: every character as typed
    assert "<code>" + flat + "</code>" in html  # the data set name, as a code span


def test_demo_page_quotes_reproduce_commands_and_escapes_user_text(tmp_path):
    marker = tmp_path / "RAN"
    out = f"runs/my demo$(touch {marker})`touch {marker}` ; touch {marker} ```"
    commands = [["rtool", "train", "--out", f"{out}/train"], ["rtool", "parity", f"{out}/export"]]
    text = report.demo_markdown(
        title=f"rtool demo: resnet20 on {HOSTILE}",
        intro="intro",
        training={"data set": HOSTILE},
        curves=None,
        parity=parity_report(),
        parity_plot_file="parity.png",
        bench=None,
        grid="predictions.png",
        grid_caption=HOSTILE,
        exports=[],
        timings={"total": 1.0},
        commands=commands,
    )
    html = rendered(text)
    assert "<a " not in html and "<em>" not in html and "<img src=x" not in html
    assert html.count("<h1>") == 1 and html.count("<li>") == 2  # the training item and the time item
    blocks = [t for t in MarkdownIt("commonmark").parse(text) if t.type == "fence"]
    assert len(blocks) == 1
    lines = blocks[0].content.splitlines()
    assert [shlex.split(line) for line in lines] == commands
    for line, argv in zip(lines, commands):  # a real shell gets the same arguments and runs nothing else
        shown = subprocess.run(
            ["sh", "-c", "printf '%s\\0' " + line.removeprefix("rtool ")], capture_output=True, text=True, check=True
        ).stdout
        assert shown.split("\0")[:-1] == argv[1:]
    assert not marker.exists()


def test_bench_markdown_escapes_reasons_and_names():
    bench = bench_report()
    bench.model = "net_*v2*"
    bench.unavailable = [{"runtime": "tensorrt", "precision": "int8", "reason": "see [docs](http://e.test) <b>"}]
    html = rendered(report.bench_markdown(bench))
    assert "<a " not in html and "<em>" not in html and "<b>" not in html
    assert "net_*v2*" in html and "see [docs](http://e.test) &lt;b&gt;" in html


def embedding_table() -> dict[str, str]:
    """docs/embedding.md's table: flags -> the extra file it names."""
    text = (DOCS / "embedding.md").read_text()
    rows = re.findall(r"^\| (`--embed[^|]*) \| ([^|]*) \|", text, flags=re.M)
    return {flags.replace("`", "").strip(): file.strip() for flags, file in rows}


def test_docs_name_the_file_each_embedding_flag_combination_writes():
    table = embedding_table()
    assert table["--embed-preprocessing"].startswith(f"`{variant_filename(False)}`")
    both = table["--embed-preprocessing --embed-softmax"]
    assert both.startswith(f"`{variant_filename(True)}` only") and f"no `{variant_filename(False)}`" in both
    check_settings(EmbedOptions(embed_preprocessing=True, embed_softmax=True))
    with pytest.raises(BadInputError):
        check_settings(EmbedOptions(embed_softmax=True))
    assert "refused, exit 2" in table["--embed-softmax alone"]
    exporters_doc = (DOCS / "exporters.md").read_text()
    assert f"`{variant_filename(True)}` instead of it" in exporters_doc


def test_demo_reproduce_commands_survive_an_out_folder_with_spaces_and_quotes():
    from toolkit.demo import DemoConfig, reproduce_commands

    out = Path("runs/it's my demo")
    commands = reproduce_commands(DemoConfig(out=out, epochs=2), out)
    text = report.demo_markdown(
        title="t",
        intro="i",
        training={},
        curves=None,
        parity=parity_report(),
        parity_plot_file=None,
        bench=None,
        grid=None,
        grid_caption="",
        exports=[],
        timings={},
        commands=commands,
    )
    block = next(t for t in MarkdownIt("commonmark").parse(text) if t.type == "fence")
    parsed = [shlex.split(line) for line in block.content.splitlines()]
    assert parsed == commands
    assert parsed[0] == ["rtool", "train", "--out", "runs/it's my demo/train", "--epochs", "2"]
    assert parsed[2] == ["rtool", "parity", "runs/it's my demo/export"]
