"""What the benchmarks share: argument parsing, the table they print, the CPU the test hosts used, and
running ``fab`` on a throwaway Fabric project as a user would, measured."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import yaml

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


FABFILE = "from deploytest.tasks import deploy, deploy_and_verify, releases, rollback, status, unlock, verify\n"
FAB_TIMEOUT = 600.0


def write_fabric_project(root: Path, deploytest: Dict[str, Any]) -> None:
    """fabfile.py importing the deploytest tasks and fabric.yaml with ``deploytest`` as its config."""
    config = {"deploytest": deploytest}
    (root / "fabfile.py").write_text(FABFILE)
    (root / "fabric.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@dataclass
class Run:
    """One or more ``fab`` processes: wall seconds, exit codes, output, CPU seconds, peak RSS (MiB)."""

    seconds: float
    codes: List[int]
    output: str
    cpu: float
    rss_mb: float

    @property
    def ok(self) -> bool:
        """Every process exited 0."""
        return set(self.codes) == {0}

    @property
    def result(self) -> str:
        """``ok``, or ``exit 1/3``: the distinct non-zero exit codes."""
        return "ok" if self.ok else "exit " + "/".join(str(c) for c in sorted(set(self.codes)))


def fab(root: Path, bed: testbed.TestBed, task: str, hosts: Sequence[str],
        while_waiting: Optional[Callable[[int], None]] = None) -> Run:
    """Run ``python -m fabric -S <ssh_config> -H <hosts> TASK`` in ``root`` and measure it.

    :param while_waiting: called with the ``fab`` process's pid every 50 ms or so until it exits.
    """
    cmd = [sys.executable, "-m", "fabric", "-S", str(bed.ssh_config), "-H", ",".join(hosts), task]
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=root, env=fab_env(bed), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
        deadline = started + FAB_TIMEOUT
        polls = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            polls += 1
            if while_waiting is not None and polls % 5 == 0:
                while_waiting(proc.pid)
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode(errors="replace")
    return Run(seconds, [os.waitstatus_to_exitcode(status)], text, usage.ru_utime + usage.ru_stime,
               usage.ru_maxrss / 1024)
