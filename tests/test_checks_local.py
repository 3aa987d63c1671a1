"""Checks against real things on this machine (LocalTarget): HTTP, ports, files, processes, packages,
supervisord, PostgreSQL, SQLite; "eventually"; hostile output; hanging probes; secrets."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import io
import json
import os
import pwd
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from invoke.context import Context
from onhost import wait_until
from services import HttpApp, Postgres, Supervisor, free_port

from deploytest import report_json, report_junit, report_text
from deploytest.assertions import CheckFailed, assert_command, assert_http, assert_port, check_all
from deploytest.checks import make_check, parse_checks
from deploytest.checks.base import ProbeOutput
from deploytest.checks.runner import CheckResult, VerifyReport, run_checks
from deploytest.checks.script import ProbeJob, build_script, new_nonce, parse_frames
from deploytest.config import VerifySettings
from deploytest.console import wants_colour
from deploytest.hosts import LocalTarget, Reply, RunResult, Target

ONCE = VerifySettings(timeout=0, interval=0.2)


class CountingTarget(Target):
    """The local machine, counting calls to run (one per attempt is the promise)."""

    def __init__(self) -> None:
        self.name = "local"
        self.inner = LocalTarget()
        self.calls = 0

    @property
    def is_local(self) -> bool:
        return True

    def run(self, script: str, *, stdin: bytes | None = None, timeout: float | None = None,
            reply: Reply | None = None) -> RunResult:
        self.calls += 1
        return self.inner.run(script, stdin=stdin, timeout=timeout, reply=reply)


def verify(checks: list[Any], settings: VerifySettings = ONCE) -> tuple[VerifyReport, CountingTarget]:
    target = CountingTarget()
    report = run_checks([target], parse_checks(checks), settings)
    return report, target


def by_name(report: VerifyReport) -> dict[str, CheckResult]:
    return {r.check.name: r for r in report.hosts[0].results}


def test_catalog_green_in_one_session(http_app: HttpApp, tmp_path: Path) -> None:
    (tmp_path / "VERSION").write_text("1.0\n")
    (tmp_path / "current").symlink_to(tmp_path)
    database = tmp_path / "app.db"
    with sqlite3.connect(database) as db:
        db.execute("create table users (name text)")
        db.execute("insert into users values ('alice'), ('bob')")
    checks = [
        {"http": {"url": http_app.url("/health"), "status": 200, "contains": "ok", "name": "health"}},
        {"http": {"url": http_app.url("/json"), "json": {"status": "ok", "db.up": True, "items.1": 2}}},
        {"http": {"url": http_app.url("/redirect"), "status": 302, "header": {"Location": "/health"}}},
        {"http": {"url": http_app.url("/redirect"), "follow": True, "contains": "ok", "name": "followed"}},
        {"http": {"url": http_app.url("/health"), "method": "HEAD", "name": "head"}},
        {"http": {"url": http_app.url("/anything"), "method": "POST", "status": 201}},
        {"port": http_app.port},
        {"port": {"port": http_app.port, "address": "127.0.0.1", "name": "port on loopback"}},
        {"tcp": {"host": "127.0.0.1", "port": http_app.port}},
        {
            "file": {
                "path": str(tmp_path / "VERSION"),
                "contains": "1.0",
                "mode": "0644",
                "owner": pwd.getpwuid(os.geteuid()).pw_name,  # whoever runs the tests owns the file
                "size": 4,
                "sha256": "6a1f1a7c1a9ddb2a4d2e1d5f0d0d0b9b1e4a0a7e5f1d39f6d0b0b4a0e0c0f0b0",
            }
        },
        {"file": {"path": str(tmp_path / "current"), "type": "symlink", "target": str(tmp_path)}},
        {"file": {"path": str(tmp_path / "missing"), "exists": False}},
        {"command": {"run": "echo hello 1.0; echo note >&2", "stdout": "1.0", "stderr": "note"}},
        {"process": {"pattern": f"-c .*serve_forever.* {http_app.port}$", "count": 1}},
        {"package": {"name": "bash", "version": ">=4"}},
        {"package": {"name": "pytest", "manager": "pip", "python": sys.executable, "version": ">=7"}},
        {"user": {"name": "root", "uid": 0, "groups": "root"}},
        {"group": {"name": "root", "gid": 0}},
        {"disk": {"path": str(tmp_path), "min_free_mb": 1, "max_used_percent": 100}},
        {
            "database": {
                "engine": "sqlite",
                "path": str(database),
                "query": "select name from users order by name",
                "equals": "alice\nbob",
            }
        },
    ]
    import hashlib

    checks[9]["file"]["sha256"] = hashlib.sha256(b"1.0\n").hexdigest()
    report, target = verify(checks)
    failures = [report_text.result_line("local", r) for r in report.hosts[0].results if not r.ok]
    assert failures == []
    assert report.ok and target.calls == 1 and report.hosts[0].sessions == 1
    text = report_text.render(report)
    assert "✔ local health" in text
    assert text.splitlines()[-1].startswith(f"verify: all {len(checks)} checks green on 1 host")


def test_red_lines_name_host_check_expected_observed(http_app: HttpApp) -> None:
    report, _ = verify([{"http": http_app.url("/fail")}, {"port": free_port()}])
    lines = report_text.render(report).splitlines()
    assert re.fullmatch(
        rf"✘ local http http://127.0.0.1:{http_app.port}/fail: expected status 200, got 502 after \d+\.\ds"
        r' \(body: "upstream down"\)',
        lines[0],
    ), lines[0]
    assert re.match(r"✘ local port \d+: expected listening, got nothing on tcp port \d+ after", lines[1])
    assert lines[-1].startswith("verify: 2 red, 0 green of 2 checks on 1 host")


def test_port_ipv6_and_udp() -> None:
    with socket.socket(socket.AF_INET6) as tcp6, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp6.bind(("::1", 0))
        tcp6.listen()
        udp.bind(("127.0.0.1", 0))
        port6, port_udp = tcp6.getsockname()[1], udp.getsockname()[1]
        report, _ = verify([{"port": port6}, {"port": {"port": port_udp, "proto": "udp"}}])
        results = list(by_name(report).values())
        assert [r.verdict.observed for r in results] == ["listening on ::1", "listening on 127.0.0.1"]


def test_eventually_only_red_checks_rerun(http_app: HttpApp) -> None:
    if http_app.ready_file.exists():
        http_app.ready_file.unlink()
    timer = threading.Timer(1.5, http_app.ready_file.touch)
    timer.start()
    try:
        started = time.monotonic()
        seen: list[str] = []
        target = CountingTarget()
        checks = parse_checks(
            [
                {"http": {"url": http_app.url("/ready"), "contains": "ready"}},
                {"http": http_app.url("/health")},
            ]
        )
        report = run_checks(
            [target],
            checks,
            VerifySettings(timeout=30, interval=0.3),
            on_result=lambda host, r: seen.append(f"{host} {r.check.name} {r.ok}"),
        )
    finally:
        timer.cancel()
        http_app.ready_file.unlink(missing_ok=True)
    ready, health = report.hosts[0].results
    # green once the file appears at 1.5s, and the run ends then: far from the 30s timeout, even on a busy machine
    assert ready.ok and ready.attempts > 1 and 1.4 < ready.seconds < 20
    assert health.ok and health.attempts == 1
    assert target.calls == ready.attempts == report.hosts[0].sessions
    assert time.monotonic() - started < 20
    assert seen[0].endswith("/health True") and seen[1].endswith("/ready True")
    assert f"green after {ready.seconds:.1f}s, {ready.attempts} attempts" in report_text.render(report)


def test_red_until_timeout_then_reported(http_app: HttpApp) -> None:
    started = time.monotonic()
    report, target = verify([{"http": http_app.url("/fail")}], VerifySettings(timeout=1.5, interval=0.4))
    result = report.hosts[0].results[0]
    assert not result.ok and result.attempts == target.calls >= 3
    # given up at about its 1.5s timeout (generous bounds: a busy machine answers slowly)
    assert 1.0 < result.seconds < 8 and time.monotonic() - started < 10


def test_hanging_probe_is_killed_and_cleaned_up(http_app: HttpApp) -> None:
    started = time.monotonic()
    report, _ = verify(
        [
            {"command": {"run": "sleep 1234.5", "timeout": 2, "name": "hang"}},
            {"http": {"url": http_app.url("/slow"), "timeout": 2, "name": "slow http"}},
            {"port": http_app.port},
        ],
        VerifySettings(timeout=2, interval=0.5),
    )
    elapsed = time.monotonic() - started
    results = by_name(report)
    assert elapsed < 12, elapsed  # killed at 2s, well before the session's own 17s limit
    assert results["hang"].verdict.observed == "no answer within 2s (probe killed)"
    assert not results["slow http"].ok
    assert results[f"port {http_app.port}"].ok
    leftovers = wait_until(
        lambda: subprocess.run(["pgrep", "-f", "sleep 1234.5"], capture_output=True, text=True).stdout, "", timeout=15
    )
    assert leftovers == ""


def test_daemon_holding_stdout_does_not_hang_the_run() -> None:
    started = time.monotonic()
    report, _ = verify(
        [
            {"command": {"run": "setsid sleep 4321.5 & echo started", "stdout": "started", "name": "daemon"}},
            {"command": {"run": "echo next", "stdout": "next", "name": "next"}},
        ]
    )
    subprocess.run(["pkill", "-f", "sleep 4321.5"])
    assert report.ok, report_text.render(report)
    assert time.monotonic() - started < 20  # generous: a busy machine; a held stdout would end red at 10s


def test_hostile_output_cannot_confuse_the_frames(http_app: HttpApp) -> None:
    forged = " ".join(["DT0000000000000000", "1", "0", "0", "2", "0", "b", "b2s=", ""])
    report, _ = verify(
        [
            {
                "command": {
                    "run": f"printf '%s\\n' '{forged}'; printf 'DT\\n\\0\\377\\376'; exit 3",
                    "name": "forger",
                }
            },
            {"command": {"run": "head -c 10000000 /dev/zero; echo", "name": "huge"}},
            {"command": {"run": "yes", "name": "endless"}},
            {"command": {"run": "printf '\\377\\376 ok \\303'", "stdout": "ok", "name": "bad utf-8"}},
            {"command": {"run": "exec 1>&- 2>&-; exit 4", "exit": 4, "name": "closed fds"}},
            {"http": {"url": http_app.url("/frames"), "contains": "tail-ok", "name": "frame body"}},
            {"http": {"url": http_app.url("/huge"), "contains": "needle", "name": "huge body"}},
            {
                "http": {
                    "url": http_app.url("/huge"),
                    "contains": "needle",
                    "max_output": 1024 * 1024,
                    "name": "huge body past max_output",
                }
            },
        ]
    )
    results = by_name(report)
    assert results["forger"].verdict.observed == "exit 3"
    assert results["huge"].ok
    assert results["endless"].verdict.observed == "more than 1 GiB of output (probe stopped)"
    assert results["bad utf-8"].ok
    assert results["closed fds"].ok
    assert results["frame body"].ok
    assert results["huge body"].ok, results["huge body"].verdict
    cut = results["huge body past max_output"].verdict
    assert (cut.ok, cut.observed) == (False, "status 200 (body cut at 1 MiB; raise max_output)")


def test_script_frames_are_robust_without_timeout_or_base64(tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("sh", "head", "cat", "tr", "wc", "sleep", "mktemp", "rm", "od", "pkill", "echo", "printf"):
        path = subprocess.run(
            ["sh", "-c", f"command -v {tool}"], capture_output=True, text=True
        ).stdout.strip()
        if path.startswith("/"):
            (tools / tool).symlink_to(path)
    jobs = [
        ProbeJob(0, "echo hi; echo err >&2; exit 5", 5, 1000),
        ProbeJob(1, "sleep 1000", 1, 1000),
        ProbeJob(2, "head -c 5000 /dev/zero", 5, 100),
    ]
    nonce = new_nonce()
    started = time.monotonic()
    proc = subprocess.run(
        ["/bin/sh", "-c", build_script(jobs, {}, nonce)],
        capture_output=True,
        text=True,
        env={"PATH": str(tools)},
        timeout=30,
    )
    frames = parse_frames(proc.stdout, nonce, jobs)
    assert time.monotonic() - started < 20  # the 1s limit held: not the 1000s sleep, nor the 30s guard
    assert re.search(rf"^DT{nonce} 0 5 0 0$", proc.stdout, re.M)
    assert re.search(rf"^DT{nonce} data h$", proc.stdout, re.M)  # hex: no base64 on this PATH
    assert (frames[0].exit_code, frames[0].stdout, frames[0].stderr) == (5, b"hi\n", b"err\n")
    assert frames[1].timed_out
    assert frames[2].truncated and frames[2].stdout == b"\0" * 100


@pytest.mark.parametrize("tool", ["curl", "wget", "python3"])
def test_http_probe_with_each_tool(http_app: HttpApp, tool: str, tmp_path: Path) -> None:
    for name in ("sh", "mktemp", "awk", "cat", "grep", "rm", tool):
        found = sys.executable if name == "python3" else shutil.which(name)
        assert found, f"{name} is needed for this test"
        (tmp_path / name).symlink_to(found)
    cases = [
        ("/health", {"contains": "ok"}, True, "200"),
        ("/fail", {}, False, "502"),
        ("/redirect", {"status": 302}, True, "302"),
        ("/redirect", {"follow": True, "contains": "ok"}, True, "200"),
        ("/json", {"json": {"db.up": True, "items.0": 1}}, True, "200"),
        ("/health", {"method": "HEAD"}, True, "200"),
    ]
    for path, params, ok, observed in cases:
        check = make_check("http", url=http_app.url(path), **params)
        proc = subprocess.run(
            ["/bin/sh", "-c", check.probe()], env={"PATH": str(tmp_path)}, capture_output=True
        )
        assert proc.stdout.startswith(f"tool={tool}\n".encode())
        verdict = check.evaluate(ProbeOutput(proc.returncode, proc.stdout, proc.stderr))
        assert (verdict.ok, verdict.observed) == (ok, observed), (path, params, verdict)
    refused = make_check("http", url=f"http://127.0.0.1:{free_port()}/")
    proc = subprocess.run(
        ["/bin/sh", "-c", refused.probe()], env={"PATH": str(tmp_path)}, capture_output=True
    )
    verdict = refused.evaluate(ProbeOutput(proc.returncode, proc.stdout, proc.stderr))
    assert verdict.observed == "no response" and verdict.detail


def test_supervisor_service(supervisor: Supervisor) -> None:
    conf = supervisor.conf
    report, _ = verify(
        [
            {"service": {"name": "dtapp", "supervisor_conf": conf, "enabled": True}},
            {"service": {"name": "dtidle", "supervisor_conf": conf}},
            {
                "service": {"name": "dtidle", "supervisor_conf": conf, "running": False},
                "name": "idle stopped",
            },
            {"service": {"name": "dtghost", "supervisor_conf": conf}},
        ]
    )
    app, idle, stopped, ghost = report.hosts[0].results
    assert app.ok and app.verdict.observed == "RUNNING (supervisor)"
    assert not idle.ok and idle.verdict.observed == "STOPPED (supervisor)"
    assert stopped.ok
    assert not ghost.ok and "unknown to supervisor" in ghost.verdict.observed


@pytest.mark.testbed  # root: writes an init script to /etc/init.d
def test_sysv_service(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the SysV service test needs root (it writes an init script to /etc/init.d)", pytrace=False)
    name = f"dt-sysv-{os.getpid()}"
    state = tmp_path / "running"
    script = Path("/etc/init.d") / name
    script.write_text(f'#!/bin/sh\ncase "$1" in status) [ -e {state} ] && exit 0; exit 3;; esac\n')
    script.chmod(0o755)
    try:
        red, _ = verify([{"service": {"name": name, "manager": "sysv"}}])
        state.touch()
        green, _ = verify([{"service": name}])
    finally:
        script.unlink()
    assert red.hosts[0].results[0].verdict.observed == "stopped (sysv)"
    assert green.ok and green.hosts[0].results[0].verdict.observed == "running (sysv)"


@pytest.mark.testbed  # root: initdb runs as the postgres user
def test_postgres_checks_and_secrets(postgres: Postgres) -> None:
    base = {
        "engine": "postgres",
        "host": "127.0.0.1",
        "port": postgres.port,
        "user": "postgres",
        "database": "app",
    }
    wrong = "Wr0ng-" + postgres.password[::-1]
    report, _ = verify(
        [
            {
                "database": dict(
                    base, password_file=postgres.password_file, query="select count(*) from items", equals=3
                ),
                "name": "count via password_file",
            },
            {
                "database": dict(
                    base,
                    env={"PGPASSWORD": postgres.password},
                    query="select name from items",
                    contains="beta",
                ),
                "name": "names via env",
            },
            {"database": dict(base, env={"PGPASSWORD": wrong}), "name": "wrong password"},
            {
                "database": dict(base, password_file=postgres.password_file, query="select nope"),
                "name": "bad query",
            },
            {
                "database": {
                    "engine": "postgres",
                    "host": postgres.socket_dir,
                    "port": postgres.port,
                    "user": "postgres",
                    "query": "select 42",
                    "equals": "42",
                },
                "name": "unix socket",
            },
            {"command": {"run": f"echo leaked {wrong}", "stdout": "nothing"}, "name": "echo"},
        ]
    )
    results = by_name(report)
    assert results["count via password_file"].ok, results["count via password_file"].verdict
    assert results["names via env"].ok
    assert results["unix socket"].ok
    assert "password authentication failed" in results["wrong password"].verdict.detail
    assert 'column "nope" does not exist' in results["bad query"].verdict.detail
    outputs = [report_text.render(report), json.dumps(report_json.to_json(report)), report_junit.junit_xml(report)]
    for text in outputs:
        assert wrong not in text and postgres.password not in text
    assert '"leaked ***"' in report_text.render(report)


def test_a_secret_reaches_only_the_probe_that_uses_it(tmp_path: Path) -> None:
    secret = "s3cret-" + os.urandom(4).hex()
    db = tmp_path / "app.db"
    sqlite3.connect(db).close()
    report, _ = verify([
        {"database": {"engine": "sqlite", "path": str(db), "query": "select 1", "equals": "1",
                      "env": {"APP_TOKEN": secret}}, "name": "db"},
        # the database probe sees its variable; every other probe sees neither it nor its carrier
        {"command": {"run": "env | grep -c -e \"$(printf %s s3cret-)\" -e '^DTS_' || true",
                     "stdout_equals": "0"}, "name": "others see nothing"},
    ])
    results = by_name(report)
    assert results["db"].ok, results["db"].verdict
    assert results["others see nothing"].ok and results["others see nothing"].verdict.observed, \
        results["others see nothing"].verdict


def test_report_files_and_transitions(http_app: HttpApp, tmp_path: Path) -> None:
    checks = parse_checks(
        [
            {"http": {"url": http_app.url("/ready"), "name": "ready"}},
            {"http": {"url": http_app.url("/health"), "name": "health"}},
        ]
    )
    http_app.ready_file.unlink(missing_ok=True)
    baseline = run_checks([LocalTarget()], checks, ONCE)
    http_app.ready_file.touch()
    try:
        after = run_checks([LocalTarget()], checks, ONCE)
    finally:
        http_app.ready_file.unlink()
    text = report_text.render_transitions(baseline, after)
    assert "✔ local ready: red -> green (was 503, now 200)" in text
    assert "✔ local health: still green (200)" in text
    assert text.splitlines()[-1] == "changes: 1 turned green, 0 regressions, 0 still red, 1 still green"
    # nothing before (a first deploy): counted as new, not as "still" anything
    first = report_text.render_transitions(None, baseline)
    assert "✘ local ready: new, red (" in first and "✔ local health: new, green (200)" in first
    assert first.splitlines()[-1] == (
        "changes: 0 turned green, 0 regressions, 0 still red, 0 still green, 1 new and red, 1 new and green")
    back = report_text.render_transitions(after, baseline)
    assert "✘ local ready: green -> red, REGRESSION (was 200; now expected status 200, got 503" in back

    report_json.write_json(
        str(tmp_path / "out" / "verify.json"),
        after,
        baseline=baseline,
        extra={"release": "20240101T000000Z", "outcome": "deployed"},
    )
    document = json.loads((tmp_path / "out" / "verify.json").read_text())
    assert document["release"] == "20240101T000000Z" and document["ok"] is True
    assert document["hosts"][0]["checks"][0]["change"] == "red -> green"
    assert document["hosts"][0]["checks"][0]["observed"] == "200"

    report_junit.write_junit(str(tmp_path / "verify.xml"), baseline, extra={"release": "r1"})
    root = ET.parse(tmp_path / "verify.xml").getroot()
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == "local" and suite.get("failures") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    failure = cases["local :: ready"].find("failure")
    assert failure is not None and failure.get("message", "").startswith("expected status 200, got 503")
    assert cases["local :: health"].find("failure") is None


def test_color_only_on_a_tty(monkeypatch: pytest.MonkeyPatch, http_app: HttpApp) -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    report, _ = verify([{"http": http_app.url("/health")}])
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert wants_colour(Tty())  # type: ignore[arg-type]
    assert not wants_colour(io.StringIO())  # a pipe or a file: never
    assert "\033[32m✔\033[0m" in report_text.render(report, color=True)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not wants_colour(Tty())  # type: ignore[arg-type]
    assert "\033" not in report_text.render(report)


def test_assertions_with_an_invoke_context(http_app: HttpApp) -> None:
    c = Context()
    assert assert_http(c, http_app.url("/health"), contains="ok").ok
    assert_port(c, http_app.port)
    assert_command(LocalTarget(), "uname -s", stdout="Linux")
    with pytest.raises(CheckFailed) as caught:
        assert_http(c, http_app.url("/fail"))
    assert re.fullmatch(
        r'✘ local http \S+/fail: expected status 200, got 502 after \d\.\ds \(body: "upstream down"\)',
        str(caught.value),
    )
    assert isinstance(caught.value, AssertionError)
    with pytest.raises(CheckFailed) as many:
        check_all(c, [{"port": free_port()}, make_check("command", run="false", name="false")])
    assert len(str(many.value).splitlines()) == 2


def run_pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in ``directory`` as a user runs it, with the deploytest plugin loaded."""
    names = {ep.name for ep in importlib.metadata.entry_points(group="pytest11")}
    plugin = [] if "deploytest" in names else ["-p", "deploytest.pytest_plugin"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *plugin, *args],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pytest_plugin_defaults_to_this_machine(tmp_path: Path, http_app: HttpApp) -> None:
    (tmp_path / "test_here.py").write_text(
        "from deploytest.assertions import assert_http\n\n"
        "def test_app(deploytest_host):\n"
        f"    assert deploytest_host.is_local\n"
        f"    assert_http(deploytest_host, {http_app.url('/health')!r}, contains='ok')\n\n"
        "def test_all(deploytest_hosts):\n"
        "    assert [h.name for h in deploytest_hosts] == ['local']\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    proc = run_pytest(tmp_path, "-v")
    assert "2 passed" in proc.stdout, proc.stdout + proc.stderr
    assert "test_app[local] PASSED" in proc.stdout
    assert "deploytest hosts: local" in proc.stdout


def test_pytest_plugin_missing_ssh_config_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "test_here.py").write_text("def test_app(deploytest_host):\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    missing = tmp_path / "no-such-ssh-config"
    proc = run_pytest(tmp_path, "--deploytest-hosts=web1", f"--deploytest-ssh-config={missing}")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"ERROR: --deploytest-ssh-config: no such file: {missing}"
    assert "Traceback" not in proc.stdout + proc.stderr


def test_script_frames_are_right_where_ulimit_does_not_work() -> None:
    # Some shells cannot limit a file's size: the output readers then keep the cap with head(1) and
    # drain the rest, so a probe is neither blocked nor cut short and its exit status stays its own.
    jobs = [
        ProbeJob(0, "head -c 300000 /dev/zero; echo done >&2; exit 3", 5, 1000),
        ProbeJob(1, "echo hi; echo err >&2", 5, 1000),
    ]
    nonce = new_nonce()
    script = "ulimit() { return 1; }\n" + build_script(jobs, {}, nonce)  # a shell whose ulimit fails
    proc = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=30)
    frames = parse_frames(proc.stdout, nonce, jobs)
    assert (frames[0].exit_code, frames[0].truncated, frames[0].stdout) == (3, True, b"\0" * 1000)
    assert frames[0].stderr == b"done\n" and not frames[0].stopped
    assert (frames[1].exit_code, frames[1].stdout, frames[1].stderr) == (0, b"hi\n", b"err\n")
    assert len(proc.stdout) < 10_000  # only about the cap was kept and sent back, not the 300 KB


