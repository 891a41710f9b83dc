"""Markdown that stays literal: text, code spans, shell blocks and tables built from values users chose.

Paths, titles, class names and error messages come from users; in a page rtool writes they stay text.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|#~&$!])")
LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029]+")


def markdown_text(text: Any) -> str:
    """``text`` as literal Markdown: every character that could start emphasis, a link, HTML, a table cell,
    math (GitHub's ``$``) or a new block is backslash-escaped, and line breaks become spaces.

    Paths, titles, class names and error messages come from users; in a page rtool writes they stay text.
    """
    return MARKDOWN_SPECIAL.sub(r"\\\1", LINE_BREAKS.sub(" ", str(text)))


def markdown_code(text: Any) -> str:
    """``text`` as an inline code span, fenced by more backticks than it holds (so no backtick ends it)."""
    text = LINE_BREAKS.sub(" ", str(text))
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_shell_block(commands: list[list[str]]) -> str:
    """Shell commands, each argument quoted with shlex, in a code fence no backtick inside can close."""
    lines = [shlex.join(str(arg) for arg in argv) for argv in commands]
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return "\n".join([f"{fence}sh", *lines, fence])


def markdown_table(header: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    """A Markdown table; every cell is literal text (markdown_text)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(markdown_text(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
