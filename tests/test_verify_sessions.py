"""A verify counts its round trips: one session per host per attempt, the audit line in the last one,
and the baseline's probes in the preflight's session."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from counting import CountingTarget

from deploytest.audit import log_line
from deploytest.checks import parse_checks
from deploytest.checks.attempt import Probes
from deploytest.checks.runner import Audit, HostReport, run_checks
from deploytest.config import Settings, VerifySettings
from deploytest.inspection import lock_then_probe, probe_and_inspect
from deploytest.lock import LockOwner
from deploytest.steps import script_for_answered_log


def audit(settings: Settings, alone: list[str]) -> Audit:
    return Audit(script_for_answered_log(settings),
                 lambda host: (log_line({"event": "verify", "ok": host.ok}) + "\n").encode(),
                 lambda target, host: alone.append(target.name))


def log(settings: Settings) -> list[dict[str, Any]]:
    path = Path(settings.state_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_audit_line_goes_in_the_last_attempts_session(tmp_path: Path) -> None:
    settings = Settings(deploy_to=str(tmp_path / "app"))
    Path(settings.state_dir).mkdir(parents=True)
    counter = tmp_path / "n"
    # red on the first attempt, green on the second
    checks = parse_checks([{"command": {"run": f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter};"
                                               f" test $n -ge 1"}}])
    target, alone = CountingTarget(), []
    report = run_checks([target], checks, VerifySettings(timeout=20, interval=0.2), audit=audit(settings, alone))
    assert report.ok and target.calls == 2 and alone == []  # two attempts, two sessions, nothing more
    assert [e["ok"] for e in log(settings)] == [True]  # logged once, with the final verdict

    red = parse_checks([{"command": {"run": "false"}}])
    target = CountingTarget()
    report = run_checks([target], red, VerifySettings(timeout=0, interval=0.2), audit=audit(settings, alone))
    assert not report.ok and target.calls == 1 and alone == []
    assert [e["ok"] for e in log(settings)] == [True, False]


def test_an_audit_the_session_could_not_carry_is_logged_alone(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(deploy_to=str(tmp_path / "app"))
    checks = parse_checks([{"command": {"run": "true"}}])
    target, alone = CountingTarget(), []
    # a host whose probes cannot run (no usable temporary directory): the script ends before its frames
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))
    report = run_checks([target], checks, VerifySettings(timeout=0, interval=0.2), audit=audit(settings, alone))
    assert not report.ok and alone == ["local"]  # logged in a session of its own


def test_the_baseline_probes_go_with_the_preflights_inspection(tmp_path: Path) -> None:
    deploy_to = tmp_path / "app"
    (deploy_to / "releases" / "1").mkdir(parents=True)
    (deploy_to / "releases" / "1" / "VERSION").write_text("1.0\n")
    settings = Settings(deploy_to=str(deploy_to))
    checks = parse_checks([{"file": {"path": str(deploy_to / "current" / "VERSION"), "contains": "1.0"}},
                           {"command": {"run": "echo '@@dt locked'; echo '@@dt fail\tx\ty'"}}])
    probes = Probes.of(checks, [10.0, 10.0])
    target = CountingTarget()
    state, taken, probed = probe_and_inspect(target, settings, LockOwner.new(), probes)
    assert probed is None and target.calls == 1  # nothing live: no probe ran

    (deploy_to / "current").symlink_to(deploy_to / "releases" / "1")
    (deploy_to / "current" / "x").touch()
    state, taken, probed = probe_and_inspect(target, settings, LockOwner.new(), probes)
    assert target.calls == 2 and probed is not None and state.live == "1"
    # a probe's output cannot pass for the inspection's own lines: its "@@dt locked" is not read (a
    # release without metadata is no rollback target, so the lock waits: deferred), its "@@dt fail"
    # failed nothing
    assert taken == "deferred"
    report = run_checks([target], checks, VerifySettings(timeout=0, interval=0.2), first={"local": probed})
    assert target.calls == 2, "the baseline opened a session of its own"
    host: HostReport = report.hosts[0]
    assert [r.ok for r in host.results] == [True, True] and host.sessions == 0


def test_the_first_hosts_lock_is_told_before_its_baseline_probes_end(tmp_path: Path) -> None:
    # The first host's preflight takes its lock, says so, then runs the baseline's probes, in one
    # session: the other hosts go on once its lock is decided, not once its probes are done.
    deploy_to = tmp_path / "app"
    (deploy_to / "releases" / "1").mkdir(parents=True)
    (deploy_to / "current").symlink_to(deploy_to / "releases" / "1")
    settings = Settings(deploy_to=str(deploy_to))
    state_dir = Path(settings.state_dir)
    state_dir.mkdir()
    # green only where the lock was already taken when the probe looked
    checks = parse_checks([{"command": {"run": f"test -f {state_dir / 'lock'} && sleep 2"}}])
    probes = Probes.of(checks, [10.0])
    heard: list[tuple[str, float]] = []
    target = CountingTarget()
    state, taken, probed = lock_then_probe(target, settings, LockOwner.new(), probes,
                                           lambda outcome: heard.append((outcome, time.monotonic())))
    ended = time.monotonic()
    assert target.calls == 1 and taken == "locked" and state.live == "1" and state.lock is None
    assert [outcome for outcome, _ in heard] == ["locked"] and ended - heard[0][1] > 1.5  # told, then probed
    assert probed is not None and probed[0].exit_code == 0

    heard.clear()  # another deploy holds it now: told so
    state, taken, _ = lock_then_probe(target, settings, LockOwner.new(), probes,
                                      lambda outcome: heard.append((outcome, time.monotonic())))
    assert taken == "held" and [outcome for outcome, _ in heard] == ["held"] and state.lock is not None

    first = tmp_path / "new"  # a first deploy: the lock waits until every host passed; nothing is live
    state, taken, probed = lock_then_probe(target, Settings(deploy_to=str(first)), LockOwner.new(), probes,
                                           lambda outcome: heard.append((outcome, 0.0)))
    assert taken == "deferred" and heard[-1] == ("deferred", 0.0) and probed is None and not first.exists()
