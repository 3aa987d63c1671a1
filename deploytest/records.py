"""The host state format: the release metadata, the lock and the journal as ``KEY=VALUE`` lines.

A value is escaped so that one line holds it whatever it is: backslash, newline, tab and carriage return
become ``\\\\``, ``\\n``, ``\\t``, ``\\r`` and any other control character ``\\0ooo`` (octal), which is exactly
what the shell's ``printf %b`` decodes (the ``dt_get`` helper of :mod:`deploytest.shell`; ``dt_put``
writes the same escapes). Quotes, ``=``, ``$(...)`` and unicode need no escape. A key may repeat:
the last line wins for a single value, and every line counts for a list (the journal's steps).

Before this format, the same files were one line of JSON; :func:`is_legacy` tells them apart so that
they are still read after an upgrade.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_DECODE = re.compile(r"\\(\\|n|t|r|0[0-7]{0,3})")
_DECODED = {"\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


def encode(value: str) -> str:
    """``value`` as it is written after ``KEY=`` (one line, no tab)."""
    out = []
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\0{ord(char):03o}")
        else:
            out.append(char)
    return "".join(out)


def decode(text: str) -> str:
    """The value :func:`encode` (or the shell's ``dt_put``) wrote as ``text``."""
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        return chr(int(code[1:] or "0", 8)) if code.startswith("0") else _DECODED[code]

    return _DECODE.sub(one, text)


def format_record(fields: Mapping[str, object]) -> str:
    """``KEY=VALUE`` lines, each ending in a newline; None is written as an empty value."""
    return "".join(f"{key}={encode('' if value is None else str(value))}\n" for key, value in fields.items())


def record_lines(text: str) -> list[tuple[str, str]]:
    """Every ``(key, value)`` of a record, in order; a line without ``=`` is skipped."""
    pairs = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key and key.replace("_", "").isalnum():
            pairs.append((key, decode(value)))
    return pairs


def parse_record(text: str) -> dict[str, str]:
    """A record as a dict (the last line of a key wins)."""
    return dict(record_lines(text))


def is_legacy(text: str) -> bool:
    """True for a file written before this format (one line of JSON)."""
    return text.lstrip().startswith("{")


def load(text: str) -> list[tuple[str, Any]]:
    """Every ``(key, value)`` of a file in either format, in order.

    A line of the earlier format is a JSON object, whose items count as lines of their own (the
    journal's header, then one ``{"step": ...}`` per step); a damaged JSON line counts for nothing.
    """
    pairs: list[tuple[str, Any]] = []
    for line in text.splitlines():
        if is_legacy(line):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                pairs += [(str(k), v) for k, v in data.items()]
        else:
            pairs += record_lines(line)
    return pairs


def number(value: object) -> int:
    """An integer field (``pid``) as either format wrote it; 0 if it is none."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else 0
