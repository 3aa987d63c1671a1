"""Recover from anything, over real sshd hosts: a rollout whose control machine died (kill -9) at
prepare, right after the canary switched, or mid batch 2; a link cut during prepare; a disk that fills
during a restart; a rollback that stays red. Each ends with every host on one verified release,
serving it, no lock, the failed release marked bad, in at most one on-call command after ``status``."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
from onhost import DEPLOY_TO, live, locked, output, releases_on, state_of, wait_served
from project import Project, hello_bed

from deploytest.records import parse_record

pytestmark = pytest.mark.testbed


@pytest.fixture
def four(make_hosts: Callable[..., Any], tmp_path: Path) -> Dict[str, Any]:
    bed = hello_bed(make_hosts, tmp_path, 4, rollout={"batches": [1, "50%"], "max_fail": 0, "parallel": 10})
    project, hosts = bed["project"], bed["hosts"]
    for version in ("1.0", "2.0"):
        project.set_version(version)
        proc = project.fab("deploy-and-verify", hosts=hosts)
        assert proc.returncode == 0, output(proc)
    bed["r2"] = live(bed["bed"].hosts[0])
    return bed


def journal(host: Any) -> bool:
    return host.sh(f"test -e {DEPLOY_TO}/.deploytest/journal").returncode == 0


def journal_release(host: Any) -> str:
    """The release the rollout in the host's journal was making."""
    return parse_record(host.sh(f"cat {DEPLOY_TO}/.deploytest/journal").stdout)["release"]


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.communicate()[0] if proc.poll() is not None else ""
            proc.kill()
            raise AssertionError(f"never happened; fab exited {proc.returncode}:\n{out}")
        time.sleep(0.05)


def cut_once(proc: subprocess.Popen[str], host: Any, condition: Callable[[], bool]) -> str:
    """Cut ``host``'s network once ``condition`` holds, let the run end, heal it; the run's output."""
    wait_for(condition, proc)
    host.cut()
    try:
        return proc.communicate(timeout=120)[0]
    finally:
        host.heal()


