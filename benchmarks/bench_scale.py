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
(default 600 s); ``--parallel``, ``--batches`` and ``--prepare`` set the rollout; ``--deploys`` is how
many deploys run in a row over the same fleet (default 2), one column each; ``--canary-fails`` makes
the last one a broken release that its canary stops (``--prepare all`` against ``per_batch``: what a
failed canary costs the fleet); ``--payload-kb`` adds random bytes to the release.
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


def write_project(root: Path, version: str, parallel: int, batches: List[Any], prepare: str = "all",
                  broken: bool = False, payload_kb: int = 0) -> None:
    """fabfile.py and fabric.yaml deploying ``release/`` (VERSION and one script, and ``payload_kb`` of
    random bytes), two checks; a ``broken`` release's VERSION is not ``version``, so its checks are red."""
    source = root / "release"
    source.mkdir(parents=True, exist_ok=True)
    (source / "VERSION").write_text(("broken" if broken else version) + "\n")
    (source / "app.sh").write_text("#!/bin/sh\necho app\n")
    if payload_kb:
        (source / "payload.bin").write_bytes(os.urandom(payload_kb * 1024))
    write_fabric_project(root, {
        "app": "app",
        "deploy_to": DEPLOY_TO,
        "source": "release/",
        "keep_releases": 3,
        "checks": [
            {"file": {"path": f"{DEPLOY_TO}/current/VERSION", "contains": version}},
            {"command": {"run": f"cat {DEPLOY_TO}/current/VERSION", "exit": 0, "stdout": version}},
        ],
        "verify": {"timeout": 3 if broken else 30, "interval": 1},  # red is red: no need to wait long
        "rollout": {"batches": batches, "max_fail": 0, "parallel": parallel, "prepare": prepare},
    })


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


