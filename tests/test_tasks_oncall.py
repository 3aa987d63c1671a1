"""The on-call tasks over real sshd hosts: status, releases, unlock and verify, as an operator sees them."""

from __future__ import annotations

import json
import re
import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List

import pytest
from onhost import DEPLOY_TO, PORT, events, live, locked, output
from project import Project

pytestmark = pytest.mark.testbed


def host_lines(text: str, name: str) -> List[str]:
    return [line for line in text.splitlines() if re.search(rf"\b{name}\b", line)]


def deploy(project: Project, hosts: List[str], version: str) -> None:
    project.set_version(version)
    proc = project.fab("deploy-and-verify", hosts=hosts)
    assert proc.returncode == 0, output(proc)


def killed_deploy(project: Project, bed: Any, hosts: List[str]) -> int:
    """Start a deploy whose build takes a while, SIGKILL fab while it builds (every lock held, every
    journal naming the release); its pid."""
    project.config["hooks"]["build"] = ["sleep 2.75"]
    project.write(project.config)
    proc = project.start("deploy", hosts=hosts)
    deadline = time.monotonic() + 30

    def building(host: Any) -> bool:
        return locked(host) and host.sh(f"grep -q '^release=.' {DEPLOY_TO}/.deploytest/journal").returncode == 0

    while not all(building(h) for h in bed.hosts) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert all(building(h) for h in bed.hosts), "the deploy never held every lock with its release made"
    proc.kill()
    proc.communicate(timeout=30)
    project.config["hooks"]["build"] = ["python3 -m py_compile hello.py"]
    project.write(project.config)
    return proc.pid


# -- status, releases, unlock --------------------------------------------------------------------------


