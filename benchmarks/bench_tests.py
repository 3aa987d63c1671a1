"""Benchmark: pytest deployment tests as a verification suite, against the same assertions as checks.

Brings up real OpenSSH hosts with ``tests/testbed.py`` (needs root) and measures, in this process, on
connections opened once (as a rollout has them):

* **20 x 10**: 20 deployment tests (each one ``deploytest.assertions`` call) on 10 hosts, one attempt,
  against the same 20 assertions as ``checks`` entries (one session per host) and against the same 20
  assertions called directly as Python functions (20 sessions per host, no pytest). The per-test
  overhead is the control-side CPU of the pytest run beyond the direct calls' (the tests' own round
  trips), per test per host; the target is under 5 ms.
* **memory at 50 hosts**: peak RSS of ``fab -H <50 hosts> deploy-and-verify`` of the example app with
  its checks, then with the same checks and 20 tests (the target: no more than 50 MB above the first).

Run: ``PYTHONPATH=. python benchmarks/bench_tests.py [--rounds N] [--hosts 10] [--memory-hosts 50]``
(``--hosts 0`` skips the speed rows, ``--memory-hosts 0`` the memory rows); prints reStructuredText simple tables.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import common
from common import ROOT, simple_table, testbed, write_fabric_project

from deploytest.config import VerifySettings, load  # noqa: E402
from deploytest.hosts import Target, in_parallel  # noqa: E402
from deploytest.ssh import connect  # noqa: E402
from deploytest.verifiers import checks_verifier, python_verifier, suite_verifier  # noqa: E402

#: 20 assertions, each as a ``checks`` entry and as a call of ``deploytest.assertions``.
ASSERTIONS = [
    ("file", {"path": "/etc/hostname"}),
    ("file", {"path": "/etc/passwd", "contains": "root"}),
    ("file", {"path": "/tmp", "type": "dir"}),
    ("file", {"path": "/nonexistent-dt", "exists": False}),
    ("command", {"run": "true"}),
    ("command", {"run": "echo hello", "stdout": "hello"}),
    ("command", {"run": "uname -s", "stdout": "Linux"}),
    ("command", {"run": "test -d /srv"}),
    ("port", {"port": 22}),
    ("process", {"pattern": "sshd"}),
    ("user", {"name": "root"}),
    ("group", {"name": "root"}),
    ("disk", {"path": "/", "min_free_mb": 1}),
    ("file", {"path": "/etc/hosts"}),
    ("command", {"run": "id -u", "stdout": "0"}),
    ("command", {"run": "ls /"}),
    ("file", {"path": "/bin/sh"}),
    ("command", {"run": "printf ok", "stdout": "ok"}),
    ("port", {"port": 22, "proto": "tcp"}),
    ("file", {"path": "/etc", "type": "dir"}),
]


def checks_config() -> List[Dict[str, Any]]:
    return [{kind: dict(params), "name": f"a{i:02d}"} for i, (kind, params) in enumerate(ASSERTIONS)]


def test_source() -> str:
    """The same assertions as pytest tests, one test each."""
    lines = ["from deploytest.assertions import check_all", ""]
    for i, (kind, params) in enumerate(ASSERTIONS):
        lines += ["", f"def test_a{i:02d}(deploytest_host):",
                  f"    check_all(deploytest_host, [{{{kind!r}: {params!r}}}])", ""]
    return "\n".join(lines)


def functions() -> List[Callable[[Target], None]]:
    """The same assertions as plain functions (what the tests do, without pytest)."""
    from deploytest.assertions import check_all

    out = []
    for i, (kind, params) in enumerate(ASSERTIONS):
        def fn(target: Target, spec: Dict[str, Any] = {kind: params}) -> None:  # noqa: B006 - bound per item
            check_all(target, [spec])
        fn.__name__ = f"a{i:02d}"
        out.append(fn)
    return out


def measure(verify: Callable[[], Any]) -> tuple[float, float, int, int]:
    """Wall and CPU seconds of one verification of every host, and its green and red results."""
    wall, cpu = time.perf_counter(), time.process_time()
    report = verify()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    counts = report.counts()
    return wall, cpu, counts["green"], counts["red"]


def speed(bed: testbed.TestBed, rounds: int, tmp: Path) -> str:
    project = tmp / "speed"
    (project / "tests" / "deployment").mkdir(parents=True)
    (project / "tests" / "deployment" / "test_speed.py").write_text(test_source())
    targets = [connect(name, bed.fabric_config()) for name in bed.names]
    in_parallel(targets, lambda t: t.open(), limit=len(targets))
    once = VerifySettings(timeout=0, interval=1)
    settings = load({"deploy_to": "/srv/bench", "tests": ["tests/deployment"], "checks": checks_config()},
                    base_dir=str(project))
    tests_only = load({"deploy_to": "/srv/bench", "tests": ["tests/deployment"]}, base_dir=str(project))
    ways = {
        "checks (one session per host)": lambda: checks_verifier(list(settings.checks), parallel=len(targets))(
            targets, once, []),
        "direct calls (20 sessions per host)": lambda: python_verifier(*functions(), parallel=len(targets))(
            targets, once, []),
        "pytest tests (20 sessions per host)": lambda: suite_verifier(tests_only, parallel=len(targets))(
            targets, once, []),
    }
    for verify in ways.values():
        verify()  # warm up: imports, first sessions
    results: Dict[str, List[tuple[float, float, int, int]]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, verify in ways.items():
            results[name].append(measure(verify))
            print(f"  {name}: {results[name][-1]}", file=sys.stderr)
    for target in targets:
        target.close()
    n = len(ASSERTIONS) * len(targets)
    median = {name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs), rs[-1][2], rs[-1][3])
              for name, rs in results.items()}
    rows = [(name, f"{m[0]:.2f}", f"{m[1]:.2f}", f"{m[2]}/{m[2] + m[3]}") for name, m in median.items()]
    direct, tests = median["direct calls (20 sessions per host)"], median["pytest tests (20 sessions per host)"]
    overhead = (tests[1] - direct[1]) / n * 1000
    wall_overhead = (tests[0] - direct[0]) / n * 1000
    table = simple_table((f"20 assertions x {len(targets)} hosts, one attempt", "wall (s)", "fab CPU (s)",
                          "green"), rows)
    return (table + f"\n\npytest's control-side overhead: {overhead:.2f} ms CPU per test per host"
            f" ({wall_overhead:+.2f} ms wall), median of {rounds} rounds\n")


def memory(count: int, tmp: Path) -> str:
    bed = testbed.start_hosts(count)
    try:
        project = tmp / "memory"
        project.mkdir()
        shutil.copytree(ROOT / "examples" / "hello" / "app", project / "app")
        (project / "tests" / "deployment").mkdir(parents=True)
        (project / "tests" / "deployment" / "test_speed.py").write_text(test_source())
        config: Dict[str, Any] = {
            "app": "hello", "deploy_to": "/srv/hello", "source": "app/", "shared": ["log"],
            "hooks": {"build": ["python3 -m py_compile hello.py"], "restart": ["sh bin/restart 8000"]},
            "checks": [{"http": {"url": "http://127.0.0.1:8000/health", "status": 200, "contains": "ok"}},
                       {"port": {"port": 8000}}],
            "verify": {"timeout": 30, "interval": 0.5},
            "rollout": {"batches": [1, "100%"], "max_fail": 0, "parallel": 50},
        }
        rows = []
        write_fabric_project(project, config)
        first = common.fab(project, bed, "deploy-and-verify", bed.names)  # untimed: a release to go from
        print(f"  first deploy: {first.result}", file=sys.stderr)
        for label, tests in (("checks", None), ("checks + 20 tests", ["tests/deployment"])):
            write_fabric_project(project, {**config, **({"tests": tests} if tests else {})})
            (project / "app" / "VERSION").write_text(f"1.{len(rows) + 1}\n")
            run = common.fab(project, bed, "deploy-and-verify", bed.names)
            print(f"  {label}: {run.result} {run.seconds:.1f}s {run.rss_mb:.0f} MiB", file=sys.stderr)
            if not run.ok:
                print(run.output[-3000:], file=sys.stderr)
            rows.append((str(count), label, f"{run.seconds:.1f}", f"{run.cpu:.1f}", f"{run.rss_mb:.0f}", run.result))
        return simple_table(("hosts", "suite", "wall (s)", "fab CPU (s)", "peak RSS (MiB)", "result"), rows) + "\n"
    finally:
        bed.close()


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--memory-hosts", type=int, default=50)
    args = parser.parse_args(argv or None)
    with tempfile.TemporaryDirectory(prefix="bench-tests-") as tmp:
        if args.hosts:
            bed = testbed.start_hosts(args.hosts)
            try:
                print(speed(bed, args.rounds, Path(tmp)))
            finally:
                bed.close()
        if args.memory_hosts:
            print(memory(args.memory_hosts, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
