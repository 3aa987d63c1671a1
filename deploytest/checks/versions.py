"""Version comparison for package checks: good enough for dpkg, rpm, apk and pip version strings."""

from __future__ import annotations

import re

from .schema import VERSION_SPEC

_PART = re.compile(r"\d+|[A-Za-z]+|~")


def _key(version: str) -> list[tuple[int, int, str]]:
    """Sortable parts: numbers compare as numbers, ``~`` sorts before everything (Debian's rule)."""
    epoch, sep, rest = version.partition(":")
    if sep and epoch.isdigit():
        parts: list[tuple[int, int, str]] = [(2, int(epoch), "")]
        version = rest
    else:
        parts = [(2, 0, "")]
    for token in _PART.findall(version):
        if token == "~":
            parts.append((0, 0, ""))
        elif token.isdigit():
            parts.append((2, int(token), ""))
        else:
            parts.append((1, 0, token))
    return parts


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` sorts before, equal to, or after ``b``."""
    ka, kb = _key(a), _key(b)
    # Pad so that "1.2.1" > "1.2" and "1.2~rc1" < "1.2", as dpkg orders them.
    width = max(len(ka), len(kb))
    ka += [(1, 0, "")] * (width - len(ka))
    kb += [(1, 0, "")] * (width - len(kb))
    return (ka > kb) - (ka < kb)


def satisfies(installed: str, spec: str) -> bool:
    """Whether ``installed`` meets ``spec`` (``>=1.2``, ``<2``, ``!=1.3``, ``==1.2`` or a bare ``1.2``).

    ``==`` and a bare version match the version itself or any more precise one: ``1.2`` matches
    ``1.2``, ``1.2.3`` and ``1.2-1ubuntu1``.
    """
    match = VERSION_SPEC.match(spec)
    if match is None or not installed:
        return False
    op, wanted = match.group(1) or "==", match.group(2)
    if op in ("==", "="):
        return installed == wanted or (installed.startswith(wanted) and installed[len(wanted)] in ".-+~:")
    if op == "!=":
        return not satisfies(installed, wanted)
    result = compare(installed, wanted)
    return {">=": result >= 0, "<=": result <= 0, ">": result > 0, "<": result < 0}[op]
