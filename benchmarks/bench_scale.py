"""Benchmark: ``fab deploy-and-verify`` of a minimal release to a fleet of 1,000 SSH hosts.

Brings up ``--hosts`` real OpenSSH hosts with ``tests/testbed.py`` (each in its own network, PID,
mount and UTS namespaces, sshd per host) and reports the bed itself: bring-up and teardown time, and
memory per host (the drop of this machine's MemAvailable, kernel included, and the PSS of the hosts'
processes). Then it runs, as a user with a fleet would, ONE
``python -m fabric -S <ssh_config> -H <all hosts> deploy-and-verify`` of a minimal release (two small
files, no hooks, no service restart) with two cheap checks (the VERSION file, a command), and
reports:

* wall time against the *floor*: the CPU time the hosts themselves spent (every process of their
  PID namespaces: sshd, sessions, the remote scripts) divided by this machine's cores. The hosts
  share these cores, so no tool could finish before that; ``fab``'s own CPU competes for them too;
* ``fab``'s CPU time per host, its peak memory (max RSS from ``wait4``), and its threads and open
  file descriptors sampled every 50 ms (peak, and the last sample);
* sessions per host (``Starting session`` lines in each host's sshd log), which hosts ended on the
  new release, and anything in ``fab``'s output or the sshd logs that says a limit was hit
  (``Too many open files``, ``filedescriptor out of range``, MaxStartups throttling, refused
  connections).

A fleet's control machine is set up for it: ``fab``'s soft limit of open files is raised to the hard
one, and the hosts' sshd allow ``MaxStartups 200`` and ``MaxSessions 100`` (tests/testbed.py). The
ssh_config is what a fleet with DNS has: one ``Host *`` block (user, key, known_hosts, strict host
key checking) and the hosts named by address on ``-H``, not a thousand ``Host`` blocks.

Run: ``PYTHONPATH=. python benchmarks/bench_scale.py --hosts 1000`` (as root; a few minutes on a
2-core machine); prints a reStructuredText simple table. ``--timeout`` kills a run that takes longer
(default 600 s); ``--parallel`` and ``--batches`` set the rollout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import yaml
from common import (
    Usage,
    bed_pids,
    fab,
    hosts_cpu,
    mem_available_mb,
    pss_mb,
    raise_fd_limit,
    sample,
    simple_table,
    testbed,
    write_fabric_project,
)

DEPLOY_TO = "/srv/app"
LIMIT_WORDS = ["Too many open files", "filedescriptor out of range", "MaxStartups", "Connection refused",
               "Connection reset", "Errno 24", "can't start new thread", "Cannot allocate memory"]
SSHD_LIMIT_WORDS = ["drop connection", "beginning MaxStartups throttling", "exceeded MaxStartups"]


POLL_SELECT = """
# --poll-select: deploytest waits on a channel with select.select(), which refuses descriptors past
# 1023 (a thousand open connections get there); the same wait through poll(), which has no ceiling.
import select as _select

import deploytest.hosts as _hosts


class _PollSelect:
    def __getattr__(self, name):
        return getattr(_select, name)

    @staticmethod
    def select(readable, writable, errors, timeout=None):
        poller = _select.poll()
        for obj in readable:
            poller.register(obj, _select.POLLIN)
        ready = {fd for fd, _ in poller.poll(None if timeout is None else int(timeout * 1000))}
        return [o for o in readable if (o if isinstance(o, int) else o.fileno()) in ready], [], []


