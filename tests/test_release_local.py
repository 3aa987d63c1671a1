"""Release primitives against the local machine (``LocalTarget``), deploy_to under tmp_path."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest
from counting import CountingTarget

from deploytest import inspection, steps
from deploytest.config import GitSource, Settings
from deploytest.errors import ConfigError, LockHeld, RemoteCommandFailed, UsageError
from deploytest.hosts import LocalTarget
from deploytest.lock import LockOwner, acquire_lock, force_unlock, release_lock
from deploytest.prepare import prepare
from deploytest.records import parse_record
from deploytest.source import check_tarball, pack_source
from deploytest.state import BAD, COMPLETE, PREPARING, VERIFIED, new_release_id, preflight_problem, rollback_target


@pytest.fixture
def target() -> CountingTarget:
    return CountingTarget()


def make_source(root: Path, files: int = 3, version: str = "1") -> Path:
    src = root / "build"
    src.mkdir(parents=True, exist_ok=True)
    (src / "VERSION").write_text(version + "\n")
    (src / "config").mkdir(exist_ok=True)
    (src / "config" / "app.env").write_text("PORT=8000\n")
    for i in range(files):
        (src / f"f{i}.txt").write_text(f"file {i}\n")
    return src


def settings_for(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(deploy_to=str(tmp_path / "srv" / "app"), source="build",
                                base_dir=str(tmp_path), keep_releases=5, shared=("data", "config/app.env"))
    base.update(kw)
    return Settings(**base)


def deploy(target: LocalTarget, settings: Settings, owner: LockOwner, rid: str | None = None) -> str:
    """The whole happy path on one host, the way the rollout drives it."""
    state = inspection.inspect(target, settings)
    rid = rid or new_release_id(state.release_ids)
    package = pack_source(settings)
    acquire_lock(target, settings, owner)
    prepare(target, settings, rid, package, owner.who, build=True)
    steps.switch_and_restart(target, settings, rid)
    steps.finish(target, settings, owner, {"event": "deploy", "release": rid, "outcome": "verified"},
                   first=[steps.script_for_mark_verified(settings, rid)])  # as a green rollout does
    return rid


def live_link(settings: Settings) -> str:
    return os.readlink(settings.current)


# -- the basic cycle ---------------------------------------------------------------------------


def test_prepare_switch_rollback(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path)
    owner = LockOwner.new()
    first = deploy(target, settings, owner)
    (tmp_path / "build" / "VERSION").write_text("2\n")
    second = deploy(target, settings, owner)
    assert first < second
    assert live_link(settings) == f"{settings.releases_dir}/{second}"
    assert Path(settings.current, "VERSION").read_text() == "2\n"

    state = inspection.inspect(target, settings)
    assert state.live == second and state.previous == first and state.lock is None
    assert [r.state for r in state.releases] == [VERIFIED, VERIFIED]
    assert state.releases[1].who == owner.who and len(state.releases[1].label) == 12
    assert state.releases[0].label != state.releases[1].label
    assert state.last_event is not None and state.last_event["release"] == second

    to = rollback_target(state)
    assert steps.switch(target, settings, to) == second
    assert Path(settings.current, "VERSION").read_text() == "1\n"
    assert os.path.isabs(live_link(settings))


def test_a_deploy_is_four_sessions(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path, build_hooks=("true",), restart_hooks=("true",))
    owner = LockOwner.new()
    package = pack_source(settings)
    calls = []
    for step in (
        lambda: inspection.inspect_and_lock(target, settings, owner),
        lambda: prepare(target, settings, "20260101000000", package, owner.who, build=True, owner=owner),
        lambda: steps.switch_and_restart(target, settings, "20260101000000"),
        lambda: steps.finish(target, settings, owner, {"event": "deploy"}),
    ):
        before = target.calls
        step()
        calls.append(target.calls - before)
    assert calls == [1] * 4
    journal = Path(settings.state_dir, "journal")
    assert not journal.exists()  # finish cleared it with the lock


def test_the_journal_is_written_with_the_lock_and_names_the_release_before_it_is_made(
        tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path)
    first = deploy(target, settings, LockOwner.new())
    owner = LockOwner.new()
    state, taken = inspection.inspect_and_lock(target, settings, owner)
    assert taken == "locked" and state.lock is None and state.live == first
    journal = Path(settings.state_dir, "journal")
    header = parse_record(journal.read_text())
    assert (header["rollout"], header["release"], header["previous"]) == (owner.token, "", first)
    assert header["pid"] == str(owner.pid) and header["who"] == owner.who
    assert inspection.inspect(target, settings).journal.release == ""  # type: ignore[union-attr]
    prepare(target, settings, "29990101000000", pack_source(settings), owner.who, build=True,
                    owner=owner)
    named = inspection.inspect(target, settings).journal
    assert named is not None and named.release == "29990101000000" and named.steps == ("prepared",)
    other = LockOwner.new()
    again, held = inspection.inspect_and_lock(target, settings, other)
    assert held == "held" and again.lock is not None and again.lock.token == owner.token
    assert parse_record(journal.read_text())["rollout"] == owner.token  # untouched


def test_prepare_with_build_is_one_session_and_complete(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path, build_hooks=("echo built > BUILT",))
    package = pack_source(settings)
    prepare(target, settings, "1", package, "me", build=True)
    assert target.calls == 1
    state = inspection.inspect(target, settings)
    assert state.releases[0].state == COMPLETE
    assert Path(settings.releases_dir, "1", "BUILT").read_text() == "built\n"


def test_session_count_does_not_grow_with_files(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path / "small", files=10)
    make_source(tmp_path / "big", files=2000)
    for which in ("small", "big"):
        settings = settings_for(tmp_path / which)
        before = target.calls
        prepare(target, settings, "1", pack_source(settings), "me")
        assert target.calls - before == 1
    assert len(os.listdir(tmp_path / "big" / "srv" / "app" / "releases" / "1")) == 2003


# -- keep_releases and cleanup -------------------------------------------------------------------


def test_seven_deploys_keep_five_good(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path, keep_releases=5)
    owner = LockOwner.new()
    ids = [deploy(target, settings, owner) for _ in range(6)]
    assert inspection.inspect(target, settings).release_ids == ids[1:]  # each finish cleaned up
    # the 7th goes live, fails verification and is rolled back: marked bad
    seventh = new_release_id(ids)
    package = pack_source(settings)
    prepare(target, settings, seventh, package, owner.who, build=True)
    previous = steps.switch(target, settings, seventh)
    assert previous == ids[-1]
    steps.switch_back(target, settings, previous, seventh)
    steps.mark_bad(target, settings, seventh)
    # and an interrupted prepare left a preparing release behind
    stale = new_release_id(ids + [seventh])
    prepare(target, settings, stale, package, owner.who)

    state = inspection.inspect(target, settings)
    assert [r.state for r in state.releases][-2:] == [BAD, PREPARING]
    assert rollback_target(state) == ids[-2]
    with pytest.raises(UsageError, match="is bad"):
        rollback_target(state, seventh)
    with pytest.raises(UsageError, match="is preparing"):
        steps.switch(target, settings, stale)

    removed = steps.finish(target, settings, owner, None).removed
    after = inspection.inspect(target, settings)
    assert removed == (seventh, stale)
    assert after.release_ids == ids[1:]
    assert all(r.good for r in after.releases) and len(after.releases) == 5
    assert after.live == ids[-1] and after.previous == ids[-2]
    assert not Path(settings.state_dir, "releases", f"{seventh}.meta").exists()


def test_cleanup_keeps_old_live_and_its_rollback_target(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    owner = LockOwner.new()
    ids = [deploy(target, settings_for(tmp_path), owner) for _ in range(5)]
    settings = settings_for(tmp_path, keep_releases=2)
    steps.switch(target, settings, ids[1])  # rollback --to an old one
    removed = steps.finish(target, settings, owner, None).removed
    assert removed == (ids[2],)
    assert inspection.inspect(target, settings).release_ids == [ids[0], ids[1], ids[3], ids[4]]


def test_remove_release_refuses_the_live_one(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path)
    rid = deploy(target, settings, LockOwner.new())
    with pytest.raises(UsageError, match="is live"):
        steps.remove_release(target, settings, rid)
    assert Path(settings.releases_dir, rid).is_dir()


def test_unknown_directories_are_left_alone(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path, keep_releases=1)
    Path(settings.releases_dir, "handmade").mkdir(parents=True)
    owner = LockOwner.new()
    for _ in range(3):
        deploy(target, settings, owner)
    state = inspection.inspect(target, settings)
    assert "handmade" in state.release_ids and state.release("handmade").state == "unknown"  # type: ignore[union-attr]
    with pytest.raises(UsageError, match="unknown"):
        steps.switch(target, settings, "handmade")


# -- failures ------------------------------------------------------------------------------------


def test_failing_build_hook_leaves_nothing(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path)
    first = deploy(target, settings, LockOwner.new())
    hooks = ("echo compiling", "echo oops >&2; exit 3", "touch never")
    bad = dataclasses.replace(settings, build_hooks=hooks)
    rid = new_release_id([first])
    with pytest.raises(RemoteCommandFailed) as caught:
        prepare(target, bad, rid, pack_source(bad), "me", build=True)
    error = caught.value
    assert error.step == "build hook" and error.exit_code == 1
    assert error.detail.startswith("echo oops >&2; exit 3: exit 3:") and "oops" in error.detail
    assert not Path(settings.releases_dir, rid).exists()
    assert not Path(settings.state_dir, "releases", f"{rid}.meta").exists()
    assert live_link(settings).endswith(first)


def test_failing_build_in_prepare_leaves_nothing(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path, build_hooks=("false",))
    with pytest.raises(RemoteCommandFailed, match="build hook failed: false: exit 1"):
        prepare(target, settings, "1", pack_source(settings), "me", build=True)
    assert os.listdir(settings.releases_dir) == [] and not os.path.lexists(settings.current)


def test_failing_restart_hook_says_where_to_go_back(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path)
    first = deploy(target, settings, LockOwner.new())
    bad = dataclasses.replace(settings, restart_hooks=("echo starting", "exit 7"))
    rid = new_release_id([first])
    prepare(target, bad, rid, pack_source(bad), "me", build=True)
    with pytest.raises(steps.RestartFailed) as caught:
        steps.switch_and_restart(target, bad, rid)
    assert caught.value.previous == first and "exit 7" in caught.value.detail
    steps.switch_back(target, settings, first, rid)
    assert live_link(settings).endswith(first)


def test_switch_back_restarts_the_release_it_goes_back_to_in_the_same_session(
        tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path, restart_hooks=('echo "$DEPLOYTEST_RELEASE" >> "$DEPLOYTEST_SHARED/restarts"',))
    owner = LockOwner.new()
    first = deploy(target, settings, owner)
    rid = new_release_id([first])
    prepare(target, settings, rid, pack_source(settings), "me", build=True)
    steps.switch_and_restart(target, settings, rid)
    before = target.calls
    steps.switch_back(target, settings, first, rid)
    assert target.calls == before + 1
    assert live_link(settings).endswith(first)
    restarts = (tmp_path / "srv" / "app" / "shared" / "restarts").read_text().split()
    assert restarts == [first, rid, first]


def test_finish_runs_a_discard_first_in_the_same_session(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path)
    owner = LockOwner.new()
    first = deploy(target, settings, owner)
    rid = new_release_id([first])
    acquire_lock(target, settings, owner)
    prepare(target, settings, rid, pack_source(settings), "me", build=True)
    before = target.calls
    steps.finish(target, settings, owner, {"event": "deploy", "outcome": "rolled back"}, cleanup=False,
                   first=[steps.script_for_discard(settings, rid, bad=False)])
    assert target.calls == before + 1
    state = inspection.inspect(target, settings)
    assert state.release_ids == [first] and state.lock is None
    # a discard that is refused (the live release) stops the finish: the lock stays, nothing is logged
    acquire_lock(target, settings, owner)
    with pytest.raises(UsageError, match="is live"):
        steps.finish(target, settings, owner, {"event": "deploy", "outcome": "x"}, cleanup=False,
                       first=[steps.script_for_discard(settings, first, bad=False)])
    state = inspection.inspect(target, settings)
    assert state.lock is not None and state.release_ids == [first]
    assert state.last_event is not None and state.last_event.get("outcome") == "rolled back"


def test_switch_back_after_first_deploy_removes_current(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path)
    prepare(target, settings, "1", pack_source(settings), "me", build=True)
    assert steps.switch(target, settings, "1") is None
    steps.switch_back(target, settings, None, "1")
    assert not os.path.lexists(settings.current)


def test_switch_back_leaves_a_host_someone_else_changed(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path)
    owner = LockOwner.new()
    a, b, c = (deploy(target, settings, owner) for _ in range(3))
    with pytest.raises(RemoteCommandFailed, match="current points at"):
        steps.switch_back(target, settings, a, b)
    assert live_link(settings).endswith(c)


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    with pytest.raises(ConfigError, match="source build does not exist.*Nothing was changed"):
        pack_source(settings)


def test_source_file_name_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    with open(os.path.join(os.fsencode(src), b"caf\xe9.txt"), "w") as handle:  # a Latin-1 name
        handle.write("x\n")
    with pytest.raises(ConfigError, match=r"caf\\xe9.txt'?: its name is not UTF-8; rename it. Nothing was changed"):
        pack_source(settings_for(tmp_path))



def test_prepare_refuses_an_existing_release(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path)
    package = pack_source(settings)
    prepare(target, settings, "1", package, "me", build=True)
    with pytest.raises(UsageError, match="already exists"):
        prepare(target, settings, "1", package, "me")
    assert inspection.inspect(target, settings).releases[0].state == COMPLETE


# -- the lock ------------------------------------------------------------------------------------


def test_lock_race_has_exactly_one_winner(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    for _round in range(10):
        owners = [LockOwner.new() for _ in range(4)]
        results: list[str] = []
        barrier = threading.Barrier(len(owners))

        def take(owner: LockOwner, barrier: threading.Barrier = barrier,
                 results: list[str] = results) -> None:
            barrier.wait()
            try:
                acquire_lock(LocalTarget(), settings, owner)
                results.append("won")
            except LockHeld:
                results.append("held")

        threads = [threading.Thread(target=take, args=(o,)) for o in owners]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == ["held", "held", "held", "won"]
        holder = parse_record(Path(settings.state_dir, "lock").read_text())
        winner = next(o for o in owners if o.token == holder["token"])
        others = [o for o in owners if o is not winner]
        assert all(release_lock(LocalTarget(), settings, o) is False for o in others)
        assert Path(settings.state_dir, "lock").exists()
        assert release_lock(LocalTarget(), settings, winner) is True
        assert not Path(settings.state_dir, "lock").exists()
        assert sorted(os.listdir(settings.state_dir)) == []


def test_lock_held_names_the_holder(tmp_path: Path, target: CountingTarget) -> None:
    settings = settings_for(tmp_path)
    alice = dataclasses.replace(LockOwner.new(), user="alice", host="laptop", pid=4242,
                                started="2026-11-25T10:00:01Z")
    acquire_lock(target, settings, alice)
    acquire_lock(target, settings, alice)  # our own lock again: fine
    with pytest.raises(LockHeld) as caught:
        acquire_lock(target, settings, LockOwner.new())
    assert caught.value.exit_code == 2
    assert str(caught.value) == (
        "local: locked by alice@laptop (pid 4242) since 2026-11-25T10:00:01Z; nothing was changed."
        " If that deploy is dead: fab unlock"
    )
    assert inspection.inspect(target, settings).lock.holder == "alice@laptop (pid 4242)"  # type: ignore[union-attr]
    info = force_unlock(target, settings, who="bob@desk", seen=inspection.inspect(target, settings).lock)
    assert info is not None and info.user == "alice"
    assert force_unlock(target, settings) is None
    last = Path(settings.state_dir, "log.jsonl").read_text().splitlines()[-1]
    assert json.loads(last)["holder"].startswith("alice@laptop") and "token" not in last


def test_dead_local_holder_is_pointed_out(tmp_path: Path, target: CountingTarget) -> None:
    settings = settings_for(tmp_path)
    proc = subprocess.Popen(["true"])
    proc.wait()
    ghost = dataclasses.replace(LockOwner.new(), pid=proc.pid)
    acquire_lock(target, settings, ghost)
    with pytest.raises(LockHeld, match="no longer running"):
        acquire_lock(target, settings, LockOwner.new())


def test_finish_cleans_logs_and_unlocks_in_one_session(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path, keep_releases=1)
    owner = LockOwner.new()
    ids = [deploy(target, settings, owner) for _ in range(3)]
    acquire_lock(target, settings, owner)
    before = target.calls
    result = steps.finish(target, settings, owner, {"event": "deploy", "release": ids[-1], "password": "x"})
    assert target.calls - before == 1
    assert result.unlocked and result.removed == ()
    events = [json.loads(line) for line in Path(settings.state_dir, "log.jsonl").read_text().splitlines()]
    assert len(events) == 4 and all("when" in e for e in events) and "password" not in events[-1]
    assert inspection.inspect(target, settings).release_ids == ids[1:]


# -- sources -------------------------------------------------------------------------------------


def test_tarball_source(tmp_path: Path, target: CountingTarget) -> None:
    src = make_source(tmp_path)
    archive = tmp_path / "app-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=".")
    settings = settings_for(tmp_path, source=str(archive))
    package = pack_source(settings)
    assert package.kind == "tarball"
    assert package.label == hashlib.sha256(archive.read_bytes()).hexdigest()[:12]
    rid = deploy(target, settings, LockOwner.new())
    assert Path(settings.releases_dir, rid, "VERSION").read_text() == "1\n"
    assert inspection.inspect(target, settings).releases[0].label == package.label


def test_tarball_escaping_the_release_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "x"
    payload.write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="../../x")
    with pytest.raises(ConfigError, match="outside the release"):
        pack_source(settings_for(tmp_path, source=str(evil)))


def git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@x", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@x")
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout


def test_git_source(tmp_path: Path, target: CountingTarget) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "VERSION").write_text("1\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "one")
    git(repo, "tag", "v1")
    (repo / "VERSION").write_text("2\n")
    git(repo, "commit", "-q", "-am", "two")
    head = git(repo, "rev-parse", "HEAD").strip()
    v1 = git(repo, "rev-parse", "v1^{commit}").strip()

    settings = settings_for(tmp_path, source=GitSource(f"file://{repo}", "main"), shared=())
    package = pack_source(settings)
    assert package.kind == "git" and package.data is None
    assert prepare(target, settings, "1", package, "me", build=True) == head[:12]
    tagged = dataclasses.replace(settings, source=GitSource(str(repo), "v1"))
    assert prepare(target, tagged, "2", pack_source(tagged), "me", build=True) == v1[:12]
    state = inspection.inspect(target, settings)
    assert [(r.label, r.revision) for r in state.releases] == [(head[:12], head), (v1[:12], v1)]
    assert Path(settings.releases_dir, "2", "VERSION").read_text() == "1\n"
    assert not Path(settings.releases_dir, "2", ".git").exists()
    missing = dataclasses.replace(settings, source=GitSource(str(repo), "nope"))
    with pytest.raises(RemoteCommandFailed, match="git checkout failed: ref nope not found"):
        prepare(target, missing, "3", pack_source(missing), "me")
    assert not Path(settings.releases_dir, "3").exists()


# -- shared paths and links ------------------------------------------------------------------------


def test_shared_paths_are_seeded_then_linked(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path, shared=("data", "config/app.env", "log/app.log"))
    owner = LockOwner.new()
    first = deploy(target, settings, owner)
    shared = Path(settings.shared_dir)
    assert (shared / "config" / "app.env").read_text() == "PORT=8000\n"  # seeded from the release
    assert (shared / "data").is_dir() and (shared / "log" / "app.log").is_file()
    (shared / "data" / "db").write_text("keep me")
    (shared / "config" / "app.env").write_text("PORT=9000\n")
    second = deploy(target, settings, owner)
    for rid in (first, second):
        link = Path(settings.releases_dir, rid, "config", "app.env")
        assert link.is_symlink() and os.readlink(link) == f"{settings.shared_dir}/config/app.env"
    assert Path(settings.current, "data", "db").read_text() == "keep me"
    assert Path(settings.current, "config", "app.env").read_text() == "PORT=9000\n"


def test_shared_path_through_a_symlink_out_of_the_release_is_refused(tmp_path: Path,
                                                                     target: CountingTarget) -> None:
    src = make_source(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "app.env").write_text("precious")
    (src / "config" / "app.env").unlink()
    (src / "config").rmdir()
    (src / "config").symlink_to(outside)
    settings = settings_for(tmp_path, shared=("config/app.env",))
    with pytest.raises(ConfigError, match="source symlink 'config' points outside the release"):
        pack_source(settings)  # refused before anything is uploaded
    assert (outside / "app.env").read_text() == "precious"


def test_source_links_that_leave_the_release_are_refused(tmp_path: Path) -> None:
    import io
    import tarfile

    src = make_source(tmp_path)
    (src / "ok").symlink_to("config/app.env")  # inside: fine
    (src / "config" / "up").symlink_to("../VERSION")  # climbs, but stays inside: fine
    settings = settings_for(tmp_path)
    pack_source(settings)
    for bad in ("../../etc/passwd", "/etc/passwd"):
        (src / "evil").unlink(missing_ok=True)
        (src / "evil").symlink_to(bad)
        with pytest.raises(ConfigError, match=f"source symlink 'evil' points outside the release .-> '{bad}'"):
            pack_source(settings)
    for name, target_path, kind in (("h", "/etc/shadow", tarfile.LNKTYPE), ("h", "../x", tarfile.LNKTYPE),
                                    ("s", "../../x", tarfile.SYMTYPE)):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            member = tarfile.TarInfo(name)
            member.type, member.linkname = kind, target_path
            tar.addfile(member)
        with pytest.raises(ConfigError, match="points outside the release"):
            check_tarball(buffer.getvalue())


def test_relative_current_link_from_another_tool_is_understood(tmp_path: Path,
                                                               target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path)
    owner = LockOwner.new()
    a, b = deploy(target, settings, owner), deploy(target, settings, owner)
    os.unlink(settings.current)
    os.symlink(f"releases/{a}", settings.current)  # how some tools link
    assert inspection.inspect(target, settings).live == a
    assert steps.switch(target, settings, b) == a
    assert live_link(settings) == f"{settings.releases_dir}/{b}"  # ours are absolute
    # an absolute link keeps working from anywhere, e.g. when deploy_to is reached through a symlink
    alias = tmp_path / "alias"
    alias.symlink_to(settings.deploy_to)
    assert (alias / "current" / "VERSION").read_text() == "1\n"


def test_current_that_is_a_directory_is_not_replaced(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path)
    Path(settings.current).mkdir(parents=True)
    prepare(target, settings, "1", pack_source(settings), "me", build=True)
    with pytest.raises(RemoteCommandFailed, match="not a symlink"):
        steps.switch(target, settings, "1")
    assert "not a symlink" in (preflight_problem(inspection.inspect(target, settings), 1) or "")


def test_hostile_values_do_not_reach_the_shell(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    marker = tmp_path / "pwned"
    nasty = f"$(touch {marker})`touch {marker}`'\"; touch {marker}"
    deploy_to = str(tmp_path / "srv" / "a b$(touch pwned)")
    settings = settings_for(tmp_path, deploy_to=deploy_to, shared=("da ta;x", "conf/$(x).env"))
    package = dataclasses.replace(pack_source(settings), label=nasty)
    prepare(target, settings, "1", package, who=nasty, build=True)
    steps.switch(target, settings, "1")
    steps.finish(target, settings, LockOwner.new(), {"event": nasty})
    state = inspection.inspect(target, settings)
    assert state.live == "1" and state.releases[0].who == nasty and state.releases[0].label == nasty
    assert state.last_event is not None and state.last_event["event"] == nasty
    assert not marker.exists() and not Path("pwned").exists()
    assert Path(deploy_to, "shared", "da ta;x").is_dir()
    for to in ("../../etc", "x;rm -rf /", "$(id)"):
        with pytest.raises(UsageError):
            rollback_target(state, to)
        with pytest.raises(UsageError):
            steps.switch(target, settings, to)


# -- interrupted steps and sudo ---------------------------------------------------------------------


def test_interrupted_prepare_is_never_live_and_cleaned_up(tmp_path: Path, target: CountingTarget) -> None:
    from deploytest.hosts import CommandTimeout

    make_source(tmp_path)
    settings = settings_for(tmp_path)
    owner = LockOwner.new()
    first = deploy(target, settings, owner)
    slow = dataclasses.replace(settings, build_hooks=("sleep 30",))
    rid = new_release_id([first])
    with pytest.raises(CommandTimeout):  # the step's process group is stopped (TERM, then KILL)
        prepare(target, slow, rid, pack_source(slow), "me", build=True, timeout=1)
    state = inspection.inspect(target, settings)
    if state.release(rid) is not None:  # killed before its own clean-up could run
        assert state.release(rid).state == PREPARING  # type: ignore[union-attr]
        with pytest.raises(UsageError, match="preparing"):
            steps.switch(target, settings, rid)
        with pytest.raises(UsageError, match="preparing"):
            rollback_target(state, rid)
        assert steps.finish(target, settings, owner, None).removed == (rid,)
    assert inspection.inspect(target, settings).release(rid) is None
    assert live_link(settings).endswith(first)


def test_hard_killed_prepare_is_never_live_and_cleaned_up(tmp_path: Path, target: CountingTarget) -> None:
    make_source(tmp_path)
    settings = settings_for(tmp_path)
    owner = LockOwner.new()
    first = deploy(target, settings, owner)
    rid = new_release_id([first])
    # what a power cut leaves: metadata says preparing, the directory is half there
    killer = dataclasses.replace(settings, build_hooks=("kill -KILL 0",))  # the whole step at once
    with pytest.raises(Exception):  # noqa: B017 - the session dies; what it raises does not matter here
        prepare(target, killer, rid, pack_source(killer), "me", build=True, timeout=10)
    state = inspection.inspect(target, settings)
    assert state.release(rid) is not None and state.release(rid).state == PREPARING  # type: ignore[union-attr]
    with pytest.raises(UsageError, match="preparing"):
        steps.switch(target, settings, rid)
    assert steps.finish(target, settings, owner, None).removed == (rid,)
    assert live_link(settings).endswith(first)


FAKE_SUDO = """#!/bin/sh
# stand-in for sudo: -n fails unless FAKE_SUDO_NOPASS=1; -S reads the password from stdin (-k: it
# caches nothing anyway)
nopass=0; ask=0
while [ $# -gt 0 ]; do
  case $1 in -n) nopass=1; shift;; -S) ask=1; shift;; -k) shift;; -p) shift 2;; --) shift; break;; *) break;; esac
