"""Benchmark: verify one SSH host with 30 mixed checks, deploytest against pytest-testinfra.

Brings up a real sshd with ``tests/testbed.py`` (needs root), prepares files and an HTTP server,
then runs the same 30 checks with deploytest (``run_checks``) and with testinfra's paramiko
backend (``testinfra.get_host("paramiko://<alias>", ssh_config=...)``), counting the sessions
each one opened from that host's sshd log and timing them wall-clock, connection included.

Run: ``python benchmarks/bench_verify.py [--rounds N]``; prints a Markdown/RST-friendly table.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from common import simple_table, testbed  # noqa: E402 - also puts the repository on sys.path

from deploytest.checks import parse_checks  # noqa: E402
from deploytest.checks.runner import run_checks  # noqa: E402
from deploytest.config import VerifySettings  # noqa: E402
from deploytest.ssh import connect  # noqa: E402

VERSION = "1.0\n"


def prepare(host: testbed.Host, web: Path) -> None:
    """Files the checks look at, on the host."""
    host.sh(
        "set -e; mkdir -p /srv/app/releases/1; printf '1.0\\n' > /srv/app/VERSION;"
        " ln -sfn /srv/app/releases/1 /srv/app/current; echo x > /srv/app/config.ini;"
        " chmod 0640 /srv/app/config.ini",
        check=True,
    )
    (web / "health").write_text("ok\n")
    (web / "VERSION").write_text(VERSION)


def deploytest_checks(ssh_port: int, http_port: int) -> list[dict[str, Any]]:
    """The 30 checks, in deploytest's config form."""
    url = f"http://127.0.0.1:{http_port}"
    digest = hashlib.sha256(VERSION.encode()).hexdigest()
    return [
        {"file": {"path": "/srv/app/VERSION", "contains": "1.0"}},
        {"file": {"path": "/srv/app", "type": "dir"}},
        {"file": {"path": "/srv/app/current", "type": "symlink", "target": "/srv/app/releases/1"}},
        {"file": {"path": "/srv/app/config.ini", "mode": "0640"}, "name": "config mode"},
        {"file": {"path": "/srv/app/config.ini", "owner": "root"}, "name": "config owner"},
        {"file": "/etc/passwd"},
        {"file": {"path": "/srv/app/missing", "exists": False}},
        {"file": {"path": "/srv/app/VERSION", "sha256": digest}, "name": "version digest"},
        {"command": "hostname"},
        {"command": {"run": "cat /srv/app/VERSION", "stdout": "1.0"}},
        {"command": "true"},
        {"command": {"run": "uname -s", "stdout": "Linux"}},
        {"command": {"run": "id -u", "stdout_equals": "0"}},
        {"command": "test -d /tmp"},
        {"port": ssh_port},
        {"port": http_port},
        {"tcp": {"host": "127.0.0.1", "port": http_port}},
        {"http": {"url": f"{url}/health", "contains": "ok"}},
        {"http": {"url": f"{url}/VERSION", "contains": "1.0"}},
        {"http": {"url": f"{url}/missing", "status": 404}},
        {"process": "sshd"},
        {"process": "http.server"},
        {"package": "openssh-server"},
        {"package": {"name": "bash", "version": ">=4"}},
        {"package": "coreutils"},
        {"user": {"name": "root", "uid": 0}},
        {"user": "nobody"},
        {"group": "root"},
        {"group": "nogroup"},
        {"disk": {"path": "/srv", "min_free_mb": 1}},
    ]


def testinfra_checks(ssh_port: int, http_port: int) -> list[Callable[[Any], bool]]:
    """The same 30 checks, written the way a testinfra suite does."""
    url = f"http://127.0.0.1:{http_port}"
    digest = hashlib.sha256(VERSION.encode()).hexdigest()

    def curl(path: str) -> str:
        return f"curl -s -o /tmp/body -w '%{{http_code}}' {url}{path}"

    return [
        lambda h: h.file("/srv/app/VERSION").contains("1.0"),
        lambda h: h.file("/srv/app").is_directory,
        lambda h: (
            h.file("/srv/app/current").is_symlink
            and h.file("/srv/app/current").linked_to == "/srv/app/releases/1"
        ),
        lambda h: h.file("/srv/app/config.ini").mode == 0o640,
        lambda h: h.file("/srv/app/config.ini").user == "root",
        lambda h: h.file("/etc/passwd").exists,
        lambda h: not h.file("/srv/app/missing").exists,
        lambda h: h.file("/srv/app/VERSION").sha256sum == digest,
        lambda h: h.run("hostname").rc == 0,
        lambda h: "1.0" in h.run("cat /srv/app/VERSION").stdout,
        lambda h: h.run("true").rc == 0,
        lambda h: "Linux" in h.run("uname -s").stdout,
        lambda h: h.run("id -u").stdout.strip() == "0",
        lambda h: h.run("test -d /tmp").rc == 0,
        lambda h: h.socket(f"tcp://127.0.0.1:{ssh_port}").is_listening,
        lambda h: h.socket(f"tcp://127.0.0.1:{http_port}").is_listening,
        lambda h: h.addr("127.0.0.1").port(http_port).is_reachable,
        lambda h: h.run(curl("/health")).stdout == "200" and "ok" in h.file("/tmp/body").content_string,
        lambda h: h.run(curl("/VERSION")).stdout == "200" and "1.0" in h.file("/tmp/body").content_string,
        lambda h: h.run(curl("/missing")).stdout == "404",
        lambda h: len(h.process.filter(comm="sshd")) >= 1,
        lambda h: any("http.server" in p.args for p in h.process.filter(comm="python3")),
        lambda h: h.package("openssh-server").is_installed,
        lambda h: h.package("bash").is_installed and int(h.package("bash").version.split(".")[0]) >= 4,
        lambda h: h.package("coreutils").is_installed,
        lambda h: h.user("root").uid == 0,
        lambda h: h.user("nobody").exists,
        lambda h: h.group("root").exists,
        lambda h: h.group("nogroup").exists,
        lambda h: int(h.run("df -Pk /srv | tail -n 1").stdout.split()[3]) > 1024,
    ]


