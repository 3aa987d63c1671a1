"""Live output of a run: one whole line per host per stage, colour only on a terminal.

Lines from parallel hosts never interleave (one lock, one write per line). On a terminal, a rollout
of many hosts also gets a progress line on stderr that is redrawn in place; in a pipe (CI logs) there
is no progress line and no colour. ``NO_COLOR`` turns colour off, ``FORCE_COLOR`` turns it on.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Optional, TextIO

_COLOURS = {"green": "32", "red": "31", "yellow": "33", "bold": "1", "dim": "2", "cyan": "36"}
# Control characters a host's output may carry (escape sequences, carriage returns, bells): shown,
# never obeyed. Newlines and tabs stay.
_CONTROL = {c: f"^{chr(c + 64)}" for c in range(32) if chr(c) not in "\n\t"}
_CONTROL.update({127: "^?", **{c: f"\\x{c:02x}" for c in range(0x80, 0xA0)}})


def neutral(text: str) -> str:
    """``text`` with control characters made visible (``ESC`` as ``^[``), so what a host printed can
    never move the cursor, recolour or clear the operator's terminal."""
    return text.translate(_CONTROL)


def wants_colour(stream: TextIO) -> bool:
    """Colour when ``stream`` is a terminal and ``NO_COLOR`` is unset (``FORCE_COLOR`` forces it)."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


def paint(text: str, colour: str, on: bool) -> str:
    """``text`` in ``colour`` (green, red, yellow, bold, dim, cyan) when ``on``, else as it is.

    :param on: the answer of :func:`wants_colour` for the stream the text goes to.
    """
    if not on or colour not in _COLOURS:
        return text
    return f"\033[{_COLOURS[colour]}m{text}\033[0m"


class Console:
    """Thread-safe, host-prefixed output for a multi-host run."""

    def __init__(self, out: Optional[TextIO] = None, err: Optional[TextIO] = None, *,
                 quiet: bool = False) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.colour = wants_colour(self.out)
        self.quiet = quiet
        self._lock = threading.Lock()
        self._progress: Optional[tuple[str, int, int]] = None
        self._progress_on = wants_colour(self.err) and hasattr(self.err, "isatty") and self.err.isatty()
        self._started = time.monotonic()
        self._width = 4

    def paint(self, text: str, colour: str) -> str:
        """``text`` in ``colour`` when colour is on."""
        return paint(text, colour, self.colour)

    def set_hosts(self, names: list[str]) -> None:
        """Align host prefixes to the longest name."""
        self._width = max([len(n) for n in names] + [4])

    def host(self, host: str, stage: str, message: str, colour: str = "") -> None:
        """One line for one host at one stage: ``[web1] switch: now on 20261125112102``."""
        prefix = self.paint(f"[{neutral(host)}]".ljust(self._width + 2), "cyan")
        label = self.paint(f"{stage}:", colour) if colour else f"{stage}:"
        self.line(f"{prefix} {label} {neutral(message)}")

    def stage(self, title: str) -> None:
        """A stage heading: ``== prepare (3 hosts)``."""
        self.line(self.paint(f"== {title}", "bold"))

    def line(self, text: str = "") -> None:
        """A whole line on stdout, never interleaved with another."""
        if self.quiet:
            return
        with self._lock:
            self._clear_progress()
            self.out.write(text + "\n")
            self.out.flush()
            self._draw_progress()

    def error(self, text: str) -> None:
        """A line on stderr (control characters from hosts made visible)."""
        text = neutral(text)
        with self._lock:
            self._clear_progress()
            self.err.write(self.paint(text, "red") if wants_colour(self.err) else text)
            self.err.write("\n")
            self.err.flush()
            self._draw_progress()

    def progress(self, label: str, done: int, total: int) -> None:
        """Redraw the progress line (terminal only, and only for more than a few hosts)."""
        if not self._progress_on or total < 4:
            return
        with self._lock:
            self._clear_progress()
            self._progress = (label, done, total)
            self._draw_progress()

    def end_progress(self) -> None:
        """Remove the progress line."""
        with self._lock:
            self._clear_progress()
            self._progress = None

    def _clear_progress(self) -> None:
        if self._progress is not None and self._progress_on:
            self.err.write("\r\033[K")
            self.err.flush()

    def _draw_progress(self) -> None:
        if self._progress is None or not self._progress_on:
            return
        label, done, total = self._progress
        width = 30
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        elapsed = time.monotonic() - self._started
        self.err.write(f"\r{label} [{bar}] {done}/{total} hosts  {elapsed:5.1f}s")
        self.err.flush()