_hosts.select = _PollSelect()
"""


def write_project(root: Path, version: str, parallel: int, batches: List[Any], poll_select: bool = False) -> None:
    """fabfile.py and fabric.yaml deploying ``release/`` (VERSION and one script), two checks."""
    source = root / "release"
    source.mkdir(parents=True, exist_ok=True)
    (source / "VERSION").write_text(version + "\n")
    (source / "app.sh").write_text("#!/bin/sh\necho app\n")
    write_fabric_project(root, {
        "app": "app",
        "deploy_to": DEPLOY_TO,
        "source": "release/",
        "keep_releases": 3,
        "checks": [
            {"file": {"path": f"{DEPLOY_TO}/current/VERSION", "contains": version}},
            {"command": {"run": f"cat {DEPLOY_TO}/current/VERSION", "exit": 0, "stdout": version}},
        ],
        "verify": {"timeout": 30, "interval": 1},
        "rollout": {"batches": batches, "max_fail": 0, "parallel": parallel},
    })
    if poll_select:
        with open(root / "fabfile.py", "a") as fh:
            fh.write(POLL_SELECT)


def fleet_ssh_config(bed: testbed.TestBed, path: Path) -> None:
    """One ``Host *`` block, as a fleet whose hosts DNS names has."""
    path.write_text("Host *\n"
                    "    User root\n"
                    f"    IdentityFile {bed.client_key}\n"
                    "    IdentitiesOnly yes\n"
                    f"    UserKnownHostsFile {bed.known_hosts}\n"
                    "    StrictHostKeyChecking yes\n")


def live_version(host: testbed.Host, deploy_to: str = DEPLOY_TO) -> str:
    """VERSION of the release ``current`` points to on the host (its /srv seen from here)."""
    try:
        target = os.readlink(host.srv / Path(deploy_to).relative_to("/srv") / "current")
        release = host.srv / Path(target).relative_to("/srv") if target.startswith("/srv/") else \
            host.srv / Path(deploy_to).relative_to("/srv") / target
        return (release / "VERSION").read_text().strip()
    except (OSError, ValueError):
        return ""


def limit_lines(text: str, words: List[str], most: int = 5) -> List[str]:
    hits = [line.strip() for line in text.splitlines() if any(w in line for w in words)]
    return hits[:most]


def main() -> int:
    """Bring up the fleet, run one deploy-and-verify over it, print the table, tear it down."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--hosts", type=int, default=1000, help="fleet size (default 1000)")
    parser.add_argument("--parallel", type=int, default=100, help="rollout.parallel (default 100)")
    parser.add_argument("--batches", default='[1, "100%"]',
                        help='rollout.batches as JSON (default [1, "100%%"]: a canary, then the rest)')
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds before the fab run is killed (default 600)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--poll-select", action="store_true",
                        help="the benchmark's fabfile makes deploytest wait on channels with poll() instead of "
                             "select() (which refuses file descriptors past 1023)")
    args = parser.parse_args()
    problem = testbed.check_requirements(netns=True)
    if problem:
        print(f"cannot run the benchmark: {problem}", file=sys.stderr)
        return 2
    batches = json.loads(args.batches)
    fd_limit = raise_fd_limit()
    cores = os.cpu_count() or 1
    figures: Dict[str, Any] = {"hosts": args.hosts, "cores": cores, "parallel": args.parallel,
                               "batches": batches, "fab_fd_limit": fd_limit, "poll_select": args.poll_select}
    work = Path(tempfile.mkdtemp(prefix="dt-bench-scale-"))
    failed = False
    try:
        project = work / "project"
        write_project(project, "1.0", args.parallel, batches, args.poll_select)
        before_mb = mem_available_mb()
        started = time.perf_counter()
        bed = testbed.start_hosts(args.hosts, prefix="node")
        figures["bring_up_s"] = time.perf_counter() - started
        time.sleep(1.0)  # let the hosts' start-up settle before reading memory
        figures["mem_available_drop_mb_per_host"] = (before_mb - mem_available_mb()) / args.hosts
        pids = bed_pids(bed)
        figures["processes_per_host"] = len(pids) / args.hosts
        figures["pss_mb_per_host"] = pss_mb(pids) / args.hosts
        print(f"{args.hosts} hosts up in {figures['bring_up_s']:.1f}s; memory per host: "
              f"{figures['mem_available_drop_mb_per_host']:.2f} MiB of MemAvailable, "
              f"{figures['pss_mb_per_host']:.2f} MiB PSS in {figures['processes_per_host']:.1f} processes",
              file=sys.stderr)
        try:
            ssh_config = work / "ssh_config"
            fleet_ssh_config(bed, ssh_config)
            addresses = [h.address for h in bed.hosts]
            usage = Usage()
            host_cpu_before = hosts_cpu(bed)
            sessions_before = [h.sessions() for h in bed.hosts]
            run_started = time.perf_counter()
            run = fab(project, bed, "deploy-and-verify", addresses, ssh_config=ssh_config,
                      while_waiting=lambda pid: sample(pid, usage, run_started), timeout=args.timeout)
            time.sleep(0.5)  # sshd reaps the last sessions
            host_cpu_s = hosts_cpu(bed) - host_cpu_before
            sessions = [h.sessions() - b for h, b in zip(bed.hosts, sessions_before)]
            on_release = sum(1 for h in bed.hosts if live_version(h) == "1.0")
            sshd_hits = [f"{h.name}: {line}" for h in bed.hosts
                         for line in limit_lines(h.log_text(), SSHD_LIMIT_WORDS, 1)]
            floor = host_cpu_s / cores
            figures.update({
                "wall_s": run.seconds, "exit": run.codes[0], "fab_cpu_s": run.cpu,
                "fab_cpu_ms_per_host": 1000 * run.cpu / args.hosts, "fab_peak_rss_mb": run.rss_mb,
                "fab_peak_threads": usage.threads, "fab_peak_fds": usage.fds,
                "fab_last_sample": usage.timeline[-1] if usage.timeline else None,
                "host_cpu_s": host_cpu_s, "host_cpu_ms_per_host": 1000 * host_cpu_s / args.hosts,
                "floor_s": floor, "wall_over_floor": run.seconds / floor if floor else None,
                "floor_with_fab_s": (host_cpu_s + run.cpu) / cores,
                "sessions_min": min(sessions), "sessions_max": max(sessions),
                "hosts_on_new_release": on_release,
                "fab_limit_lines": limit_lines(run.output, LIMIT_WORDS), "sshd_limit_lines": sshd_hits[:5],
                "threads_timeline": usage.timeline[:: max(1, len(usage.timeline) // 40)],
            })
            tail = "\n".join(run.output.strip().splitlines()[-15:])
            print(f"fab exit {run.codes[0]} in {run.seconds:.1f}s; last lines of its output:\n{tail}",
                  file=sys.stderr)
            if run.codes != [0] or on_release != args.hosts:
                failed = True
                (work / "fab-output.txt").write_text(run.output)
                kept = Path(tempfile.gettempdir()) / f"bench-scale-fab-output-{os.getpid()}.txt"
                shutil.copy(work / "fab-output.txt", kept)
                figures["fab_output"] = str(kept)
                print(f"full output kept in {kept}", file=sys.stderr)
        finally:
            started = time.perf_counter()
            bed.close()
            figures["teardown_s"] = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    leftovers = [line for line in os.popen("ip -o link show").read().splitlines()
                 if re.search(rf"{testbed.NETNS_PREFIX}{re.escape(testbed.RUN_TOKEN)}", line)]
    figures["links_left_after_teardown"] = len(leftovers)
    f = figures
    print()
    print(f"``fab deploy-and-verify`` of a minimal release (2 files, no hooks, 2 checks) to {f['hosts']} hosts, "
          f"rollout batches {json.dumps(batches)}, parallel {f['parallel']}; {cores} CPUs shared by fab "
          f"and all hosts; fab's open-file limit {fd_limit}"
          + ("; deploytest's select() replaced by poll() (--poll-select)" if args.poll_select else ""))
    print()
    rows = [
        ["bring-up of the hosts", f"{f['bring_up_s']:.1f} s"],
        ["teardown of the hosts", f"{f['teardown_s']:.1f} s"],
        ["memory per host (MemAvailable drop)", f"{f['mem_available_drop_mb_per_host']:.2f} MiB"],
        ["memory per host (PSS of its processes)",
         f"{f['pss_mb_per_host']:.2f} MiB in {f['processes_per_host']:.1f} processes"],
    ]
    if "wall_s" in f:
        ratio = f"{f['wall_over_floor']:.2f}x the floor" if f["wall_over_floor"] else ""
        last = f["fab_last_sample"]
        rows += [
            ["fab exit code", str(f["exit"])],
            ["wall time", f"{f['wall_s']:.1f} s ({ratio})"],
            ["floor: host CPU / cores", f"{f['floor_s']:.1f} s ({f['host_cpu_ms_per_host']:.0f} ms of host "
                                        f"CPU per host)"],
            ["floor with fab's CPU", f"{f['floor_with_fab_s']:.1f} s"],
            ["fab CPU per host", f"{f['fab_cpu_ms_per_host']:.1f} ms ({f['fab_cpu_s']:.1f} s in all)"],
            ["fab peak memory (max RSS)", f"{f['fab_peak_rss_mb']:.0f} MiB"],
            ["fab threads, peak / last sample", f"{f['fab_peak_threads']} / {last[1] if last else '-'}"],
            ["fab open fds, peak / last sample", f"{f['fab_peak_fds']} / {last[2] if last else '-'}"],
            ["sessions per host, min-max", f"{f['sessions_min']}-{f['sessions_max']}"],
            ["hosts on the new release", f"{f['hosts_on_new_release']} of {f['hosts']}"],
            ["limit hit (fab output)", "; ".join(f["fab_limit_lines"]) or "none"],
            ["limit hit (sshd logs)", "; ".join(f["sshd_limit_lines"]) or "none"],
        ]
    print(simple_table(["measure", "value"], rows))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    print(yaml.safe_dump({"threads_timeline (s, threads, fds)": f.get("threads_timeline", [])},
                         default_flow_style=True, width=200), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
