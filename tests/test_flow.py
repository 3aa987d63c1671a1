"""The red-green flow end to end: ``fab -H ... deploy-and-verify`` against real sshd hosts."""

from __future__ import annotations

import json
import signal
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
from onhost import DEPLOY_TO, PORT, live, locked, releases_on, served, state_of
from project import Project, finish, hello_bed, hello_config, interrupt_when

from deploytest.config import load
from deploytest.lock import LockOwner, acquire_lock
from deploytest.ssh import connect

pytestmark = pytest.mark.testbed


@pytest.fixture
def five(make_hosts: Callable[..., Any], tmp_path: Path) -> Dict[str, Any]:
    return hello_bed(make_hosts, tmp_path, 5)


def deploy_good(project: Project, hosts: List[str], version: str = "1.0") -> None:
    project.set_version(version)
    proc = project.fab("deploy-and-verify", hosts=hosts)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_good_release_goes_live_everywhere(five: Dict[str, Any], tmp_path: Path) -> None:
    project, bed = five["project"], five["bed"]
    junit = tmp_path / "junit.xml"
    report = tmp_path / "report.json"
    proc = project.fab("deploy-and-verify", "--junit", str(junit), "--json", str(report), hosts=five["hosts"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ids = {live(h) for h in bed.hosts}
    assert len(ids) == 1 and "" not in ids, ids  # one release id, identical on every host
    for host in bed.hosts:
        assert served(host) == "ok 1.0"
        assert not locked(host)
    suites = ET.parse(junit).getroot()
    assert {s.get("name") for s in suites.iter("testsuite")} >= set(five["hosts"])
    assert not list(suites.iter("failure"))
    data = json.loads(report.read_text())
    assert data["outcome"] == "verified" and data["release"] in ids, data


def test_broken_release_is_rolled_back_on_every_host(five: Dict[str, Any]) -> None:
    project, bed = five["project"], five["bed"]
    project.write(hello_config(DEPLOY_TO, PORT, rollout={"batches": ["100%"], "max_fail": 0, "parallel": 10}))
    deploy_good(project, five["hosts"])
    before = {h.name: live(h) for h in bed.hosts}
    project.set_version("2.0", broken=True, verify_timeout=3)
    proc = project.fab("deploy-and-verify", hosts=five["hosts"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for host in bed.hosts:
        assert live(host) == before[host.name]
        assert served(host) == "ok 1.0"
        assert not locked(host)
    assert "rolled back" in proc.stdout + proc.stderr


def test_canary_failure_leaves_other_hosts_untouched(five: Dict[str, Any]) -> None:
    project, bed = five["project"], five["bed"]
    deploy_good(project, five["hosts"])
    before = {h.name: (live(h), releases_on(h)) for h in bed.hosts}
    project.set_version("2.0", broken=True, verify_timeout=2)
    proc = project.fab("deploy-and-verify", hosts=five["hosts"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    canary, rest = bed.hosts[0], bed.hosts[1:]
    assert live(canary) == before[canary.name][0]
    for host in rest:
        assert (live(host), releases_on(host)) == before[host.name]  # never switched, nothing left over
        assert not locked(host)


def test_lock_held_on_one_host_refuses_and_changes_nothing(five: Dict[str, Any]) -> None:
    project, bed = five["project"], five["bed"]
    deploy_good(project, five["hosts"])
    before = {h.name: (live(h), releases_on(h)) for h in bed.hosts}
    # another operator's deploy holds web3's lock, taken over SSH as deploytest itself takes it
    other = LockOwner("alice", "laptop", 4242, "2026-11-25T10:00:01Z", token="a" * 32)
    target = connect("web3", bed.fabric_config())
    settings = load(project.config)
    acquire_lock(target, settings, other)
    target.close()
    project.set_version("1.1")
    proc = project.fab("deploy-and-verify", hosts=five["hosts"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "web3: preflight: locked by alice@laptop (pid 4242) since 2026-11-25T10:00:01Z" in proc.stderr
    assert "nothing was changed" in proc.stderr.lower()
    for host in bed.hosts:
        assert (live(host), releases_on(host)) == before[host.name]
        assert locked(host) == (host.name == "web3")  # ours released, alice's kept


def test_host_cut_off_mid_verify_needs_a_human(five: Dict[str, Any]) -> None:
    project, bed = five["project"], five["bed"]
    config = hello_config(DEPLOY_TO, PORT, rollout={"batches": ["100%"], "max_fail": 0, "parallel": 10},
                          connect_timeout=2)
    project.write(config)
    deploy_good(project, five["hosts"])
    before = {h.name: live(h) for h in bed.hosts}
    project.set_version("2.0", broken=True, verify_timeout=6)
    victim = bed.hosts[3]
    proc = project.start("deploy-and-verify", hosts=five["hosts"])

    def cut_when_switched() -> None:
        # once the new (broken) release answers, the host is in its verify stage
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and served(victim) != "database unreachable":
            time.sleep(0.05)
        seen = victim.sessions()
        while time.monotonic() < deadline and victim.sessions() < seen + 2:
            time.sleep(0.05)  # past the switch's session: its checks are running now
        victim.cut()

    cutter = threading.Thread(target=cut_when_switched)
    cutter.start()
    out = finish(proc, 90)
    cutter.join()
    assert proc.returncode == 3, out
    assert victim.name in out
    victim.heal()
    for host in bed.hosts:
        if host is not victim:
            assert live(host) == before[host.name]
            assert served(host) == "ok 1.0"
            assert not locked(host)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_during_verify_rolls_back_and_unlocks(five: Dict[str, Any], sig: int) -> None:
    # SIGTERM: what a CI server sends when a job is cancelled; handled as Ctrl-C is
    project, bed = five["project"], five["bed"]
    project.write(hello_config(DEPLOY_TO, PORT, rollout={"batches": ["100%"], "max_fail": 0, "parallel": 10}))
    deploy_good(project, five["hosts"])
    before = {h.name: live(h) for h in bed.hosts}
    project.set_version("2.0", broken=True, verify_timeout=60)
    proc = project.start("deploy-and-verify", hosts=five["hosts"])
    out = interrupt_when(proc, lambda: all(live(h) != before[h.name] for h in bed.hosts), sig=sig)
    assert proc.returncode == 1, out
    assert "rolling back" in out, out
    assert ("interrupted (SIGTERM)" in out) == (sig == signal.SIGTERM), out
    for host in bed.hosts:
        assert live(host) == before[host.name]
        assert served(host) == "ok 1.0"
        assert not locked(host)


def _with_marker_check(project: Project, max_fail: int) -> None:
    """Require /srv/ok on each host, tolerating ``max_fail`` hosts that lack it."""
    config = dict(project.config)
    config["checks"] = config["checks"] + [{"file": {"path": "/srv/ok", "name": "host is ready"}}]
    config["rollout"] = {"batches": [1, "100%"], "max_fail": max_fail, "parallel": 10}
    config["verify"] = {"timeout": 2, "interval": 0.3}
    project.write(config)


def test_failures_within_max_fail_are_put_back_alone(five: Dict[str, Any]) -> None:
    project, bed = five["project"], five["bed"]
    deploy_good(project, five["hosts"])
    before = {h.name: live(h) for h in bed.hosts}
    for host in bed.hosts:
        if host.name != "web2":
            host.sh("touch /srv/ok", check=True)
    project.set_version("2.0")
    _with_marker_check(project, max_fail=1)
    proc = project.fab("deploy-and-verify", hosts=five["hosts"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "web2" in proc.stderr and "previous release" in proc.stderr, proc.stderr
    new = {live(h) for h in bed.hosts if h.name != "web2"}
    assert len(new) == 1 and new != {before["web1"]}
    web2 = bed.host("web2")
    assert live(web2) == before["web2"] and served(web2) == "ok 1.0"
    assert state_of(web2, new.pop()) == "bad"
    assert not any(locked(h) for h in bed.hosts)


def test_more_failures_than_max_fail_roll_everything_back(five: Dict[str, Any]) -> None:
    project, bed = five["project"], five["bed"]
    deploy_good(project, five["hosts"])
    before = {h.name: live(h) for h in bed.hosts}
    for host in bed.hosts:
        if host.name not in ("web2", "web4"):
            host.sh("touch /srv/ok", check=True)
    project.set_version("2.0")
    _with_marker_check(project, max_fail=1)
    proc = project.fab("deploy-and-verify", hosts=five["hosts"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for host in bed.hosts:
        assert live(host) == before[host.name] and served(host) == "ok 1.0"
        assert not locked(host)


def test_prepare_per_batch_costs_a_failed_canary_one_upload(five: Dict[str, Any]) -> None:
    project, bed = five["project"], five["bed"]
    deploy_good(project, five["hosts"])
    before = {h.name: live(h) for h in bed.hosts}
    project.set_version("2.0", broken=True, verify_timeout=2)
    # each host's build leaves a mark in its shared/ directory: where the release was built at all
    project.config["hooks"]["build"] = ["python3 -m py_compile hello.py", 'touch "$DEPLOYTEST_SHARED/built"']
    project.config["rollout"] = {"batches": [1, "100%"], "max_fail": 0, "parallel": 10, "prepare": "per_batch"}
    project.write(project.config)
    proc = project.fab("deploy-and-verify", hosts=five["hosts"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"on {five['hosts'][0]}\n" in proc.stdout  # "== prepare release ... on web1"
    built = [h.name for h in bed.hosts if h.sh(f"test -e {DEPLOY_TO}/shared/built").returncode == 0]
    assert built == [five["hosts"][0]], built  # only the canary paid for an upload and a build
    for host in bed.hosts:
        assert live(host) == before[host.name] and served(host) == "ok 1.0" and not locked(host)


def test_remote_sessions_per_host_are_counted(make_hosts: Callable[..., Any], tmp_path: Path) -> None:
    """Round trips, counted in each host's sshd log: a green deploy-and-verify with a restart hook is 5
    sessions per host (the baseline's probes with the inspection and lock, prepare, switch and restart,
    verify, finish); one verify attempt is 1, its audit line included."""
    setup = hello_bed(make_hosts, tmp_path, 2)
    project, bed, hosts = setup["project"], setup["bed"], setup["hosts"]
    deploy_good(project, hosts)
    expected = {"deploy-and-verify": 5, "verify": 1}
    counts = {}
    project.set_version("2.0")
    for task, sessions in expected.items():
        before = {h.name: h.sessions() for h in bed.hosts}
        proc = project.fab(task, hosts=hosts)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # sshd logs a session as it starts; one more than expected shows up as a larger count
        counts[task] = {h.name: h.wait_sessions(before[h.name] + sessions) - before[h.name] for h in bed.hosts}
    assert counts == {task: {h: n for h in hosts} for task, n in expected.items()}, counts
    for host in bed.hosts:  # the verify's audit line went in its one session
        last = json.loads(host.sh(f"tail -n 1 {DEPLOY_TO}/.deploytest/log.jsonl").stdout)
        assert (last["event"], last["outcome"], last["red"]) == ("verify", "green", []), last