def test_script_outputs_come_back_in_one_stream_cut_apart_by_their_sizes() -> None:
    # Every output travels in one encoded stream (one encoder for the attempt) and is cut apart by the
    # sizes listed before it; a stream that does not add up to them gives no output, never one probe's
    # bytes as another's.
    jobs = [
        ProbeJob(0, "printf 'first'; printf 'e0' >&2", 5, 1000),
        ProbeJob(1, "true", 5, 1000),
        ProbeJob(2, "printf 'third'; exit 2", 5, 1000),
    ]
    nonce = new_nonce()
    proc = subprocess.run(["/bin/sh", "-c", build_script(jobs, {}, nonce)], capture_output=True, text=True,
                          timeout=30)
    assert proc.stdout.count(f"DT{nonce} data ") == 1
    frames = parse_frames(proc.stdout, nonce, jobs)
    assert [(f.exit_code, f.stdout, f.stderr) for f in (frames[0], frames[1], frames[2])] == [
        (0, b"first", b"e0"), (0, b"", b""), (2, b"third", b"")]
    head, _, _ = proc.stdout.partition(f"DT{nonce} data ")
    assert parse_frames(head, nonce, jobs) == {}  # cut before the data: nothing
    sizes = re.sub(r"^(\s*)5 2\.o$", r"\g<1>4 2.o", proc.stdout, flags=re.M)
    assert sizes != proc.stdout and parse_frames(sizes, nonce, jobs) == {}  # sizes that do not add up


