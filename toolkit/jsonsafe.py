"""Parse JSON that came from a file rtool did not necessarily write, with bounded size and depth.

``json.loads`` recurses once per nesting level, so 100,000 nested brackets end
in a RecursionError, and it reads any size it is given. Cards (in checkpoints,
ONNX metadata, TorchScript and torch.export extra files) and manifests are
small and shallow; anything else is refused in one line. This module imports
nothing heavy, so any reader can use it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from toolkit.errors import BadInputError

MAX_JSON_BYTES = 16 * 1024 * 1024  # a card with 100,000 long class names is far below this
MAX_JSON_DEPTH = 64  # rtool's cards and manifests nest 5 levels deep
# A whole JSON string (its brackets do not count) or one bracket; the string part is the "unrolled loop" form,
# linear in the text.
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def nesting_depth_exceeds(text: str, limit: int) -> bool:
    """Whether any bracket in ``text`` (outside strings) opens deeper than ``limit``, found without recursion."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                return True
        elif token in "]}":
            depth -= 1
    return False


def load_json_text(
    text: str | bytes | bytearray, what: str, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """The parsed value of ``text``, or one BadInputError line that names ``what`` (e.g. "the model card").

    Refused: more than ``max_bytes``, nesting deeper than ``max_depth``, bytes that are not UTF-8/16/32, and
    anything ``json`` rejects (including integers too long to convert).
    """
    if not isinstance(text, (str, bytes, bytearray)):
        raise BadInputError(f"{what} is not JSON text (it is a {type(text).__name__})")
    if len(text) > max_bytes:  # characters for a str: never more than its UTF-8 bytes
        raise BadInputError(
            f"{what} is {len(text):,} bytes of JSON (limit {max_bytes:,}); the file is corrupt or hostile"
        )
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode(json.detect_encoding(bytes(text)))
        except UnicodeDecodeError as e:
            raise BadInputError(f"{what} is not valid JSON (not UTF-8 text: {e.reason})") from None
    if nesting_depth_exceeds(text, max_depth):
        raise BadInputError(f"{what} nests JSON more than {max_depth} levels deep; the file is corrupt or hostile")
    try:
        return json.loads(text)
    except ValueError as e:  # JSONDecodeError, and Python's limit on the digits of an integer
        reason = (str(e).splitlines() or [e.__class__.__name__])[0][:160]
        raise BadInputError(f"{what} is not valid JSON ({reason})") from None
