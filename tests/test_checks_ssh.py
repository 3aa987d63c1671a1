"""Checks over real OpenSSH servers (tests/testbed.py): one session per host per attempt, counted
on sshd's own log; hosts in parallel; an unreachable host; assertions and the pytest plugin."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
from onhost import wait_until
from services import HttpApp
from testbed import TestBed

from deploytest import report_text
from deploytest.assertions import CheckFailed, assert_command, assert_file, check_all
from deploytest.checks import parse_checks
from deploytest.checks.attempt import run_probes
from deploytest.checks.runner import run_checks
from deploytest.config import VerifySettings
from deploytest.ssh import SSHTarget, connect

pytestmark = pytest.mark.testbed
ROOT = Path(__file__).resolve().parent.parent


def target_for(bed: TestBed, name: str) -> SSHTarget:
    return connect(name, bed.fabric_config())


def mixed_checks(ssh_port: int, app: HttpApp | None = None) -> list[dict[str, object]]:
    checks: list[dict[str, object]] = [
        {"file": {"path": "/srv/app/VERSION", "contains": "1.0"}},
        {"file": {"path": "/srv/app", "type": "dir"}},
        {"command": {"run": "cat /srv/app/VERSION", "stdout": "1.0"}},
        {"command": {"run": "hostname", "name": "hostname"}},
        {"port": ssh_port},
        {"process": "sshd"},
        {"package": "openssh-server"},
        {"user": {"name": "root", "uid": 0}},
        {"group": "root"},
        {"disk": {"path": "/srv", "min_free_mb": 1}},
    ]
    if app is not None:
        checks += [
            {"http": {"url": app.url("/health"), "contains": "ok"}},
            {"tcp": {"host": "127.0.0.1", "port": app.port}},
        ]
    return checks


def test_one_session_per_attempt(ssh_host: TestBed, http_app: HttpApp) -> None:
    host = ssh_host[0]
    host.sh("mkdir -p /srv/app && echo 1.0 > /srv/app/VERSION", check=True)
    target = target_for(ssh_host, host.name)
    checks = parse_checks(mixed_checks(host.port, http_app))
    before = host.sessions()
    report = run_checks([target], checks, VerifySettings(timeout=0))
    assert report.ok, report_text.render(report)
    # sshd logs a session before it answers it, so once run_checks returned the count is complete
    assert host.wait_sessions(before + 1) == before + 1 == before + report.hosts[0].sessions

    # Eventually: one check red until a file appears; only it is re-run, one session per attempt.
    checks = parse_checks(
        mixed_checks(host.port, http_app) + [{"file": {"path": "/srv/app/ready", "name": "ready"}}]
    )
    timer = threading.Timer(1.2, lambda: host.sh("touch /srv/app/ready", check=True))
    before = host.sessions()
    timer.start()
    try:
        report = run_checks([target], checks, VerifySettings(timeout=10, interval=0.3))
    finally:
        timer.cancel()
        target.close()
    results = {r.name: r for r in report.hosts[0].results}
    assert report.ok, report_text.render(report)
    attempts = results["ready"].attempts
    assert attempts >= 3 and all(r.attempts == 1 for n, r in results.items() if n != "ready")
    assert host.wait_sessions(before + attempts) - before == attempts == report.hosts[0].sessions


def test_a_process_check_among_many_sees_the_whole_process_table(ssh_host: TestBed) -> None:
    """The probes' own shells must not fill the process list a ``process`` check reads: with the whole
    attempt's script in each of their command lines, 40 probes running side by side made that list
    several megabytes, cut at the check's 1 MiB, and the process looked for (started last, listed last)
    was not seen."""
    host = ssh_host[0]
    marker = f"sleep 7{os.getpid()}.5"
    # the marker gets the host's highest pid (ps lists by pid: it comes last), the probes low ones
    host.sh(f"echo 59999 >/proc/sys/kernel/ns_last_pid; nohup {marker} >/dev/null 2>&1 </dev/null &"
            " echo 300 >/proc/sys/kernel/ns_last_pid", check=True)
    target = target_for(ssh_host, host.name)
    checks = parse_checks(
        [{"command": {"run": f"sleep 1; echo {'x' * 400}", "name": f"slow {i}"}} for i in range(40)]
        + [{"process": {"pattern": marker.replace(".", "[.]"), "count": 1, "name": "marker"}}]
    )
    try:
        report = run_checks([target], checks, VerifySettings(timeout=0))
        (marker_result,) = [r for r in report.hosts[0].results if r.name == "marker"]
        assert marker_result.ok, marker_result.verdict
        assert report.ok, report_text.render(report)
        # the probes' shells show a short command line, not the script: the list stays small
        outputs = run_probes(target, checks, [15.0] * len(checks))
        assert not outputs[-1].truncated and len(outputs[-1].stdout) < 100_000, len(outputs[-1].stdout)
    finally:
        target.close()
        host.sh(f"pkill -f '{marker}' || true")


def test_hanging_check_cannot_hang_the_run(ssh_host: TestBed) -> None:
    host = ssh_host[0]
    target = target_for(ssh_host, host.name)
    checks = parse_checks(
        [
            {"command": {"run": "sleep 1000", "timeout": 2, "name": "hang"}},
            {"command": {"run": "true", "name": "quick"}},
        ]
    )
    started = time.monotonic()
    try:
        report = run_checks([target], checks, VerifySettings(timeout=2, interval=0.5))
    finally:
        target.close()
    # killed at its 2s limit: well before the session's own limit (2s + SESSION_SLACK_SECONDS = 17s)
    assert time.monotonic() - started < 14
    hang, quick = report.hosts[0].results
    assert hang.verdict.observed == "no answer within 2s (probe killed)" and quick.ok
    leftovers = wait_until(
        lambda: host.sh("ps -eo pid,ppid,etimes,args | grep '[s]leep 1000$' || true").stdout.strip(), "", timeout=15
    )
    assert leftovers == ""


def test_hosts_in_parallel_and_an_unreachable_host(make_hosts: Callable[..., TestBed]) -> None:
    bed = make_hosts(3)
    for host in bed:
        host.sh("mkdir -p /srv/app && echo 1.0 > /srv/app/VERSION", check=True)
    bed["web3"].sh("echo 0.9 > /srv/app/VERSION", check=True)
    bed["web2"].cut()
    targets = [target_for(bed, name) for name in bed.names]
    checks = parse_checks(
        mixed_checks(22) + [{"command": {"run": "hostname", "stdout_equals": "web1"}, "name": "is web1"}]
    )
    before = {h.name: h.sessions() for h in bed}
    seen: list[str] = []
    try:
        report = run_checks(targets, checks, VerifySettings(timeout=0), on_result=lambda h, r: seen.append(h))
    finally:
        for target in targets:
            target.close()
    web1, web2, web3 = report.hosts
    assert web1.error is None and all(r.ok for r in web1.results), report_text.render(report)
    assert web2.error is not None and web2.results == []
    red = {r.name for r in web3.results if not r.ok}
    assert red == {"file /srv/app/VERSION", "command cat /srv/app/VERSION", "is web1"}
    text = report_text.render(report)
    assert "✘ web2 unreachable: " in text
    assert '✘ web3 is web1: expected stdout equal to "web1", got "web3"' in text
    assert text.splitlines()[-1].startswith("verify: 3 red, ")
    assert [bed[n].wait_sessions(before[n] + 1) - before[n] for n in ("web1", "web3")] == [1, 1]
    assert set(seen) == {"web1", "web3"}


def test_assertions_over_a_fabric_connection(ssh_host: TestBed) -> None:
    host = ssh_host[0]
    host.sh("mkdir -p /srv/app && echo 2.0 > /srv/app/VERSION", check=True)
    conn = ssh_host.strict_connection(host.name)
    try:
        assert_file(conn, "/srv/app/VERSION", contains="2.0")
        assert_command(conn, "hostname", stdout=host.name)
        with pytest.raises(CheckFailed) as caught:
            check_all(conn, [{"file": {"path": "/srv/app/VERSION", "contains": "3.0"}}, {"port": 1}])
    finally:
        conn.close()
    lines = str(caught.value).splitlines()
    assert lines[0].startswith(
        f'✘ {host.name} file /srv/app/VERSION: expected containing "3.0", got not found'
    )
    assert lines[1].startswith(f"✘ {host.name} port 1: expected listening, got nothing on tcp port 1")


def _plugin_args() -> list[str]:
    names = {ep.name for ep in importlib.metadata.entry_points(group="pytest11")}
    return [] if "deploytest" in names else ["-p", "deploytest.pytest_plugin"]


def test_pytest_plugin_one_test_per_host(make_hosts: Callable[..., TestBed], tmp_path: Path) -> None:
    bed = make_hosts(2)
    tests = tmp_path / "test_deployed.py"
    tests.write_text(
        textwrap.dedent("""
        from deploytest.assertions import assert_command, assert_port
        from deploytest.checks import parse_checks
        from deploytest.checks.runner import run_checks

        def test_host(deploytest_host):
            assert_port(deploytest_host, 22)
            assert_command(deploytest_host, "hostname", stdout_equals=deploytest_host.name)

        def test_all(deploytest_hosts):
            report = run_checks(deploytest_hosts, parse_checks([{"port": 22}]))
            assert [h.host for h in report.hosts] == ["web1", "web2"] and report.ok

        def test_red(deploytest_host):
            assert_port(deploytest_host, 1)
    """)
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = bed.env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *_plugin_args(),
            str(tests),
            "--deploytest-hosts=web1,web2",
            f"--deploytest-ssh-config={bed.ssh_config}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout
    assert "2 failed, 3 passed" in out, out + proc.stderr
    assert "test_red[web1]" in out and "test_red[web2]" in out
    assert "✘ web1 port 1: expected listening, got nothing on tcp port 1" in out