def test_a_probe_whose_text_bounds_its_output_writes_straight_to_its_files(tmp_path: Path) -> None:
    # A direct probe has no readers: no cat(1) runs for it. Its ulimit is the backstop: were it to write
    # past its cap anyway, the same bytes are kept and it is stopped there, not left to fill the disk.
    log = tmp_path / "execs"
    tools = tmp_path / "bin"
    tools.mkdir()
    real_cat = shutil.which("cat")
    assert real_cat
    (tools / "cat").write_text(f'#!/bin/sh\necho cat >>{log}\nexec {real_cat} "$@"\n')
    (tools / "cat").chmod(0o755)
    jobs = [
        ProbeJob(0, "echo type=file; echo mode=644 >&2; exit 4", 5, 1000, direct=True),
        ProbeJob(1, "head -c 300000 /dev/zero; echo after", 5, 1000, direct=True),
        ProbeJob(2, "yes", 5, 1000, direct=True),
    ]
    nonce = new_nonce()
    started = time.monotonic()
    proc = subprocess.run(["/bin/sh", "-c", build_script(jobs[:1], {}, nonce)], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}, timeout=30)
    frames = parse_frames(proc.stdout, nonce, jobs[:1])
    assert (frames[0].exit_code, frames[0].stdout, frames[0].stderr) == (4, b"type=file\n", b"mode=644\n")
    assert log.read_text().splitlines() == ["cat"]  # the one data stream's, no reader's
    proc = subprocess.run(["/bin/sh", "-c", build_script(jobs, {}, nonce)], capture_output=True, text=True,
                          timeout=30)
    frames = parse_frames(proc.stdout, nonce, jobs)
    assert time.monotonic() - started < 4  # "yes" was stopped at its cap, not at its 5s limit
    assert frames[1].truncated and frames[1].stdout == b"\0" * 1000 and not frames[1].timed_out
    assert frames[2].truncated and frames[2].stdout == b"y\n" * 500
    assert len(proc.stdout) < 10_000  # only about the cap was kept and sent back
    capture = [dataclasses.replace(job, direct=False) for job in jobs[:2]]  # the same bytes kept as a reader keeps
    proc = subprocess.run(["/bin/sh", "-c", build_script(capture, {}, nonce)], capture_output=True, text=True,
                          timeout=30)
    assert [(f.stdout, f.truncated) for f in parse_frames(proc.stdout, nonce, capture).values()] == [
        (frames[0].stdout, False), (frames[1].stdout, True)]


