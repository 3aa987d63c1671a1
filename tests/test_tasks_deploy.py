"""The ``deploy`` and ``rollback`` tasks over real sshd hosts: what a user sees and finds on the hosts."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Dict, List

import pytest
from onhost import (
    DEPLOY_TO,
    assert_clean,
    link,
    live,
    locked,
    output,
    releases_on,
    snapshot,
    state_of,
    wait_served,
)
from project import Project, finish, interrupt_when

pytestmark = pytest.mark.testbed


# -- fixtures -------------------------------------------------------------------------------------


def deploy(project: Project, hosts: List[str], version: str = "1.0") -> None:
    project.set_version(version)
    proc = project.fab("deploy", hosts=hosts)
    assert proc.returncode == 0, output(proc)


def verified(project: Project, hosts: List[str], version: str) -> None:
    """A release that went live and passed its checks: what a rollback goes back to."""
    project.set_version(version)
    proc = project.fab("deploy-and-verify", hosts=hosts)
    assert proc.returncode == 0, output(proc)


def health_only(project: Project) -> None:
    """Checks that hold for every good release (no version pinned): what a rollback verifies."""
    project.config["checks"] = [c for c in project.config["checks"] if "file" not in c]
    project.write(project.config)


# -- deploy -----------------------------------------------------------------------------------------


def test_deploy_to_three_hosts_goes_live_with_one_release_id(three: Dict[str, Any]) -> None:
    project, bed = three["project"], three["bed"]
    started = time.monotonic()
    proc = project.fab("deploy", hosts=three["hosts"])
    assert proc.returncode == 0, output(proc)
    assert time.monotonic() - started < 60
    ids = {live(h) for h in bed.hosts}
    assert len(ids) == 1 and "" not in ids, ids
    (rid,) = ids
    assert rid in proc.stdout
    for host in bed.hosts:
        target = link(host)
        assert target == f"{DEPLOY_TO}/releases/{rid}", target  # absolute, straight to the release
        assert releases_on(host) == [rid]
        assert state_of(host, rid) == "complete"
        assert host.sh(f"test -f {target}/hello.py && test -f {target}/VERSION").returncode == 0
        assert host.sh(f"test -L {target}/log").returncode == 0  # the shared path is linked in
        assert wait_served(host, "ok 1.0") == "ok 1.0"
        assert not locked(host)


def test_seven_deploys_keep_five_good_releases(three: Dict[str, Any]) -> None:
    project, bed = three["project"], three["bed"]
    lives: List[str] = []
    for n in range(7):
        deploy(project, three["hosts"], f"1.{n}")
        lives.append(live(bed.hosts[0]))
    assert lives == sorted(lives) and len(set(lives)) == 7, lives  # ids sort by deploy order
    for host in bed.hosts:
        kept = releases_on(host)
        assert kept == lives[-5:], (host.name, kept)
        assert live(host) == lives[-1]
        assert all(state_of(host, rid) == "complete" for rid in kept)
        meta = sorted(host.sh(f"ls -1 {DEPLOY_TO}/.deploytest/releases").stdout.split())
        assert meta == [f"{rid}.meta" for rid in kept], (host.name, meta)  # no metadata of removed ones
        assert wait_served(host, "ok 1.6") == "ok 1.6"
        assert not locked(host)


# -- rollback ----------------------------------------------------------------------------------------


def test_rollback_goes_back_marks_bad_and_skips_it_next_time(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    ids = []
    for version in ("1.0", "2.0", "3.0"):
        verified(project, hosts, version)
        ids.append(live(bed.hosts[0]))
    r1, r2, r3 = ids
    health_only(project)

    proc = project.fab("rollback", hosts=hosts)
    assert proc.returncode == 0, output(proc)
    for host in bed.hosts:
        assert live(host) == r2
        assert wait_served(host, "ok 2.0") == "ok 2.0"
        assert state_of(host, r3) == "bad"
        assert not locked(host)

    table = project.fab("releases", hosts=hosts)
    assert table.returncode == 0, output(table)
    rows = {line.split()[0]: line for line in table.stdout.splitlines() if line.strip()[:1].isdigit()}
    assert "bad" in rows[r3] and "live" not in rows[r3], table.stdout
    assert "live" in rows[r2], table.stdout
    assert table.stdout.count(r3) == len(hosts)  # one table per host

    # the bad release cannot be brought back by name
    refused = project.fab("rollback", "--to", r3, hosts=hosts)
    assert refused.returncode == 2, output(refused)
    assert "bad" in refused.stderr
    assert all(live(h) == r2 and not locked(h) for h in bed.hosts)

    # a new good release, then a rollback: back to r2, skipping the bad r3
    verified(project, hosts, "4.0")
    health_only(project)
    r4 = live(bed.hosts[0])
    proc = project.fab("rollback", hosts=hosts)
    assert proc.returncode == 0, output(proc)
    for host in bed.hosts:
        assert live(host) == r2, (host.name, r4)
        assert wait_served(host, "ok 2.0") == "ok 2.0"

    # rollback --to an older good release
    proc = project.fab("rollback", "--to", r1, hosts=hosts)
    assert proc.returncode == 0, output(proc)
    for host in bed.hosts:
        assert live(host) == r1
        assert wait_served(host, "ok 1.0") == "ok 1.0"
        assert not locked(host)
        events = [json.loads(line) for line in host.sh(f"cat {DEPLOY_TO}/.deploytest/log.jsonl").stdout.splitlines()]
        rollbacks = [e for e in events if e.get("event") == "rollback"]
        assert [e.get("release") for e in rollbacks] == [r2, r2, r1], rollbacks


@pytest.mark.parametrize("to", ["../../etc", "x;rm -rf /", "$(id)", "20000101000000"])
def test_rollback_to_a_bad_name_is_refused_and_changes_nothing(three: Dict[str, Any], to: str) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    deploy(project, hosts, "1.0")
    deploy(project, hosts, "2.0")
    health_only(project)
    before = snapshot(bed)
    proc = project.fab("rollback", "--to", to, hosts=hosts)
    assert proc.returncode == 2, output(proc)
    assert "Traceback" not in output(proc)
    assert "Nothing was changed" in proc.stderr, proc.stderr
    assert to in proc.stderr  # the message names what was refused
    assert_clean(bed, before)
    for host in bed.hosts:
        assert wait_served(host, "ok 2.0") == "ok 2.0"
    assert host.sh("test -d /etc && test -d /srv").returncode == 0


# -- failures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hook", ["false", "exit 3"])
def test_failing_build_hook_changes_nothing_live(three: Dict[str, Any], hook: str) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    deploy(project, hosts, "1.0")
    before = snapshot(bed)
    project.set_version("2.0")
    project.config["hooks"]["build"] = ["python3 -m py_compile hello.py", hook]
    project.write(project.config)
    proc = project.fab("deploy", hosts=hosts)
    assert proc.returncode == 1, output(proc)
    text = output(proc)
    assert "Traceback" not in text
    assert "build hook" in text and hook in text, text
    assert any(name in text for name in hosts)
    assert_clean(bed, before)
    for host in bed.hosts:
        assert wait_served(host, "ok 1.0") == "ok 1.0"


def test_two_deploys_at_once_one_wins_the_other_names_the_holder(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    deploy(project, hosts, "1.0")
    project.set_version("2.0")
    project.config["hooks"]["build"] = ["python3 -m py_compile hello.py", "sleep 3"]
    project.write(project.config)
    first = project.start("deploy", hosts=hosts)
    try:
        deadline = time.monotonic() + 30
        while not all(locked(h) for h in bed.hosts) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.02)
        assert all(locked(h) for h in bed.hosts), "the first deploy never held every lock"
        second = project.fab("deploy", hosts=hosts)
    finally:
        out = finish(first, 120)
    assert first.returncode == 0, out
    assert second.returncode == 2, output(second)
    assert "locked by" in second.stderr, second.stderr
    assert "root@" in second.stderr  # the holder: user@machine (pid N)
    assert "pid" in second.stderr
    ids = {live(h) for h in bed.hosts}
    assert len(ids) == 1, ids
    (rid,) = ids
    assert rid in out
    assert_clean(bed)
    for host in bed.hosts:
        assert state_of(host, rid) == "complete"
        assert wait_served(host, "ok 2.0") == "ok 2.0"


def _interrupt_during_build(three: Dict[str, Any], seconds: float, sig: int = signal.SIGINT) -> float:
    """Deploy with a build hook sleeping ``seconds``, Ctrl-C fab (or send it ``sig``) while the hook
    runs on every host; check that nothing changed and return how long fab took to exit after it."""
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    deploy(project, hosts, "1.0")
    before = snapshot(bed)
    project.set_version("2.0")
    hook = f"sleep {seconds}"
    project.config["hooks"]["build"] = [hook]
    project.write(project.config)
    proc = project.start("deploy", hosts=hosts)
    sent: List[float] = []

    def building() -> bool:
        # each host has its own processes: the hook runs on every one
        running = all(h.sh(f"pgrep -x -f '{hook}'").returncode == 0 for h in bed.hosts)
        ready = running and all(len(releases_on(h)) == 2 for h in bed.hosts)
        if ready:
            sent.append(time.monotonic())
        return ready

    out = interrupt_when(proc, building, timeout=30, sig=sig)
    took = time.monotonic() - sent[0]
    assert proc.returncode == 1, out  # every host as it was: a clean failure, not "needs a human"
    assert "interrupted" in out.lower(), out
    assert ("SIGTERM" in out) == (sig == signal.SIGTERM), out  # it says which it was
    assert "Traceback" not in out
    assert_clean(bed, before)
    for host in bed.hosts:
        assert wait_served(host, "ok 1.0") == "ok 1.0"
    return took


def test_ctrl_c_during_a_long_build_stops_it_and_leaves_everything_as_it_was(three: Dict[str, Any]) -> None:
    took = _interrupt_during_build(three, 30.25)
    assert took < 15, f"fab took {took:.1f}s to stop after Ctrl-C"  # it did not wait for the build


def test_sigterm_during_a_long_build_stops_it_as_ctrl_c_does(three: Dict[str, Any]) -> None:
    # what a CI server sends when a job is cancelled
    took = _interrupt_during_build(three, 30.5, sig=signal.SIGTERM)
    assert took < 15, f"fab took {took:.1f}s to stop after SIGTERM"


def _fill_app(project: Project, megabytes: int, *, random: bool) -> None:
    blob = project.root / "app" / "assets"
    blob.mkdir(exist_ok=True)
    for i in range(megabytes):
        data = os.urandom(1024 * 1024) if random else b"\0" * (1024 * 1024)
        (blob / f"blob{i}.bin").write_bytes(data)


def test_no_room_for_the_release_is_refused_before_anything_changes(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    small = bed.hosts[1]
    small.tiny_disk("4m")
    deploy(project, hosts, "1.0")
    before = snapshot(bed)
    _fill_app(project, 3, random=True)  # a few MB gzip cannot shrink
    project.set_version("2.0")
    proc = project.fab("deploy", hosts=hosts)
    text = output(proc)
    assert proc.returncode == 2, text  # preflight sees it: nothing touched anywhere
    assert "Traceback" not in text
    assert f"{small.name}: preflight: only" in proc.stderr and "MB free" in proc.stderr, proc.stderr
    assert DEPLOY_TO in proc.stderr
    assert_clean(bed, before)
    for host in bed.hosts:
        assert wait_served(host, "ok 1.0") == "ok 1.0"


def test_a_host_that_does_not_answer_is_refused_before_anything_changes(three: Dict[str, Any]) -> None:
    # Not the first host: its connection is opened while the first host goes alone, and its refusal
    # must still stop the rollout before anything changes anywhere.
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    deploy(project, hosts, "1.0")
    before = snapshot(bed)
    gone = bed.hosts[2]
    gone.stop_sshd()
    try:
        project.set_version("2.0")
        proc = project.fab("deploy-and-verify", hosts=hosts)
    finally:
        gone.start_sshd()
    text = output(proc)
    assert proc.returncode == 2, text
    assert "Traceback" not in text
    assert f"{gone.name}: preflight:" in proc.stderr and "nothing was changed" in proc.stderr, proc.stderr
    assert proc.stderr.count(f"{gone.name}: preflight:") == 1, proc.stderr
    assert_clean(bed, before)  # no lock, no journal, no release on any host
    for host in bed.hosts:
        assert wait_served(host, "ok 1.0") == "ok 1.0"


def test_disk_filling_up_during_upload_rolls_back_cleanly(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    small = bed.hosts[1]
    # releases/ on a volume of its own: preflight sees the room at deploy_to, the upload meets the limit
    small.sh(f"mkdir -p {DEPLOY_TO}/releases && mount -t tmpfs -o size=4m tmpfs {DEPLOY_TO}/releases", check=True)
    deploy(project, hosts, "1.0")
    before = snapshot(bed)
    _fill_app(project, 12, random=False)  # 12 MB once unpacked: more than releases/ holds
    project.set_version("2.0")
    proc = project.fab("deploy", hosts=hosts)
    text = output(proc)
    assert proc.returncode == 1, text
    assert "Traceback" not in text
    assert f"[{small.name}] prepare: upload failed: no space left on device under {DEPLOY_TO}" in text, text
    assert f"prepare failed on {small.name} (prepare: upload failed" in proc.stderr, proc.stderr
    assert_clean(bed, before)
    free = small.sh(f"df -Pk {DEPLOY_TO}/releases | awk 'NR==2 {{print $4}}'").stdout.strip()
    assert free != "0", free  # the partial upload is gone
    for host in bed.hosts:
        assert wait_served(host, "ok 1.0") == "ok 1.0"


def test_build_hook_filling_the_disk_rolls_back_and_unlocks(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    small = bed.hosts[2]
    small.tiny_disk("4m")
    deploy(project, hosts, "1.0")
    before = snapshot(bed)
    project.set_version("2.0")
    project.config["hooks"]["build"] = ["head -c 8000000 /dev/zero > filler.bin"]
    project.write(project.config)
    proc = project.fab("deploy", hosts=hosts)
    text = output(proc)
    assert proc.returncode == 1, text
    assert "Traceback" not in text
    assert small.name in text and "build hook" in text, text
    assert_clean(bed, before)


# -- dry run -------------------------------------------------------------------------------------------


def test_dry_run_prints_the_plan_per_host_and_changes_nothing(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    proc = project.fab("deploy", "--dry-run", hosts=hosts)
    assert proc.returncode == 0, output(proc)
    text = proc.stdout
    assert "nothing will be changed" in text
    for name in hosts:
        assert f"== {name} " in text, text  # one plan per host
    for step in ("lock", "upload", "build", "switch", "restart", "finish"):
        assert text.count(step) >= len(hosts), (step, text)
    assert "python3 -m py_compile hello.py" in text and "sh bin/restart 8000" in text  # the hooks it would run
    # with DEPLOYTEST_DEBUG the complete commands of every step are printed as well
    project.env["DEPLOYTEST_DEBUG"] = "1"
    verbose = project.fab("deploy", "--dry-run", hosts=hosts)
    del project.env["DEPLOYTEST_DEBUG"]
    assert verbose.returncode == 0, output(verbose)
    assert "mkdir" in verbose.stdout and "tar -x" in verbose.stdout and "ln -s" in verbose.stdout
    for host in bed.hosts:
        assert host.sh(f"ls -A {DEPLOY_TO} 2>/dev/null").stdout.strip() == "", host.name
        assert not locked(host)


def test_dry_run_after_a_deploy_changes_nothing(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    deploy(project, hosts, "1.0")
    project.set_version("2.0")
    before = snapshot(bed)
    logs = {h.name: h.sh(f"cat {DEPLOY_TO}/.deploytest/log.jsonl").stdout for h in bed.hosts}
    proc = project.fab("deploy", "--dry-run", hosts=hosts)
    assert proc.returncode == 0, output(proc)
    assert_clean(bed, before)
    for host in bed.hosts:
        assert host.sh(f"cat {DEPLOY_TO}/.deploytest/log.jsonl").stdout == logs[host.name]
        assert wait_served(host, "ok 1.0") == "ok 1.0"


def test_two_deploys_started_together_leave_the_hosts_consistent(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    deploy(project, hosts, "1.0")
    project.set_version("2.0")
    # a build that lasts: the two surely overlap, whichever reaches the first host first
    project.config["hooks"]["build"] = ["python3 -m py_compile hello.py", "sleep 2"]
    project.write(project.config)
    runs = [project.start("deploy", hosts=hosts), project.start("deploy", hosts=hosts)]
    outs = [finish(run, 120) for run in runs]
    codes = sorted(run.returncode for run in runs)
    # exactly one wins; the other is refused before changing anything
    assert codes == [0, 2], outs
    for run, out in zip(runs, outs):
        if run.returncode == 2:
            assert "locked by" in out, out
    ids = {live(h) for h in bed.hosts}
    assert len(ids) == 1, ids
    assert_clean(bed)


def test_rollback_with_nothing_to_go_back_to_is_refused(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    verified(project, hosts, "1.0")
    health_only(project)
    before = snapshot(bed)
    proc = project.fab("rollback", hosts=hosts)
    assert proc.returncode == 2, output(proc)
    assert "no previous verified release" in proc.stderr, proc.stderr
    assert_clean(bed, before)
    live_now = live(bed.hosts[0])
    proc = project.fab("rollback", "--to", live_now, hosts=hosts)
    assert proc.returncode == 2, output(proc)
    assert "already live" in proc.stderr, proc.stderr
    assert_clean(bed, before)


def test_rollback_to_a_release_one_host_lacks_changes_no_host(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    verified(project, hosts, "1.0")
    r1 = live(bed.hosts[0])
    verified(project, hosts, "2.0")
    health_only(project)
    gone = bed.hosts[2]
    gone.sh(f"rm -rf {DEPLOY_TO}/releases/{r1} {DEPLOY_TO}/.deploytest/releases/{r1}.*")
    before = snapshot(bed)
    proc = project.fab("rollback", "--to", r1, hosts=hosts)
    assert proc.returncode == 2, output(proc)
    assert f"{gone.name}: release {r1} does not exist" in proc.stderr, proc.stderr
    assert_clean(bed, before)
    for host in bed.hosts:
        assert wait_served(host, "ok 2.0") == "ok 2.0"


@pytest.mark.parametrize("checks", ["health", "version"])
def test_failing_restart_of_the_new_release_switches_every_host_back(three: Dict[str, Any], checks: str) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    deploy(project, hosts, "1.0")
    before = snapshot(bed)
    project.set_version("2.0")  # with "version", a check says /srv/hello/current/VERSION contains 2.0
    if checks == "health":
        health_only(project)
    restart = project.root / "app" / "bin" / "restart"
    restart.write_text("#!/bin/sh\necho 'cannot start: port taken' >&2\nexit 4\n")
    proc = project.fab("deploy", hosts=hosts)
    text = output(proc)
    assert proc.returncode == 1, text
    assert "Traceback" not in text
    assert "restart" in text and "cannot start: port taken" in text, text
    for host in bed.hosts:
        assert link(host) == before[host.name][0], host.name
        assert wait_served(host, "ok 1.0") == "ok 1.0"
        assert not locked(host)
        new = [rid for rid in releases_on(host) if rid not in before[host.name][1]]
        assert all(state_of(host, rid) == "bad" for rid in new), new  # it went live: kept, marked bad
