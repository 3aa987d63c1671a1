"""Benchmark: ``fab -H ... deploy-and-verify`` of the example app to 1, 10 and 50 SSH hosts, against a loop.

Brings up 50 real OpenSSH hosts with ``tests/testbed.py`` (needs root: each host is its own network
namespace, so every host runs its own ``hello`` on port 8000 and has its own /srv), writes a Fabric
project around ``examples/hello/app`` (deploy_to /srv/hello, build hook ``py_compile``, restart hook
``sh bin/restart 8000``, checks: HTTP /health, port 8000, the VERSION file) and runs, as a user would:

* one coordinated ``python -m fabric -S <ssh_config> -H web1,...,webN deploy-and-verify`` per row
  (rollout ``batches: [1, "100%"]``: a one-host canary, then the rest at once, ``parallel: 50``);
* the comparison: a sequential shell-style loop of single-host ``fab -H webK deploy-and-verify`` runs
  over the same first 10 (and 50) hosts.

Per row: wall time; peak memory (maximum resident set size, from ``wait4`` of each ``fab`` process,
the largest over a loop's runs); the ``fab`` process's CPU time; and the CPU time the hosts spent
serving it (each sshd's reaped children: sessions, shells, hooks, checks), per host. All hosts share
this machine's CPUs. Every row deploys a new release over a live one (an untimed first deploy to
all hosts comes first).


The example's restart script waits until the old ``hello`` is gone (``kill -0``). The old process is
an orphan (started in the background by an earlier session), and an orphan that exits stays a zombie
until whoever adopted it reaps it; ``kill -0`` succeeds on a zombie. Some container inits (PID 1)
reap only every couple of seconds, which adds up to that much to every restart. So by default this
script makes itself the hosts' child subreaper (``PR_SET_CHILD_SUBREAPER``) and reaps their orphans
at once, as systemd or a normal init does; ``--no-reaper`` leaves it to PID 1.

Run: ``PYTHONPATH=. python benchmarks/bench_flow.py`` (as root); prints one reStructuredText simple
table. ``--hosts`` and ``--sequential`` choose the rows.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Set

import common
from common import ROOT, Run, host_cpu, int_list, simple_table, testbed, write_fabric_project

APP = ROOT / "examples" / "hello" / "app"
DEPLOY_TO = "/srv/hello"
PORT = 8000


def hello_config(parallel: int) -> Dict[str, Any]:
    """The example app's deploytest config (as tests/project.py's ``hello_config``)."""
    return {
        "app": "hello",
        "deploy_to": DEPLOY_TO,
        "source": "app/",
        "keep_releases": 5,
        "shared": ["log"],
        "hooks": {
            "build": ["python3 -m py_compile hello.py"],
            "restart": [f"sh bin/restart {PORT}"],
        },
        "checks": [
            {"http": {"url": f"http://127.0.0.1:{PORT}/health", "status": 200, "contains": "ok",
                      "name": "health"}},
            {"port": {"port": PORT}},
            {"file": {"path": f"{DEPLOY_TO}/current/VERSION", "contains": "1.0"}},
        ],
        "verify": {"timeout": 15, "interval": 0.3},
        "rollout": {"batches": [1, "100%"], "max_fail": 0, "parallel": parallel},
    }


def write_project(root: Path, parallel: int) -> None:
    """fabfile.py, fabric.yaml and a copy of the example app."""
    root.mkdir(parents=True)
    shutil.copytree(APP, root / "app")
    write_fabric_project(root, hello_config(parallel))


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Adopt the orphans of every process started from here (the hosts' sessions and daemons)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def reap_orphans(keep: Set[int]) -> None:
    """Reap this process's zombie children, except the pids in ``keep`` (waited for elsewhere)."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in keep:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2:].split(None, 2)
        if len(fields) >= 2 and fields[0] == b"Z" and int(fields[1]) == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry), os.WNOHANG)



REAPER = [False]


def fab(root: Path, bed: testbed.TestBed, task: str, hosts: Sequence[str]) -> Run:
    """:func:`common.fab`, reaping the hosts' orphans meanwhile when this process is their subreaper."""
    if not REAPER[0]:
        return common.fab(root, bed, task, hosts)
    bed_pids = bed._pids  # noqa: SLF001 - the bed's holders and sshds: not ours to reap
    return common.fab(root, bed, task, hosts, lambda fab_pid: reap_orphans(bed_pids | {fab_pid}))


def measured(bed: testbed.TestBed, hosts: Sequence[testbed.Host], body: Any) -> tuple[Run, float]:
    """Run ``body()`` (-> Run); also return the hosts' CPU seconds per host meanwhile."""
    before = sum(host_cpu(h) for h in hosts)
    run = body()
    time.sleep(0.3)  # let sshd reap the last sessions before reading its CPU time
    return run, (sum(host_cpu(h) for h in hosts) - before) / len(hosts)