def deploy_once(bed: testbed.TestBed, work: Path, name: str, version: str, args: argparse.Namespace,
                batches: List[Any], broken: bool = False) -> Dict[str, Any]:
    """One ``fab deploy-and-verify`` of release ``version`` over the whole fleet, measured (``broken``:
    a release whose checks are red, which the canary must stop)."""
    project = work / name.replace(" ", "-")
    previous = {h.name: live_version(h) for h in bed.hosts}
    write_project(project, version, args.parallel, batches, args.prepare, broken, args.payload_kb)
    ssh_config = work / "ssh_config"
    fleet_ssh_config(bed, ssh_config)
    usage = Usage()
    host_cpu_before = hosts_cpu(bed)
    sessions_before = [h.sessions() for h in bed.hosts]
    started = time.perf_counter()
    run = fab(project, bed, "deploy-and-verify", [h.address for h in bed.hosts], ssh_config=ssh_config,
              while_waiting=lambda pid: sample(pid, usage, started), timeout=args.timeout)
    time.sleep(0.5)  # sshd reaps the last sessions
    host_cpu_s = hosts_cpu(bed) - host_cpu_before
    sessions = [h.sessions() - b for h, b in zip(bed.hosts, sessions_before)]
    n = len(bed.hosts)
    floor = host_cpu_s / (os.cpu_count() or 1)
    f: Dict[str, Any] = {
        "wall_s": run.seconds, "exit": run.codes[0], "fab_cpu_s": run.cpu, "fab_peak_rss_mb": run.rss_mb,
        "fab_peak_threads": usage.threads, "fab_peak_fds": usage.fds,
        "fab_last_sample": usage.timeline[-1] if usage.timeline else None,
        "host_cpu_s": host_cpu_s, "floor_s": floor, "sessions": (min(sessions), max(sessions)),
        "hosts_on_new_release": sum(1 for h in bed.hosts if live_version(h) == version),
        "hosts_as_before": sum(1 for h in bed.hosts if live_version(h) == previous[h.name]),
        "broken": broken,
        "fab_limit_lines": limit_lines(run.output, LIMIT_WORDS),
        "sshd_limit_lines": [f"{h.name}: {line}" for h in bed.hosts
                             for line in limit_lines(h.log_text(), SSHD_LIMIT_WORDS, 1)][:5],
        "threads_timeline": usage.timeline[:: max(1, len(usage.timeline) // 60)],
    }
    tail = "\n".join(run.output.strip().splitlines()[-12:])
    print(f"[{name}] fab exit {run.codes[0]} in {run.seconds:.1f}s (floor {floor:.1f}s), "
          f"{f['hosts_on_new_release']}/{n} on {version}; peak {usage.threads} threads, {usage.fds} fds; "
          f"last lines:\n{tail}", file=sys.stderr)
    if not _as_expected(f, n):
        kept = Path(tempfile.gettempdir()) / f"bench-scale-{name.replace(' ', '-')}-{os.getpid()}.txt"
        kept.write_text(run.output)
        f["fab_output"] = str(kept)
        print(f"[{name}] full output kept in {kept}", file=sys.stderr)
    return f


def main() -> int:
    """Bring up the fleet, run deploy-and-verify over it, print the table, tear it down."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--hosts", type=int, default=1000, help="fleet size (default 1000)")
    parser.add_argument("--parallel", type=int, default=100, help="rollout.parallel (default 100)")
    parser.add_argument("--batches", default='[1, "100%"]',
                        help='rollout.batches as JSON (default [1, "100%%"]: a canary, then the rest)')
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds before a fab run is killed (default 600)")
    parser.add_argument("--deploys", type=int, default=2,
                        help="deploys in a row over the same fleet, one column each (default 2: the first"
                             " deploy, then a second one, which has a baseline to record and a release to"
                             " keep for a rollback)")
    parser.add_argument("--prepare", choices=["all", "per_batch"], default="all",
                        help="rollout.prepare (default all: every host before the canary)")
    parser.add_argument("--canary-fails", action="store_true",
                        help="the last deploy's release is broken: its canary fails and it is rolled back")
    parser.add_argument("--payload-kb", type=int, default=0,
                        help="random bytes added to the release, in KiB (default 0)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    problem = testbed.check_requirements(netns=True)
    if problem:
        print(f"cannot run the benchmark: {problem}", file=sys.stderr)
        return 2
    if args.deploys < 1:
        parser.error("--deploys: at least 1")
    runs = ["first deploy", "second deploy", *[f"deploy {k}" for k in range(3, args.deploys + 1)]][:args.deploys]
    if args.canary_fails:
        runs[-1] += " (canary fails)"
    batches = json.loads(args.batches)
    fd_limit = raise_fd_limit()
    cores = os.cpu_count() or 1
    n = args.hosts
    bed_figures: Dict[str, Any] = {"hosts": n, "cores": cores, "parallel": args.parallel, "batches": batches,
                                   "fab_fd_limit": fd_limit}
    results: Dict[str, Dict[str, Any]] = {}
    work = Path(tempfile.mkdtemp(prefix="dt-bench-scale-"))
    try:
        before_mb = mem_available_mb()
        started = time.perf_counter()
        bed = testbed.start_hosts(n, prefix="node")
        bed_figures["bring_up_s"] = time.perf_counter() - started
        time.sleep(1.0)  # let the hosts' start-up settle before reading memory
        bed_figures["mem_available_drop_mb_per_host"] = (before_mb - mem_available_mb()) / n
        pids = bed_pids(bed)
        bed_figures["processes_per_host"] = len(pids) / n
        bed_figures["pss_mb_per_host"] = pss_mb(pids) / n
        print(f"{n} hosts up in {bed_figures['bring_up_s']:.1f}s; memory per host: "
              f"{bed_figures['mem_available_drop_mb_per_host']:.2f} MiB of MemAvailable, "
              f"{bed_figures['pss_mb_per_host']:.2f} MiB PSS in {bed_figures['processes_per_host']:.1f} "
              "processes", file=sys.stderr)
        try:
            for k, name in enumerate(runs, 1):
                broken = args.canary_fails and k == len(runs)
                results[name] = deploy_once(bed, work, name, f"{k}.0", args, batches, broken)
        finally:
            started = time.perf_counter()
            bed.close()
            bed_figures["teardown_s"] = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bed_figures["links_left_after_teardown"] = sum(
        1 for line in os.popen("ip -o link show").read().splitlines()
        if re.search(rf"{testbed.NETNS_PREFIX}{re.escape(testbed.RUN_TOKEN)}", line))
    b = bed_figures
    print()
    payload = f" and {args.payload_kb} KiB of random bytes" if args.payload_kb else ""
    print(f"``fab deploy-and-verify`` of a minimal release (2 files{payload}, no hooks, 2 checks) to {n} hosts, "
          f"rollout batches {json.dumps(batches)}, prepare {args.prepare}, parallel {args.parallel}; "
          f"{cores} CPUs shared by fab and all hosts; fab's open-file limit {fd_limit}")
    print()
    blank = [""] * (len(runs) - 1)
    rows = [
        ["bring-up of the hosts", f"{b['bring_up_s']:.1f} s", *blank],
        ["teardown of the hosts", f"{b['teardown_s']:.1f} s ({b['links_left_after_teardown']} links left)", *blank],
        ["memory per host (MemAvailable drop)", f"{b['mem_available_drop_mb_per_host']:.2f} MiB", *blank],
        ["memory per host (PSS of its processes)",
         f"{b['pss_mb_per_host']:.2f} MiB in {b['processes_per_host']:.1f} processes", *blank],
    ]

    def row(label: str, cell: Any) -> None:
        rows.append([label] + [cell(results[r]) for r in runs])

    row("fab exit code", lambda f: str(f["exit"]))
    row("wall time", lambda f: f"{f['wall_s']:.1f} s ({f['wall_s'] / f['floor_s']:.2f}x the floor)"
        if f["floor_s"] else f"{f['wall_s']:.1f} s")
    row("floor: host CPU / cores", lambda f: f"{f['floor_s']:.1f} s ({1000 * f['host_cpu_s'] / n:.0f} ms host CPU "
        "per host)")
    row("floor counting fab's CPU too", lambda f: f"{(f['host_cpu_s'] + f['fab_cpu_s']) / cores:.1f} s")
    row("fab CPU per host", lambda f: f"{1000 * f['fab_cpu_s'] / n:.1f} ms ({f['fab_cpu_s']:.1f} s in all)")
    row("fab peak memory (max RSS)", lambda f: f"{f['fab_peak_rss_mb']:.0f} MiB")
    row("fab threads, peak / last sample",
        lambda f: f"{f['fab_peak_threads']} / {f['fab_last_sample'][1] if f['fab_last_sample'] else '-'}")
    row("fab open fds, peak / last sample",
        lambda f: f"{f['fab_peak_fds']} / {f['fab_last_sample'][2] if f['fab_last_sample'] else '-'}")
    row("sessions per host, min-max", lambda f: "{}-{}".format(*f["sessions"]))
    row("hosts on the new release", lambda f: f"{f['hosts_on_new_release']} of {n}")
    row("hosts on the release they had", lambda f: f"{f['hosts_as_before']} of {n}")
    row("limit hit (fab output)", lambda f: "; ".join(sorted(set(f["fab_limit_lines"])))[:160] or "none")
    row("limit hit (sshd logs)", lambda f: "; ".join(f["sshd_limit_lines"])[:160] or "none")
    print(simple_table(["measure"] + runs, rows))
    if args.json:
        args.json.write_text(json.dumps({"bed": bed_figures, "runs": results}, indent=1, default=str))
    for name in runs:
        print(yaml.safe_dump({f"{name}: threads_timeline (s, threads, fds)": results[name]["threads_timeline"]},
                             default_flow_style=True, width=200), file=sys.stderr)
    return 0 if all(_as_expected(f, n) for f in results.values()) else 1


def _as_expected(f: Dict[str, Any], n: int) -> bool:
    """Every host on the new release (exit 0), or, for a broken release, rolled back: exit 1 and every
    host on the release it had."""
    if f["broken"]:
        return bool(f["exit"] == 1 and f["hosts_as_before"] == n)
    return bool(f["exit"] == 0 and f["hosts_on_new_release"] == n)


if __name__ == "__main__":
    sys.exit(main())
