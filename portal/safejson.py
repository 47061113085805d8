"""JSON parsing with a cap on nesting, for everything that reads JSON someone else wrote.

``json.loads`` of a document nested some thousands of levels deep raises ``RecursionError``, and
one nested a few hundred levels parses but then breaks whatever walks it recursively (fhirclient's
models, the structure checks, ``json.dumps`` of a raw payload). Both become ``JSONTooDeep``, a
``ValueError`` its callers turn into a typed error (``bad_payload`` for a hospital's answer, HTTP
400 for a request to the API). No FHIR resource or API request comes near ``MAX_DEPTH`` levels.

The depth is measured on the bytes, without recursion: the document is reduced to its brackets
(escapes and string contents removed), and innermost ``()`` pairs are peeled off one level per
pass, at most ``MAX_DEPTH`` passes of ``bytes.replace``. It runs only on documents that parsed,
so every quote left after removing escapes opens or closes a string.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 100

_KEEP = b'"[]{}'
_DROP = bytes(sorted(set(range(256)) - set(_KEEP)))
_BRACKETS = bytes.maketrans(b"[{]}", b"(())")


class JSONTooDeep(ValueError):
    """The document nests arrays and objects deeper than the cap."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        super().__init__(f"JSON nested more than {max_depth} levels deep")


def loads(data: bytes | bytearray | str, *, max_depth: int = MAX_DEPTH, **kwargs: Any) -> Any:
    """``json.loads`` (keyword arguments passed on), refusing documents nested deeper than ``max_depth``.

    Too deep raises ``JSONTooDeep``; malformed JSON raises ``json.JSONDecodeError`` (a ``ValueError``)
    as usual.
    """
    try:
        value = json.loads(data, **kwargs)
    except RecursionError:
        raise JSONTooDeep(max_depth) from None
    if isinstance(value, dict | list) and nesting_exceeds(data, max_depth):
        raise JSONTooDeep(max_depth)
    return value


def nesting_exceeds(data: bytes | bytearray | str, max_depth: int) -> bool:
    """Whether valid JSON nests arrays and objects deeper than ``max_depth``."""
    raw = _utf8(data)
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False
    if b"\\" in raw:
        # Escaped backslashes first, so the quote in `\\"` still closes its string.
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    shape = raw.translate(None, _DROP).replace(b'""', b"")
    if b'"' in shape:
        shape = b"".join(shape.split(b'"')[::2])  # brackets inside strings are text
    shape = shape.translate(_BRACKETS)
    for _ in range(max_depth):
        if not shape:
            return False
        shape = shape.replace(b"()", b"")
    return bool(shape)


def _utf8(data: bytes | bytearray | str) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")
    encoding = json.detect_encoding(data)
    if encoding in ("utf-8", "utf-8-sig"):
        return bytes(data)
    # UTF-16 and UTF-32 put zero bytes beside every bracket; measure the same text as UTF-8.
    return bytes(data).decode(encoding).encode("utf-8", "surrogatepass")