Timing = tuple[float, float, int, int]  # (with connecting, checks alone, sessions for the checks, green)


def run_deploytest(bed: testbed.TestBed, host: testbed.Host, http_port: int) -> Timing:
    """One deploytest verification: wall time with and without connecting, sessions, green."""
    checks = parse_checks(deploytest_checks(host.port, http_port))
    started = time.perf_counter()
    target = connect(host.name, bed.fabric_config())
    try:
        target.open()
        before = host.sessions()
        connected = time.perf_counter()
        report = run_checks([target], checks, VerifySettings(timeout=0))
        done = time.perf_counter()
    finally:
        target.close()
    green = sum(1 for r in report.hosts[0].results if r.ok)
    time.sleep(0.3)
    return done - started, done - connected, host.sessions() - before, green


def run_testinfra(bed: testbed.TestBed, host: testbed.Host, http_port: int) -> Timing:
    """The same checks with testinfra's paramiko backend, measured the same way."""
    import testinfra
    from testinfra.host import Host

    Host._host_cache.clear()  # a fresh connection each round, as deploytest gets  # noqa: SLF001
    checks = testinfra_checks(host.port, http_port)
    started = time.perf_counter()
    remote = testinfra.get_host(f"paramiko://{host.name}", ssh_config=str(bed.ssh_config))
    remote.backend.client.get_transport()  # testinfra connects on first use: connect now
    before = host.sessions()
    connected = time.perf_counter()
    green = 0
    for check in checks:
        try:
            green += bool(check(remote))
        except Exception as exc:  # noqa: BLE001 - a red check in the benchmark
            print(f"testinfra check failed: {exc!r}", file=sys.stderr)
    done = time.perf_counter()
    remote.backend.client.close()
    time.sleep(0.3)
    return done - started, done - connected, host.sessions() - before, green


def main() -> int:
    """Bring up the host, run both sides ``--rounds`` times, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side (the median is shown)")
    args = parser.parse_args()
    problem = testbed.check_requirements(netns=False)
    if problem:
        print(f"cannot run the benchmark: {problem}", file=sys.stderr)
        return 2
    web = Path(tempfile.mkdtemp(prefix="dt-bench-web-"))
    http_port = testbed.free_port()
    server = subprocess.Popen(
        ["python3", "-m", "http.server", str(http_port), "--bind", "127.0.0.1", "--directory", str(web)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    bed = testbed.start_local()
    try:
        host = bed[0]
        prepare(host, web)
        time.sleep(0.5)
        results: dict[str, list[Timing]] = {"deploytest": [], "testinfra (paramiko)": []}
        for _ in range(args.rounds):
            results["deploytest"].append(run_deploytest(bed, host, http_port))
            results["testinfra (paramiko)"].append(run_testinfra(bed, host, http_port))
    finally:
        bed.close()
        server.terminate()
        server.wait(10)
        shutil.rmtree(web, ignore_errors=True)
    rows = []
    medians = {}
    for tool, runs in results.items():
        total = statistics.median(r[0] for r in runs)
        checks_only = statistics.median(r[1] for r in runs)
        sessions = statistics.median(r[2] for r in runs)
        medians[tool] = (total, checks_only, sessions)
        rows.append([tool, f"{runs[-1][3]}/30", f"{sessions:g}", f"{checks_only:.2f}", f"{total:.2f}"])
    ours, theirs = medians["deploytest"], medians["testinfra (paramiko)"]
    print(f"\n30 mixed checks on one SSH host, median of {args.rounds} runs\n")
    print(simple_table(["tool", "green", "sessions", "checks (s)", "with connecting (s)"], rows))
    print(f"\ndeploytest: {theirs[1] / ours[1]:.1f}x faster on an open connection (each verify attempt after the"
          f" first), {theirs[0] / ours[0]:.1f}x including the connection, {theirs[2] / max(ours[2], 1):.0f}x fewer"
          " sessions.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