done
if [ $nopass = 1 ] && [ "${FAKE_SUDO_NOPASS:-0}" != 1 ]; then
  echo "sudo: a password is required" >&2; exit 1
fi
if [ $ask = 1 ]; then
  IFS= read -r pw; [ "$pw" = sekret ] || { echo "sudo: 1 incorrect password attempt" >&2; exit 1; }
fi
echo "$1" >> "$FAKE_SUDO_LOG"
exec "$@"
"""


@pytest.mark.parametrize("mode", ["password", "nopasswd"])
def test_sudo_keeps_stdin_for_the_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sudo").write_text(FAKE_SUDO)
    (bindir / "sudo").chmod(0o755)
    log = tmp_path / "sudo.log"
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SUDO_LOG", str(log))
    monkeypatch.setenv("FAKE_SUDO_NOPASS", "1" if mode == "nopasswd" else "0")
    make_source(tmp_path, files=50)
    settings = settings_for(tmp_path, sudo=True)
    target = LocalTarget()
    target.sudo_password = "sekret" if mode == "password" else None  # type: ignore[attr-defined]
    deploy(target, settings, LockOwner.new())
    assert Path(settings.current, "f49.txt").read_text() == "file 49\n"
    steps = [line for line in log.read_text().splitlines() if line != "true"]  # "true": sudo -n probes
    assert steps == ["/bin/sh"] * 5  # every session of the deploy went through sudo


def test_wrong_sudo_password_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sudo").write_text(FAKE_SUDO)
    (bindir / "sudo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SUDO_LOG", str(tmp_path / "sudo.log"))
    settings = settings_for(tmp_path, sudo=True)
    target = LocalTarget()
    with pytest.raises(RemoteCommandFailed, match="sudo failed: .*password is required"):
        inspection.inspect(target, settings)
    target.sudo_password = "wrong"  # type: ignore[attr-defined]
    with pytest.raises(RemoteCommandFailed, match="sudo failed: sudo: 1 incorrect password attempt"):
        inspection.inspect(target, settings)


@pytest.mark.testbed  # root (or sudo without a password), as in CI
def test_real_sudo_without_password(tmp_path: Path) -> None:
    if subprocess.run(["sh", "-c", "sudo -n true"], capture_output=True).returncode != 0:
        pytest.fail("this test needs sudo usable without a password (it runs as root in CI)")
    make_source(tmp_path, files=20)
    settings = settings_for(tmp_path, sudo=True, build_hooks=("id -u > UID",))
    rid = deploy(LocalTarget(), settings, LockOwner.new())
    assert Path(settings.releases_dir, rid, "UID").read_text() == "0\n"
    assert Path(settings.current, "f19.txt").read_text() == "file 19\n"
