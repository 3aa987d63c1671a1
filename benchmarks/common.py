"""What the benchmarks share: argument parsing, the table they print, the CPU the test hosts used."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import testbed  # noqa: E402


def int_list(text: str) -> List[int]:
    """``"1,10,30"`` -> ``[1, 10, 30]``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def simple_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A reStructuredText simple table (right-aligned cells, except the last column)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    rule = "  ".join("=" * w for w in widths)

    def line(cells: Sequence[str]) -> str:
        out = [str(c).rjust(w) for c, w in zip(cells[:-1], widths[:-1])]
        return "  ".join(out + [str(cells[-1])]).rstrip()

    return "\n".join([rule, line(header), rule, *(line(r) for r in rows), rule])


def host_cpu(host: testbed.Host) -> float:
    """CPU seconds of everything the host's sshd ran and reaped so far (cutime + cstime + own)."""
    try:
        with open(f"/proc/{host.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def fab_env(bed: testbed.TestBed) -> dict[str, str]:
    """The environment of a ``fab`` process on the test bed: deploytest importable, no colour."""
    env = bed.env()
    paths = [str(ROOT)] + [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["NO_COLOR"] = "1"
    return env