def kill_9(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.communicate(timeout=30)


def new_release(host: Any, known: str) -> str:
    """The release on ``host`` newer than ``known`` (the one the killed rollout made)."""
    newer = [r for r in releases_on(host) if r > known]
    assert len(newer) == 1, releases_on(host)
    return newer[0]


def one_command_after_status(project: Project, hosts: List[str], expect_on_new: List[str]) -> str:
    """``status`` exits 3 naming the interrupted rollout and ONE command; run that command; return it."""
    proc = project.fab("status", hosts=hosts)
    text = output(proc)
    assert proc.returncode == 3, text
    assert "an interrupted rollout of " in text, text
    for name in expect_on_new:
        assert re.search(rf"{name}\b.*live on \d+ \(unverified\)|INTERRUPTED", text), text
    (command,) = re.findall(r"next: (fab .*?)\s{3}\(undoes it", text)
    assert command == f"fab -H {','.join(hosts)} rollback", command
    fixed = project.fab(*command.split()[3:], hosts=hosts)
    assert fixed.returncode == 0, output(fixed)
    return fixed.stdout


def assert_all_back(bed: Any, r2: str, failed: str, went_live: List[str], project: Project) -> None:
    for host in bed.hosts:
        assert live(host) == r2, host.name
        assert wait_served(host, "ok 2.0") == "ok 2.0", host.name
        assert not locked(host) and not journal(host), host.name
        assert state_of(host, r2) == "verified", host.name
        if host.name in went_live:
            assert state_of(host, failed) == "bad", host.name
        else:
            assert failed not in releases_on(host), host.name  # never live there: removed
    proc = project.fab("status", hosts=[h.name for h in bed.hosts])
    assert proc.returncode == 0, output(proc)


def broken_except_on(project: Project, healthy: str) -> None:
    """The next release answers 500 on /health everywhere but on host ``healthy``."""
    project.set_version("3.0", verify_timeout=6)
    project.config["hooks"]["build"] = ["python3 -m py_compile hello.py",
                                        f'[ "$(hostname)" = {healthy} ] || echo broken > BROKEN']
    project.write(project.config)


def slow_rollout(project: Project, hosts: List[str], build_seconds: float) -> subprocess.Popen[str]:
    """Start a deploy-and-verify of 3.0 whose build takes ``build_seconds`` on every host."""
    project.set_version("3.0")
    project.config["hooks"]["build"] = [f"sleep {build_seconds:g}"]
    project.write(project.config)
    return project.start("deploy-and-verify", hosts=hosts)


def test_kill_9_during_prepare_is_undone_in_one_command(four: Dict[str, Any]) -> None:
    project, bed, hosts, r2 = four["project"], four["bed"], four["hosts"], four["r2"]
    proc = slow_rollout(project, hosts, 3)
    wait_for(lambda: all(journal(h) and len(releases_on(h)) == 3 for h in bed.hosts), proc)
    kill_9(proc)
    r3 = journal_release(bed.hosts[0])
    refused = project.fab("deploy-and-verify", hosts=hosts)  # a new rollout waits for the undo
    assert refused.returncode == 2, output(refused)
    assert f"next: fab -H {','.join(hosts)} rollback" in refused.stderr
    out = one_command_after_status(project, hosts, [])
    assert f"undo the interrupted rollout of {r3}" in out
    assert_all_back(bed, r2, r3, [], project)


def test_kill_9_right_after_the_canary_switched(four: Dict[str, Any]) -> None:
    project, bed, hosts, r2 = four["project"], four["bed"], four["hosts"], four["r2"]
    project.set_version("3.0", broken=True, verify_timeout=8)
    proc = project.start("deploy-and-verify", hosts=hosts)
    canary = bed.hosts[0]
    wait_for(lambda: live(canary) not in ("", r2), proc)
    kill_9(proc)
    r3 = live(canary)
    assert [live(h) for h in bed.hosts[1:]] == [r2, r2, r2]
    one_command_after_status(project, hosts, [canary.name])
    assert_all_back(bed, r2, r3, [canary.name], project)


def test_kill_9_mid_batch_2(four: Dict[str, Any]) -> None:
    project, bed, hosts, r2 = four["project"], four["bed"], four["hosts"], four["r2"]
    broken_except_on(project, hosts[0])  # the canary passes; batch 2 serves 500
    proc = project.start("deploy-and-verify", hosts=hosts)
    wait_for(lambda: all(live(h) not in ("", r2) for h in bed.hosts[:3]), proc)
    time.sleep(0.5)  # into batch 2's verification (its checks are red and keep being re-checked)
    kill_9(proc)
    r3 = live(bed.hosts[0])
    switched = [h.name for h in bed.hosts if live(h) == r3]
    assert switched == hosts[:3], switched
    one_command_after_status(project, hosts, switched)
    assert_all_back(bed, r2, r3, switched, project)


def test_a_link_cut_during_prepare(four: Dict[str, Any]) -> None:
    project, bed, hosts, r2 = four["project"], four["bed"], four["hosts"], four["r2"]
    proc = slow_rollout(project, hosts, 2)
    cut = bed.hosts[1]
    out = cut_once(proc, cut, lambda: journal(cut) and len(releases_on(cut)) == 3)  # its prepare has begun
    assert proc.returncode == 3, out
    assert "Traceback" not in out and "paramiko" not in out.lower(), out
    assert cut.name in out
    for host in bed.hosts:
        assert live(host) == r2
    # the host that was cut kept its journal: status names it and one command settles it
    r3 = journal_release(cut)
    for host in bed.hosts:
        if host is not cut:
            assert r3 not in releases_on(host) and not locked(host)
    status = project.fab("status", hosts=hosts)
    assert status.returncode == 3, output(status)
    fixed = project.fab("rollback", hosts=[cut.name])
    assert fixed.returncode == 0, output(fixed)
    assert_all_back(bed, r2, r3, [], project)


def test_the_first_host_lost_during_its_baseline_look_is_named_with_what_to_run(four: Dict[str, Any]) -> None:
    # The first host takes its lock, then takes the baseline's look (the others go on meanwhile): lost
    # during that look, it may hold its lock still. Not "nothing was changed" then: exit 3 names it, and
    # status names the one command that settles it.
    project, bed, hosts, r2 = four["project"], four["bed"], four["hosts"], four["r2"]
    project.set_version("3.0")
    project.config["checks"].append({"command": {"run": "sleep 4", "timeout": 10}})
    project.write(project.config)
    proc = project.start("deploy-and-verify", hosts=hosts)
    cut = bed.hosts[0]
    out = cut_once(proc, cut, lambda: journal(cut))
    assert proc.returncode == 3, out
    assert "Traceback" not in out and "nothing was changed" not in out, out
    assert f"next: fab -H {cut.name} status once it answers" in out, out
    for host in bed.hosts:
        assert live(host) == r2 and len(releases_on(host)) == 2, host.name
        assert journal(host) == (host is cut) and locked(host) == (host is cut), host.name
    status = project.fab("status", hosts=hosts)
    assert status.returncode == 3 and f"{cut.name}: INTERRUPTED" in output(status), output(status)
    (command,) = re.findall(r"next: (fab .*?)\s{3}\(undoes it", output(status))
    assert command == f"fab -H {cut.name} rollback", command
    fixed = project.fab(*command.split()[3:], hosts=[cut.name])
    assert fixed.returncode == 0, output(fixed)
    assert_all_back(bed, r2, "none", [], project)


def test_a_disk_that_fills_during_the_restart_leaves_no_lock_and_the_release_marked_bad(
        make_hosts: Callable[..., Any], tmp_path: Path) -> None:
    setup = hello_bed(make_hosts, tmp_path, 1)
    project, host = setup["project"], setup["bed"].hosts[0]
    host.tiny_disk("8m")  # /srv on its own small volume: filling it fills nothing else
    project.set_version("2.0")
    assert project.fab("deploy-and-verify", hosts=setup["hosts"]).returncode == 0
    r2 = live(host)
    project.set_version("3.0")
    # this release's restart fills the disk its state lives on, then fails
    project.config["hooks"]["build"] = ["python3 -m py_compile hello.py",
                                        "printf 'cat /dev/zero > fill 2>/dev/null; exit 1\\n' >> bin/restart"]
    project.write(project.config)
    proc = project.fab("deploy-and-verify", hosts=setup["hosts"])
    text = output(proc)
    host.sh(f"rm -f {DEPLOY_TO}/releases/*/fill")
    assert proc.returncode == 1, text
    assert "No space left on device" in text, text
    r3 = new_release(host, r2)
    assert live(host) == r2 and wait_served(host, "ok 2.0") == "ok 2.0"
    assert not locked(host) and not journal(host)
    assert state_of(host, r3) == "bad"


def test_a_rollback_that_stays_red_marks_nothing_bad_and_needs_a_human(four: Dict[str, Any]) -> None:
    project, bed, hosts, r2 = four["project"], four["bed"], four["hosts"], four["r2"]
    r1 = [r for r in releases_on(bed.hosts[0]) if r < r2][-1]
    # r1's own suite wants its VERSION to say 1.0: make it lie on two hosts
    for host in bed.hosts[:2]:
        host.sh(f"echo 9.9 > {DEPLOY_TO}/releases/{r1}/VERSION")
    proc = project.fab("rollback", hosts=hosts)
    text = output(proc)
    assert proc.returncode == 3, text
    assert "the rollback is not verified" in text
    for host in bed.hosts[:2]:
        assert f"{host.name}: live on {r1}, red with its suite; {r2} (left) not marked bad" in text
        assert state_of(host, r2) == "verified"  # the release it left is not condemned
    assert f"fab -H {hosts[0]},{hosts[1]} rollback --to {r2}" in text
    for host in bed.hosts:
        assert live(host) == r1 and not locked(host)
    for host in bed.hosts[2:]:
        assert state_of(host, r2) == "bad"  # green there: the way back was verified


def test_a_rollback_goes_to_one_release_on_every_host_or_refuses(four: Dict[str, Any]) -> None:
    project, bed, hosts, r2 = four["project"], four["bed"], four["hosts"], four["r2"]
    r1 = [r for r in releases_on(bed.hosts[0]) if r < r2][-1]
    project.set_version("3.0")
    assert project.fab("deploy-and-verify", hosts=hosts).returncode == 0
    r3 = live(bed.hosts[0])
    bed.hosts[0].sh(f"touch {DEPLOY_TO}/.deploytest/releases/{r2}.bad")  # web1 alone skips r2
    before = {h.name: (live(h), releases_on(h)) for h in bed.hosts}
    proc = project.fab("rollback", hosts=hosts)
    text = output(proc)
    assert proc.returncode == 2, text
    assert "the hosts would go back to different releases" in text and "Nothing was changed" in text, text
    assert f"{hosts[0]} -> {r1}" in text and f"{', '.join(hosts[1:])} -> {r2}" in text, text
    assert f"next: fab -H {','.join(hosts)} rollback --to {r1}" in text, text
    assert {h.name: (live(h), releases_on(h)) for h in bed.hosts} == before
    assert all(live(h) == r3 and not locked(h) for h in bed.hosts)


def test_a_plain_deploy_is_not_a_rollback_target(four: Dict[str, Any]) -> None:
    project, bed, hosts, r2 = four["project"], four["bed"], four["hosts"], four["r2"]
    project.set_version("3.0")
    assert project.fab("deploy", hosts=hosts).returncode == 0
    r3 = live(bed.hosts[0])
    assert state_of(bed.hosts[0], r3) == "complete"
    listing = project.fab("releases", hosts=hosts[:1])
    assert re.search(rf"{r3} .* live, unverified", listing.stdout), listing.stdout
    assert re.search(rf"{r2} .* rollback target, verified", listing.stdout), listing.stdout
    project.set_version("4.0")
    assert project.fab("deploy", hosts=hosts).returncode == 0
    proc = project.fab("rollback", hosts=hosts)  # skips the unverified r3, back to r2
    assert proc.returncode == 0, output(proc)
    assert all(live(h) == r2 for h in bed.hosts)
    forced = project.fab("rollback", "--to", r3, hosts=hosts)
    assert forced.returncode == 2 and "--force" in forced.stderr, output(forced)
    project.config["checks"] = [c for c in project.config["checks"] if "file" not in c]  # no version pinned
    project.write(project.config)
    forced = project.fab("rollback", "--to", r3, "--force", hosts=hosts)
    assert forced.returncode == 0, output(forced)
    assert all(live(h) == r3 and state_of(h, r3) == "verified" for h in bed.hosts)
