"""A fleet (more hosts than ``rollout.parallel``): a host's connection closes once its batch is done, so no
thread per host outlives its batch, and its lock says how long it stays live without a heartbeat."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

import pytest

from deploytest.config import load
from deploytest.console import Console
from deploytest.flow import deploy_and_verify
from deploytest.lock import PARKED_LEASE_SECONDS, STALE_AFTER_SECONDS, LockInfo
from deploytest.rollout import Rollout
from deploytest.ssh import targets_for
from deploytest.verifiers import python_verifier

pytestmark = pytest.mark.testbed

DEPLOY_TO = "/srv/fleet"


def _rollout(bed: Any, tmp_path: Path, parallel: int, seen: list[dict[str, Any]]) -> Rollout:
    source = tmp_path / "app"
    source.mkdir()
    (source / "VERSION").write_text("2.0\n")
    settings = load({"deploy_to": DEPLOY_TO, "source": str(source), "checks": [],
                     "rollout": {"batches": [1, 1, "100%"], "parallel": parallel}}, base_dir=str(tmp_path))
    targets = targets_for([h.name for h in bed.hosts], bed.fabric_config())
    by_name = {h.name: h for h in bed.hosts}

    def observe(target: Any) -> None:
        """Verifying ``target``'s batch: which connections are open, and what the other hosts' locks say."""
        locks = {}
        for name, host in by_name.items():
            text = host.sh(f"cat {DEPLOY_TO}/.deploytest/lock 2>/dev/null").stdout
            locks[name] = LockInfo.parse(text) if text else None
        seen.append({"batch_of": target.name, "open": {t.name for t in targets if t.connection.is_connected},
                     "locks": locks})

    return Rollout(settings, targets, Console(io.StringIO(), io.StringIO()), verifier=python_verifier(observe))


def test_a_fleet_closes_each_batchs_connections_and_its_locks_carry_a_lease(
        make_hosts: Callable[..., Any], tmp_path: Path) -> None:
    bed = make_hosts(3, prefix="fl")
    seen: list[dict[str, Any]] = []
    run = _rollout(bed, tmp_path, 2, seen)  # 3 hosts, 2 at a time: a fleet
    assert run.parks
    deploy_and_verify(run)
    assert run.outcome == "verified"
    order = [s["batch_of"] for s in seen]
    assert sorted(order) == ["fl1", "fl2", "fl3"]
    for done, observed in enumerate(seen):
        earlier = set(order[:done])
        assert observed["batch_of"] in observed["open"]
        assert not earlier & observed["open"], f"batch {done + 1}: still open: {earlier & observed['open']}"
        for name, lock in observed["locks"].items():
            assert lock is not None and lock.lease == PARKED_LEASE_SECONDS, (name, lock)
            assert lock.staleness() is None
    assert not any(t.connection.is_connected for t in run.targets)  # closed after their finish, too
    for host in bed.hosts:  # every host on the new release, no lock left
        assert host.sh(f"cat {DEPLOY_TO}/current/VERSION").stdout == "2.0\n"
        assert host.sh(f"test -e {DEPLOY_TO}/.deploytest/lock").returncode == 1


def test_a_small_rollout_keeps_its_connections_and_the_usual_heartbeat(
        make_hosts: Callable[..., Any], tmp_path: Path) -> None:
    bed = make_hosts(3, prefix="fs")
    seen: list[dict[str, Any]] = []
    run = _rollout(bed, tmp_path, 10, seen)
    assert not run.parks
    deploy_and_verify(run)
    assert run.outcome == "verified"
    assert seen[-1]["open"] == {"fs1", "fs2", "fs3"}
    assert all(lock is not None and lock.lease == 0 for lock in seen[-1]["locks"].values())


def test_a_lease_keeps_a_lock_live_past_the_usual_staleness() -> None:
    owner = LockInfo("alice", "elsewhere", 42, "2026-12-02T08:00:00Z", token="t" * 32, lease=600)
    text = (f"user=alice\nhost=elsewhere\npid=42\nstarted=2026-12-02T08:00:00Z\ntoken={'t' * 32}\n"
            "release=\nlease=600\n")
    parsed = LockInfo.parse(text, age=STALE_AFTER_SECONDS + 200)
    assert parsed.lease == owner.lease == 600
    assert parsed.staleness() is None
    assert LockInfo.parse(text, age=601).staleness() == "no heartbeat for 10m"
    assert LockInfo.parse(text.replace("lease=600\n", ""), age=STALE_AFTER_SECONDS + 1).staleness()


def test_a_parked_hosts_lock_is_renewed_before_its_lease_runs_out(make_hosts: Callable[..., Any], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from deploytest import rollout

    monkeypatch.setattr(rollout, "HEARTBEAT_SECONDS", 0.2)
    monkeypatch.setattr(rollout, "PARKED_LEASE_SECONDS", 1.0)  # parked hosts renewed every half second or so
    bed = make_hosts(3, prefix="fr")
    ages: list[int] = []
    seen: list[dict[str, Any]] = []
    run = _rollout(bed, tmp_path, 2, seen)
    first = bed.hosts[0]

    def slow_last_batch(target: Any) -> None:
        if target.name == "fr3":
            time.sleep(3)  # fr1 has been parked all this time
            age = first.sh(f"echo $(( $(date +%s) - $(stat -c %Y {DEPLOY_TO}/.deploytest/lock) ))").stdout
            ages.append(int(age))

    run.verifier = python_verifier(slow_last_batch)
    deploy_and_verify(run)
    assert run.outcome == "verified"
    assert ages and ages[0] <= 1, ages  # renewed while parked (it would be 3 s old otherwise)
    assert not any(t.connection.is_connected for t in run.targets)