def test_status_shows_live_previous_lock_and_last_event(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    deploy(project, hosts, "1.0")
    r1 = live(bed.hosts[0])
    deploy(project, hosts, "2.0")
    r2 = live(bed.hosts[0])
    proc = project.fab("status", hosts=hosts)
    assert proc.returncode == 0, output(proc)
    for name in hosts:
        (line,) = [line for line in proc.stdout.splitlines() if line.startswith(f"{name}:")]
        assert f"live {r2}" in line and f"previous {r1}" in line, line
        assert "lock free" in line, line
        assert f"last event: deploy {r2} verified by root@" in line, line

    pid = killed_deploy(project, bed, hosts)
    proc = project.fab("status", hosts=hosts)
    assert proc.returncode == 3, output(proc)  # an interrupted rollout needs a human
    for name in hosts:
        (line, interrupted) = [line for line in proc.stdout.splitlines() if line.startswith(f"{name}:")]
        assert f"live {r2}" in line, line  # the killed deploy never switched
        assert f"lock root@{socket.gethostname()} (pid {pid}) since " in line, line
        assert "(stale: its process is no longer running)" in line, line
        assert interrupted.startswith(f"{name}: INTERRUPTED: rollout ") and f"(pid {pid})" in interrupted
    assert f"next: fab -H {','.join(hosts)} rollback" in proc.stderr, proc.stderr


def test_status_shows_every_reachable_host_when_one_is_down(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    deploy(project, hosts, "1.0")
    rid = live(bed.hosts[0])
    bed.hosts[1].stop_sshd()
    proc = project.fab("status", hosts=hosts)
    assert proc.returncode == 3, output(proc)  # a host's state is unknown: a human looks
    assert "web2: state unknown: unreachable: connection refused" in proc.stdout, output(proc)
    for name in ("web1", "web3"):
        assert any(line.startswith(f"{name}: live {rid}") for line in proc.stdout.splitlines()), output(proc)
    assert "could not read the state of web2" in proc.stderr


def test_releases_table_marks_live_bad_and_rollback_target(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    deploy(project, hosts, "1.0")
    r1 = live(bed.hosts[0])
    deploy(project, hosts, "2.0")
    r2 = live(bed.hosts[0])
    project.set_version("3.0", broken=True)
    project.config["verify"] = {"timeout": 2, "interval": 0.3}
    project.write(project.config)
    failed = project.fab("deploy-and-verify", hosts=hosts)
    assert failed.returncode == 1, output(failed)
    bad = [rid for rid in bed.hosts[0].sh(f"ls {DEPLOY_TO}/releases").stdout.split() if rid not in (r1, r2)]
    assert len(bad) == 1, bad
    (r3,) = bad

    proc = project.fab("releases", hosts=hosts)
    assert proc.returncode == 0, output(proc)
    text = proc.stdout
    for name in hosts:
        assert f"{name}:" in text
    header = [line.split() for line in text.splitlines() if line.split()[:1] == ["release"]]
    assert len(header) == len(hosts) and header[0] == ["release", "when", "who", "label", "state"], header
    rows: Dict[str, List[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if words and words[0] in (r1, r2, r3):
            rows.setdefault(words[0], []).append(line)
    assert all(len(lines) == len(hosts) for lines in rows.values()), rows
    lines = {rid: rows[rid][0] for rid in rows}
    assert "live" in lines[r2] and "bad" not in lines[r2], lines[r2]
    assert "rollback target" in lines[r1], lines[r1]
    assert "bad" in lines[r3] and "live" not in lines[r3], lines[r3]
    for line in lines.values():
        assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", line), line  # when
        assert "root@" in line, line  # who
        assert re.search(r"\b[0-9a-f]{12}\b", line), line  # label: the content hash
    first = text.split(f"{hosts[1]}:")[0]
    order = [line.split()[0] for line in first.splitlines() if line.split()[:1] and line.split()[0] in lines]
    assert order == [r3, r2, r1], first  # newest first


def test_unlock_removes_the_lock_of_a_killed_deploy(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    deploy(project, hosts, "1.0")
    r1 = live(bed.hosts[0])
    pid = killed_deploy(project, bed, hosts)

    refused = project.fab("deploy", hosts=hosts)
    assert refused.returncode == 2, output(refused)
    assert "an interrupted rollout of " in refused.stderr, refused.stderr
    assert f"by root@{socket.gethostname()} (pid {pid})" in refused.stderr, refused.stderr
    assert f"next: fab -H {','.join(hosts)} rollback" in refused.stderr  # says what to do next

    proc = project.fab("unlock", hosts=hosts)
    assert proc.returncode == 0, output(proc)
    for name in hosts:
        (line,) = host_lines(proc.stdout + proc.stderr, name)
        assert f"removed the lock of root@{socket.gethostname()} (pid {pid})" in line, line
    for host in bed.hosts:
        assert not locked(host)
        assert live(host) == r1
        unlocks = [e for e in events(host) if e.get("event") == "unlock"]
        assert len(unlocks) == 1 and f"(pid {pid})" in str(unlocks[0].get("holder")), unlocks
        assert str(unlocks[0].get("who", "")).startswith("root@"), unlocks

    again = project.fab("unlock", hosts=hosts)
    assert again.returncode == 0, output(again)
    assert (again.stdout + again.stderr).count("no lock was held") == len(hosts)

    # its journal outlives the lock: the interrupted rollout is undone by rollback, then deploys go on
    status = project.fab("status", hosts=hosts)
    assert status.returncode == 3 and "INTERRUPTED" in status.stdout, output(status)
    undone = project.fab("rollback", hosts=hosts)
    assert undone.returncode == 0, output(undone)
    deploy(project, hosts, "2.0")
    for host in bed.hosts:
        assert live(host) != r1 and not locked(host)


def test_a_lock_whose_deploy_died_is_called_stale(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    deploy(project, hosts, "1.0")
    killed_deploy(project, bed, hosts)
    status = project.fab("status", hosts=hosts)
    assert "stale: its process is no longer running" in status.stdout, output(status)
    refused = project.fab("deploy", hosts=hosts)
    assert refused.returncode == 2, output(refused)
    assert "interrupted rollout" in refused.stderr and "rollback" in refused.stderr, refused.stderr
    fixed = project.fab("rollback", hosts=hosts)  # the one command: undoes it, dead lock and all
    assert fixed.returncode == 0, output(fixed)
    assert all(not locked(h) for h in bed.hosts)
    assert project.fab("deploy", hosts=hosts).returncode == 0


# -- verify ---------------------------------------------------------------------------------------------


def test_verify_reports_green_then_names_the_red_host_check_and_values(three: Dict[str, Any],
                                                                         tmp_path: Path) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    deploy(project, hosts, "1.0")
    report, junit = tmp_path / "verify.json", tmp_path / "verify.xml"
    proc = project.fab("verify", "--json", str(report), "--junit", str(junit), hosts=hosts)
    assert proc.returncode == 0, output(proc)
    assert "all 9 checks green on 3 hosts" in proc.stdout, proc.stdout
    data = json.loads(report.read_text())
    assert data["ok"] is True
    assert sorted(h["host"] for h in data["hosts"]) == sorted(hosts)
    assert all(c["ok"] for h in data["hosts"] for c in h["checks"])
    suites = ET.parse(junit).getroot()
    assert sorted(s.get("name") or "" for s in suites.iter("testsuite")) == sorted(hosts)
    assert all(len(list(s.iter("testcase"))) == 3 for s in suites.iter("testsuite"))
    assert not list(suites.iter("failure"))
    for host in bed.hosts:
        assert events(host)[-1]["event"] == "verify" and events(host)[-1]["outcome"] == "green"

    victim = bed.hosts[1]
    victim.sh(f"kill $(cat {DEPLOY_TO}/shared/log/hello.pid)")
    project.config["verify"] = {"timeout": 1.5, "interval": 0.3}
    project.write(project.config)
    proc = project.fab("verify", "--json", str(report), "--junit", str(junit), hosts=hosts)
    assert proc.returncode == 1, output(proc)
    red = [line for line in proc.stdout.splitlines() if "expected" in line]
    assert red, proc.stdout
    assert all(victim.name in line for line in red), red
    health = [line for line in red if "health" in line]
    assert health, red
    assert "expected status 200" in health[0] and "got" in health[0], health[0]  # expected and observed
    port = [line for line in red if f"port {PORT}" in line]
    assert port and "expected" in port[0] and "got" in port[0], red
    data = json.loads(report.read_text())
    assert data["ok"] is False
    by_host = {h["host"]: h for h in data["hosts"]}
    assert by_host[victim.name]["ok"] is False
    assert all(by_host[n]["ok"] for n in hosts if n != victim.name)
    suites = ET.parse(junit).getroot()
    failing = {s.get("name") for s in suites.iter("testsuite") if list(s.iter("failure"))}
    assert failing == {victim.name}, failing
    assert events(victim)[-1]["outcome"] == "red"


def test_verify_with_an_unreachable_host_refuses_naming_it(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    deploy(project, hosts, "1.0")
    down = bed.hosts[2]
    down.stop_sshd()
    proc = project.fab("verify", hosts=hosts)
    assert proc.returncode == 2, output(proc)
    assert "Traceback" not in output(proc)
    named = host_lines(proc.stderr, down.name)
    assert named and "connection refused" in " ".join(named), proc.stderr
    for other in hosts[:2]:
        assert not host_lines(proc.stderr, other), proc.stderr  # only the unreachable host is blamed


def test_verify_with_an_unknown_config_key_is_one_line(three: Dict[str, Any]) -> None:
    project, hosts = three["project"], three["hosts"]
    project.config["checkz"] = []
    project.write(project.config)
    proc = project.fab("verify", hosts=hosts)
    assert proc.returncode == 2, output(proc)
    assert "Traceback" not in output(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "deploytest.checkz" in lines[0] and "unknown key" in lines[0], lines[0]


def test_verify_with_an_unknown_host_key_is_refused(three: Dict[str, Any], tmp_path: Path) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    stranger = bed.hosts[1]
    known = tmp_path / "known_hosts"
    known.write_text("".join(line + "\n" for line in bed.known_hosts.read_text().splitlines()
                             if not line.startswith(stranger.address + " ")))
    assert stranger.address not in known.read_text()
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(bed.ssh_config.read_text().replace(str(bed.known_hosts), str(known)))
    project.ssh_config = ssh_config
    proc = project.fab("verify", hosts=hosts)
    assert proc.returncode == 2, output(proc)
    assert "Traceback" not in output(proc)
    named = host_lines(proc.stderr, stranger.name)
    assert named and "known_hosts" in " ".join(named), proc.stderr
    assert f"{stranger.name}: {stranger.name}:" not in proc.stderr, proc.stderr  # the host named once
    assert not host_lines(proc.stderr, hosts[0]) and not host_lines(proc.stderr, hosts[2]), proc.stderr
    for host in bed.hosts:
        assert host.sh(f"test -e {DEPLOY_TO}").returncode != 0  # nothing was created anywhere


def test_deploy_with_an_unknown_host_key_is_refused_naming_the_host_once(three: Dict[str, Any],
                                                                          tmp_path: Path) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    stranger = bed.hosts[2]
    known = tmp_path / "known_hosts"
    known.write_text("".join(line + "\n" for line in bed.known_hosts.read_text().splitlines()
                             if not line.startswith(stranger.address + " ")))
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(bed.ssh_config.read_text().replace(str(bed.known_hosts), str(known)))
    project.ssh_config = ssh_config
    proc = project.fab("deploy-and-verify", hosts=hosts)
    assert proc.returncode == 2, output(proc)
    assert "known_hosts" in proc.stderr, proc.stderr
    assert f"{stranger.name}: preflight: {stranger.name}:" not in proc.stderr, proc.stderr  # named once
    for host in bed.hosts:
        assert host.sh(f"test -e {DEPLOY_TO}").returncode != 0  # nothing was created anywhere
