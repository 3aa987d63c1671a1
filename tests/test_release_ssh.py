"""Release primitives against real OpenSSH servers (the test bed in tests/testbed.py)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
import testbed

from deploytest import inspection, steps
from deploytest.config import Settings
from deploytest.errors import LockHeld, RemoteCommandFailed
from deploytest.hosts import in_parallel
from deploytest.lock import LockOwner, acquire_lock, release_lock
from deploytest.prepare import prepare
from deploytest.source import pack_source
from deploytest.ssh import SSHTarget, connect
from deploytest.state import new_release_id

pytestmark = pytest.mark.testbed

MakeHosts = Callable[..., testbed.TestBed]


def make_source(root: Path, files: int, size: int = 16) -> Path:
    src = root / "build"
    src.mkdir(parents=True, exist_ok=True)
    (src / "VERSION").write_text("1\n")
    for i in range(files):
        (src / f"f{i:05d}.txt").write_bytes(os.urandom(size))
    return src


def settings_for(root: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(deploy_to="/srv/app", source="build", base_dir=str(root), keep_releases=3,
                                shared=("data",), build_hooks=("test -f VERSION",),
                                restart_hooks=("echo restarted > $DEPLOYTEST_SHARED/data/restarted",))
    base.update(kw)
    return Settings(**base)


def targets(bed: testbed.TestBed) -> list[SSHTarget]:
    return [connect(name, bed.fabric_config()) for name in bed.names]


def close(all_targets: list[SSHTarget]) -> None:
    for target in all_targets:
        target.close()


def test_rollout_on_three_hosts_uses_one_release_id(make_hosts: MakeHosts, tmp_path: Path) -> None:
    bed = make_hosts(3)
    make_source(tmp_path, 5)
    settings = settings_for(tmp_path)
    hosts = targets(bed)
    owner = LockOwner.new()
    package = pack_source(settings)
    try:
        # an older release on web2 only: the new id must still be newer on every host
        prepare(hosts[1], settings, "20990101000000", package, "earlier", build=True)
        before = {h.name: h.sessions() for h in bed.hosts}
        states = dict(in_parallel(hosts, lambda t: inspection.inspect(t, settings)))
        rid = new_release_id(i for s in states.values() for i in s.release_ids)  # type: ignore[union-attr]
        assert rid == "20990101000001"

        def roll(target: SSHTarget) -> str | None:
            acquire_lock(target, settings, owner)
            prepare(target, settings, rid, package, owner.who, build=True)
            previous = steps.switch_and_restart(target, settings, rid).previous
            event = {"event": "deploy", "release": rid, "outcome": "deployed"}
            steps.finish(target, settings, owner, event)
            return previous

        results = dict(in_parallel(hosts, roll))
        assert all(r is None for r in results.values()), results
    finally:
        close(hosts)
    for host in bed.hosts:
        assert host.wait_sessions(before[host.name] + 5) == before[host.name] + 5  # inspect + 4 steps
        assert host.sh("readlink /srv/app/current").stdout == f"/srv/app/releases/{rid}\n"
        assert host.sh("cat /srv/app/current/data/restarted").stdout == "restarted\n"
        assert host.sh("test -f /srv/app/.deploytest/lock || echo free").stdout == "free\n"
        assert f'"release": "{rid}"' in host.sh("tail -n 1 /srv/app/.deploytest/log.jsonl").stdout


def test_prepare_sessions_do_not_grow_with_file_count(make_hosts: MakeHosts, tmp_path: Path) -> None:
    bed = make_hosts(1)
    host = bed.hosts[0]
    (target,) = targets(bed)
    counts = {}
    try:
        for files in (10, 2000):
            root = tmp_path / str(files)
            make_source(root, files)
            settings = settings_for(root, deploy_to=f"/srv/app{files}", build_hooks=())
            package = pack_source(settings)
            before = host.sessions()
            prepare(target, settings, "1", package, "me")
            counts[files] = host.wait_sessions(before + 1) - before
            listed = host.sh(f"ls /srv/app{files}/releases/1 | wc -l").stdout.strip()
            assert listed == str(files + 2)  # the files, VERSION, the data link
    finally:
        target.close()
    assert counts == {10: 1, 2000: 1}


def test_disk_full_during_upload(make_hosts: MakeHosts, tmp_path: Path) -> None:
    bed = make_hosts(1)
    host = bed.hosts[0]
    host.tiny_disk("3m")
    make_source(tmp_path / "small", 2)
    make_source(tmp_path / "big", 6, size=1024 * 1024)  # 6 MB of random bytes: gzip cannot shrink them
    small, big = settings_for(tmp_path / "small"), settings_for(tmp_path / "big")
    (target,) = targets(bed)
    try:
        prepare(target, small, "1", pack_source(small), "me", build=True)
        steps.switch(target, small, "1")
        with pytest.raises(RemoteCommandFailed) as caught:
            prepare(target, big, "2", pack_source(big), "me", build=True)
        error = caught.value
        assert error.step == "upload" and error.exit_code == 1
        assert "no space left on device under /srv/app" in error.detail
        assert "release 2 was removed and current was not changed" in error.detail
        state = inspection.inspect(target, small)  # the connection is fine afterwards
        # with the disk completely full, finish still releases the lock (the log line is a warning)
        owner = LockOwner.new()
        acquire_lock(target, small, owner)
        host.sh("dd if=/dev/zero of=/srv/fill bs=64k; dd if=/dev/zero of=/srv/fill2 bs=1")
        result = steps.finish(target, small, owner, {"event": "deploy", "outcome": "failed"})
        assert result.unlocked and any("cannot write" in w for w in result.warnings), result
    finally:
        target.close()
    assert state.release_ids == ["1"] and state.live == "1"
    assert host.sh("ls /srv/app/releases; ls /srv/app/.deploytest/releases").stdout == "1\n1.meta\n"
    assert host.sh("readlink /srv/app/current").stdout == "/srv/app/releases/1\n"


def test_lock_race_over_ssh(make_hosts: MakeHosts, tmp_path: Path) -> None:
    bed = make_hosts(1)
    settings = settings_for(tmp_path)
    owners = [LockOwner.new() for _ in range(3)]
    conns = [connect(bed.names[0], bed.fabric_config()) for _ in owners]
    results: list[str] = []
    barrier = threading.Barrier(len(owners))

    def take(pair: tuple[SSHTarget, LockOwner]) -> None:
        target, owner = pair
        target.open()
        barrier.wait()
        try:
            acquire_lock(target, settings, owner)
            results.append("won")
        except LockHeld as error:
            assert f"{target.name}: locked by " in error.message
            assert f"fab -H {target.name} unlock" in error.message
            results.append("held")

    try:
        outcome = in_parallel(list(zip(conns, owners)), take)
        assert all(not isinstance(r, BaseException) for _, r in outcome), outcome
        assert sorted(results) == ["held", "held", "won"]
        released = [release_lock(c, settings, o) for c, o in zip(conns, owners)]
        assert released.count(True) == 1
    finally:
        close(conns)
