"""What the benchmarks share: argument parsing, the table they print, the CPU and memory the test hosts
used, and running ``fab`` (or another tool) on a throwaway project as a user would, measured: wall
time, CPU, peak memory, and on request the threads and open files of the process over time."""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
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
    """CPU seconds the host used so far: every process of its PID namespace, with what it reaped
    (sshd its sessions, the host's init the orphans)."""
    return host.cpu_seconds()


def hosts_cpu(bed: testbed.TestBed) -> float:
    """:func:`host_cpu` summed over all the bed's hosts, in one pass over /proc (a thousand hosts)."""
    wanted = {h._pid_ns for h in bed.hosts if h._pid_ns}  # noqa: SLF001
    by_ns = testbed._pids_by_ns(("pid",))  # noqa: SLF001
    return sum(testbed._cpu_seconds(p) for ns in wanted for p in by_ns.get(ns, []))  # noqa: SLF001


def pss_mb(pids: Sequence[int]) -> float:
    """Proportional set size of these processes (shared pages divided among their users), MiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total / 1024


def bed_pids(bed: testbed.TestBed) -> List[int]:
    """Every process the hosts run (holders, inits, sshds, sessions) and the bed's relay."""
    by_ns = testbed._pids_by_ns(("pid",))  # noqa: SLF001
    pids = [p for h in bed.hosts for p in by_ns.get(h._pid_ns or "", [])]  # noqa: SLF001
    pids += [h.holder.pid for h in bed.hosts if h.holder is not None]
    return pids + ([bed.relay.pid] if bed.relay is not None else [])


def mem_available_mb() -> float:
    """MemAvailable of /proc/meminfo, MiB."""
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0.0


def raise_fd_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit (children inherit it), as a
    fleet's control machine is set up; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Usage:
    """What :func:`sample` saw of a process: peaks and the samples (seconds, threads, open fds)."""

    threads: int = 0
    fds: int = 0
    timeline: List[tuple[float, int, int]] = field(default_factory=list)


def sample(pid: int, usage: Usage, started: float) -> None:
    """Record the threads and open file descriptors of ``pid`` now (a ``while_waiting`` callback)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            threads = next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return
    usage.threads, usage.fds = max(usage.threads, threads), max(usage.fds, fds)
    usage.timeline.append((time.perf_counter() - started, threads, fds))


def byte_compile() -> None:
    """Compile deploytest's modules, as ``pip install`` does: run from the source tree (and with
    ``PYTHONDONTWRITEBYTECODE`` set, as on some machines) every ``fab`` would compile them again,
    about 60 ms of CPU per run that an installed deploytest does not spend."""
    import compileall

    compileall.compile_dir(str(ROOT / "deploytest"), quiet=1)


def fab_env(bed: testbed.TestBed) -> dict[str, str]:
    """The environment of a ``fab`` process on the test bed: deploytest importable (and byte-compiled,
    as installed), no colour."""
    byte_compile()
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
        while_waiting: Optional[Callable[[int], None]] = None, ssh_config: Optional[Path] = None,
        timeout: float = FAB_TIMEOUT) -> Run:
    """Run ``python -m fabric -S <ssh_config> -H <hosts> TASK`` in ``root`` and measure it.

    :param while_waiting: called with the ``fab`` process's pid every 50 ms or so until it exits.
    :param ssh_config: another ssh_config than the bed's own.
    :param timeout: seconds before the process is killed (the run then reports exit -9).
    """
    cmd = [sys.executable, "-m", "fabric", "-S", str(ssh_config or bed.ssh_config), "-H", ",".join(hosts),
           task]
    return measure(cmd, root, fab_env(bed), while_waiting, timeout)


def measure(cmd: Sequence[str], cwd: Path, env: Dict[str, str],
            while_waiting: Optional[Callable[[int], None]] = None, timeout: float = FAB_TIMEOUT) -> Run:
    """Run ``cmd`` (output kept in a temporary file) and measure its wall time, CPU and peak RSS (of
    the process and the children it waited for, from ``wait4``)."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
        deadline = started + timeout
        polls = 0
        try:
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
        except BaseException:  # Ctrl-C: the measured process does not outlive the benchmark
            proc.kill()
            proc.wait()
            raise
        seconds = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode(errors="replace")
    return Run(seconds, [os.waitstatus_to_exitcode(status)], text, usage.ru_utime + usage.ru_stime,
               usage.ru_maxrss / 1024)
