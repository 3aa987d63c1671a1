"""Benchmark: ``fab -H ... deploy`` of a 10-file and a 2,000-file source to 1, 10 and 30 SSH hosts.

Brings up N real OpenSSH hosts with ``tests/testbed.py`` (needs root: each host is its own network
namespace with its own /srv), writes a throwaway Fabric project (fabfile.py importing the deploytest
tasks, fabric.yaml with the ``deploytest`` key alone) whose source is a
generated directory of small files, and runs ``python -m fabric -S <ssh_config> -H <hosts> deploy``
as a user would. Per row it reports the wall time of the ``fab`` process and the remote command
sessions each host received (``Starting session: command`` lines in its sshd log, after minus
before; min and max over the hosts).

The deploy has no hooks (nothing binds a port), so the rows measure upload, switch and bookkeeping.
Every row deploys a new release over the previous one (an untimed warm-up deploy comes first).
Two CPU columns say where the time went: the ``fab`` process's own CPU time (user + system, from
``wait4``) and the CPU time the hosts spent serving it (each sshd's reaped children: sessions, shells,
the commands of the remote scripts), per host. All hosts share this machine's CPUs, so on a small
machine the hosts' CPU, not deploytest, bounds the many-host rows.


Run: ``PYTHONPATH=. python benchmarks/bench_deploy.py`` (as root); prints one reStructuredText
simple table. ``--hosts`` and ``--files`` choose the rows, ``--rounds`` takes the median of several
runs per row.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from common import Run, fab, host_cpu, int_list, simple_table, testbed, write_fabric_project

DEPLOY_TO = "/srv/bench"


def make_source(directory: Path, files: int) -> None:
    """``files`` small text files (about 200 bytes each) in 20 files per subdirectory."""
    directory.mkdir(parents=True)
    (directory / "VERSION").write_text("1.0\n")
    for i in range(files - 1):
        sub = directory / f"pkg{i // 20:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"module{i:05d}.py").write_text(f"# file {i}\nVALUE = {i}\n" + "x = 1\n" * 30)


def write_project(root: Path, source: str, parallel: int) -> None:
    """fabfile.py and fabric.yaml for a hook-less deploy of ``source``."""
    write_fabric_project(root, {
        "app": "bench",
        "deploy_to": DEPLOY_TO,
        "source": source,
        "keep_releases": 3,
        "rollout": {"batches": [1, "100%"], "max_fail": 0, "parallel": parallel},
    })


def main() -> int:
    """Bring up the hosts, run every (files, hosts) row, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--hosts", type=int_list, default=[1, 10, 30], help="host counts (default 1,10,30)")
    parser.add_argument("--files", type=int_list, default=[10, 2000],
                        help="source sizes in files (default 10,2000)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per row; the median time is shown")
    parser.add_argument("--parallel", type=int, default=0,
                        help="rollout.parallel (default: the largest host count)")
    args = parser.parse_args()
    problem = testbed.check_requirements(netns=True)
    if problem:
        print(f"cannot run the benchmark: {problem}", file=sys.stderr)
        return 2
    most = max(args.hosts)
    parallel = args.parallel or most
    work = Path(tempfile.mkdtemp(prefix="dt-bench-deploy-"))
    rows: List[List[str]] = []
    failed = False
    try:
        for files in args.files:
            make_source(work / f"src{files}", files)
        started = time.perf_counter()
        bed = testbed.start_hosts(most, prefix="web")
        print(f"{most} hosts up in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        try:
            for files in args.files:
                project = work / f"project{files}"
                project.mkdir()
                write_project(project, str(work / f"src{files}") + "/", parallel)
                warm = fab(project, bed, "deploy", bed.names)  # untimed
                print(f"warm-up deploy of {files} files to {most} hosts: {warm.seconds:.2f}s, {warm.result}",
                      file=sys.stderr)
                if not warm.ok:
                    print(warm.output, file=sys.stderr)
                    failed = True
                for n in args.hosts:
                    hosts = bed.hosts[:n]
                    runs: List[Run] = []
                    sessions: List[int] = []
                    remote: List[float] = []
                    for _ in range(args.rounds):
                        before = [h.sessions() for h in hosts]
                        cpu_before = sum(host_cpu(h) for h in hosts)
                        run = fab(project, bed, "deploy", [h.name for h in hosts])
                        time.sleep(0.2)  # let sshd reap the last sessions before reading its CPU time
                        remote.append((sum(host_cpu(h) for h in hosts) - cpu_before) / n)
                        sessions += [h.sessions() - b for h, b in zip(hosts, before)]
                        runs.append(run)
                        if not run.ok:
                            print(run.output, file=sys.stderr)
                            failed = True
                        print(f"deploy {files} files to {n} hosts: {run.seconds:.2f}s, {run.result}, "
                              f"fab CPU {run.cpu:.2f}s, host CPU {remote[-1]:.2f}s/host, "
                              f"sessions/host {min(sessions)}..{max(sessions)}", file=sys.stderr)
                    codes = sorted({c for r in runs for c in r.codes})
                    rows.append([str(n), f"{files:,}", f"{statistics.median(r.seconds for r in runs):.2f}",
                                 str(min(sessions)), str(max(sessions)),
                                 f"{statistics.median(r.cpu for r in runs):.2f}",
                                 f"{statistics.median(remote):.2f}",
                                 "ok" if codes == [0] else "exit " + "/".join(map(str, codes))])
        finally:
            bed.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    by_files: Dict[str, Dict[str, tuple[float, float]]] = {}
    for row in rows:
        by_files.setdefault(row[1], {})[row[0]] = (float(row[2]), float(row[6]) * int(row[0]))
    print()
    print(f"``fab -H <hosts> deploy``: no hooks; rollout batches [1, \"100%\"], parallel {parallel}; "
          f"{os.cpu_count()} CPUs shared by fab and all hosts; median of {args.rounds} run(s)")
    print()
    print(simple_table(["hosts", "files", "wall (s)", "sessions/host min", "max", "fab CPU (s)",
                        "host CPU (s/host)", "result"], rows))
    print()
    cpus = os.cpu_count() or 1
    for files, times in by_files.items():
        lo, hi = str(min(args.hosts)), str(most)
        if lo in times and hi in times and lo != hi:
            print(f"{files} files: {hi} hosts take {times[hi][0] / times[lo][0]:.2f}x the time of {lo}; "
                  f"the {hi} hosts alone used {times[hi][1]:.1f} CPU-s on {cpus} shared CPUs "
                  f"(at least {times[hi][1] / cpus:.1f}s of wall time here).")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
