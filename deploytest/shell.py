"""Shell text: the one place deploytest quotes a value for a remote shell."""

from __future__ import annotations

import shlex


def quote(value: object) -> str:
    """``value`` as one shell word, whatever it holds (quotes, newlines, ``$(...)``, unicode)."""
    return shlex.quote(str(value))