def sequential(root: Path, bed: testbed.TestBed, hosts: Sequence[testbed.Host]) -> Run:
    """``for h in hosts: fab -H h deploy-and-verify``, one after another."""
    started = time.perf_counter()
    runs = [fab(root, bed, "deploy-and-verify", [h.name]) for h in hosts]
    return Run(time.perf_counter() - started, [c for r in runs for c in r.codes],
               "".join(r.output for r in runs if r.codes != [0]), sum(r.cpu for r in runs),
               max(r.rss_mb for r in runs))


def main() -> int:
    """Bring up the hosts, run the coordinated and the sequential rows, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--hosts", type=int_list, default=[1, 10, 50],
                        help="host counts of the coordinated rows (default 1,10,50)")
    parser.add_argument("--sequential", type=int_list, default=[10, 50],
                        help="host counts of the one-fab-per-host loop rows (default 10,50; '' for none)")
    parser.add_argument("--parallel", type=int, default=50, help="rollout.parallel (default 50)")
    parser.add_argument("--no-reaper", action="store_true",
                        help="leave the hosts' orphans to PID 1 instead of reaping them at once")
    args = parser.parse_args()
    problem = testbed.check_requirements(netns=True)
    if problem:
        print(f"cannot run the benchmark: {problem}", file=sys.stderr)
        return 2
    most = max(args.hosts + args.sequential)
    REAPER[0] = not args.no_reaper and become_subreaper()
    work = Path(tempfile.mkdtemp(prefix="dt-bench-flow-"))
    rows: List[List[str]] = []
    walls: Dict[tuple[str, int], float] = {}
    rollout = f'[1, "100%"], parallel {args.parallel}'
    failed = False
    try:
        project = work / "project"
        write_project(project, args.parallel)
        started = time.perf_counter()
        bed = testbed.start_hosts(most, prefix="web")
        print(f"{most} hosts up in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        try:
            warm = fab(project, bed, "deploy-and-verify", bed.names)  # first deploy: untimed
            print(f"first deploy-and-verify to {most} hosts: {warm.seconds:.2f}s, {warm.result}", file=sys.stderr)
            if warm.codes != [0]:
                print(warm.output, file=sys.stderr)
                failed = True
            plan = [("one fab, all hosts", n) for n in args.hosts]
            plan += [("loop, one fab per host", n) for n in args.sequential]
            for mode, n in plan:
                hosts = bed.hosts[:n]
                if mode.startswith("one"):
                    run, remote = measured(bed, hosts, lambda h=hosts: fab(project, bed, "deploy-and-verify",
                                                                          [x.name for x in h]))
                    how = rollout if n > 1 else "(one host)"
                else:
                    run, remote = measured(bed, hosts, lambda h=hosts: sequential(project, bed, h))
                    how = f"{n} runs of one host"
                walls[(mode, n)] = run.seconds
                print(f"{mode}, {n} hosts: {run.seconds:.2f}s, peak RSS {run.rss_mb:.0f} MB, fab CPU "
                      f"{run.cpu:.2f}s, host CPU {remote:.2f}s/host, {run.result}", file=sys.stderr)
                if run.result != "ok":
                    print(run.output, file=sys.stderr)
                    failed = True
                rows.append([mode, str(n), how, f"{run.seconds:.2f}", f"{run.rss_mb:.0f}", f"{run.cpu:.2f}",
                             f"{remote:.2f}", run.result])
        finally:
            bed.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    reaper = "orphans reaped at once" if REAPER[0] else "orphans left to PID 1"
    print()
    print(f"``fab -H <hosts> deploy-and-verify`` of examples/hello/app (build + restart hooks, 3 checks); "
          f"{os.cpu_count()} CPUs shared by fab and all hosts; {reaper}")
    print()
    print(simple_table(["mode", "hosts", "rollout", "wall (s)", "peak RSS (MB)", "fab CPU (s)",
                        "host CPU (s/host)", "result"], rows))
    print()
    one = "one fab, all hosts"
    if args.hosts:
        lo, hi = min(args.hosts), max(args.hosts)
        if lo != hi:
            print(f"{hi} hosts in one fab take {walls[(one, hi)] / walls[(one, lo)]:.2f}x the time of {lo}.")
    for n in args.sequential:
        if (one, n) in walls:
            print(f"{n} hosts: the loop takes {walls[('loop, one fab per host', n)] / walls[(one, n)]:.1f}x "
                  f"the time of one coordinated fab.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