def test_only_deploytest_s_own_probes_write_straight_to_files() -> None:
    # A user's command keeps its readers: what it starts must not inherit the cap's ulimit, and its exit
    # status is judged. Deploytest's own probes are judged on what is kept, so they may be stopped there.
    direct = {
        "port": make_check("port", port=8000),
        "file": make_check("file", path="/etc/hostname", contains="x"),
        "file matches": make_check("file", path="/etc/hostname", matches="x"),
        "symlink": make_check("file", path="/srv/app/current", type="symlink"),
        "http": make_check("http", url="http://127.0.0.1:1/"),
        "process": make_check("process", pattern="sshd"),
    }
    read = {
        "command": make_check("command", run="echo hi"),
        "database": make_check("database", engine="sqlite", path="/tmp/x.db", query="select 1"),
    }
    assert [name for name, c in direct.items() if not c.direct_output()] == []
    assert [name for name, c in read.items() if c.direct_output()] == []


def test_a_reader_slow_to_get_the_cpu_is_left_to_finish(tmp_path: Path) -> None:
    # On a busy host a probe's reader may wait seconds for the CPU after its probe ended. It still has
    # the output to write: it is left to finish, not stopped as a reader that a process left behind
    # keeps waiting on its pipe (test_daemon_holding_stdout_does_not_hang_the_run).
    real_cat = shutil.which("cat")
    tools = tmp_path / "bin"
    tools.mkdir()
    # a reader (cat with no file) that runs for 2-3 s before it reads: busy, not asleep
    (tools / "cat").write_text(
        "#!/bin/sh\nif [ $# -eq 0 ]; then\n  read -r t _ </proc/uptime; t=${t%.*}; u=$t\n"
        '  while [ "$u" -lt $((t + 3)) ]; do read -r u _ </proc/uptime; u=${u%.*}; done\nfi\n'
        f'exec {real_cat} "$@"\n')
    (tools / "cat").chmod(0o755)
    jobs = [ProbeJob(0, "echo hello; echo there >&2", 10, 1000)]
    nonce = new_nonce()
    proc = subprocess.run(["/bin/sh", "-c", build_script(jobs, {}, nonce)], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}, timeout=60)
    frames = parse_frames(proc.stdout, nonce, jobs)
    assert (frames[0].exit_code, frames[0].stdout, frames[0].stderr) == (0, b"hello\n", b"there\n")
