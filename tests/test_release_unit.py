"""Pure parts of the release primitives: ids, rollback targets, cleanup selection, script quoting."""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
from datetime import datetime, timezone

import pytest

from deploytest import steps
from deploytest.audit import log_line
from deploytest.config import GitSource, Settings
from deploytest.errors import UsageError
from deploytest.lock import LockInfo, LockOwner
from deploytest.prepare import script_for_prepare
from deploytest.remote import parse_marks
from deploytest.source import GIT, Package, redact_url
from deploytest.state import (
    BAD,
    COMPLETE,
    PREPARING,
    UNKNOWN,
    VERIFIED,
    HostState,
    ReleaseInfo,
    check_release_id,
    cleanup_plan,
    live_id,
    new_release_id,
    parse_state,
    preflight_hint,
    preflight_problem,
    rollback_target,
)

NOW = datetime(2026, 11, 25, 10, 0, 1, tzinfo=timezone.utc)


def state(*releases: tuple[str, str], live: str | None = None, host: str = "web1") -> HostState:
    infos = tuple(ReleaseInfo(rid, st) for rid, st in releases)
    return HostState(host, "/srv/app", True, True, 100, infos, live, "", "link" if live else "none")


# -- ids ---------------------------------------------------------------------------------------


def test_new_release_id_is_utc_timestamp() -> None:
    assert new_release_id([], NOW) == "20261125100001"


def test_new_release_id_converts_to_utc() -> None:
    from datetime import timedelta

    local = NOW.astimezone(timezone(timedelta(hours=5)))
    assert new_release_id([], local) == "20261125100001"


def test_new_release_id_is_greater_than_every_existing_id() -> None:
    assert new_release_id(["20261125100001"], NOW) == "20261125100002"
    assert new_release_id(["20301231235959", "x", "2026"], NOW) == "20301231235960"
    assert new_release_id(["20200101000000"], NOW) == "20261125100001"


HOSTILE = ["../../etc", "x;rm -rf /", "$(id)", "", ".hidden", "a/b", "-rf", "a b", "é", "a\nb", "a\n"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_release_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError) as caught:
        check_release_id(name)
    assert caught.value.exit_code == 2


# -- rollback target ---------------------------------------------------------------------------


def test_rollback_goes_to_newest_verified_release_older_than_live() -> None:
    s = state(("1", VERIFIED), ("2", VERIFIED), ("3", BAD), ("4", PREPARING), ("6", COMPLETE), ("7", COMPLETE),
              live="7")
    assert s.previous == "2"  # 6 was built but never verified live: not a rollback target
    assert rollback_target(s) == "2"


def test_rollback_skips_preparing_unknown_and_unverified() -> None:
    s = state(("1", VERIFIED), ("2", UNKNOWN), ("3", PREPARING), ("4", COMPLETE), ("5", VERIFIED), live="5")
    assert rollback_target(s) == "1"


def test_rollback_without_previous_is_refused_and_names_an_unverified_one() -> None:
    with pytest.raises(UsageError, match="no previous verified release"):
        rollback_target(state(("1", VERIFIED), live="1"))
    with pytest.raises(UsageError, match="1 is older but was never verified live: rollback --to 1 --force"):
        rollback_target(state(("1", COMPLETE), ("2", VERIFIED), live="2"))


@pytest.mark.parametrize("to", ["../../etc", "x;rm -rf /", "$(id)", "1/../2"])
def test_rollback_to_hostile_name_is_refused(to: str) -> None:
    with pytest.raises(UsageError, match="not a release name"):
        rollback_target(state(("1", COMPLETE), ("2", COMPLETE), live="2"), to)


def test_rollback_to_checks_the_release() -> None:
    s = state(("0", COMPLETE), ("1", VERIFIED), ("2", BAD), ("3", PREPARING), ("4", VERIFIED), live="4")
    assert rollback_target(s, "1") == "1"
    for to, words in (("2", "is bad"), ("3", "is preparing"), ("9", "does not exist"), ("4", "already live"),
                      ("0", "never verified live")):
        with pytest.raises(UsageError, match=words):
            rollback_target(s, to)
    assert rollback_target(s, "0", force=True) == "0"  # an unverified target with --force
    with pytest.raises(UsageError, match="is bad"):
        rollback_target(s, "2", force=True)


# -- cleanup selection -------------------------------------------------------------------------


def test_cleanup_keeps_n_good_and_removes_failed_ones() -> None:
    s = state(*[(str(i), COMPLETE) for i in range(10, 17)], ("17", BAD), ("18", PREPARING), live="16")
    assert cleanup_plan(s, 5) == ["10", "11", "17", "18"]


def test_cleanup_failed_releases_do_not_count() -> None:
    # capistrano#2120: failed releases must not push the last good ones out.
    s = state(("10", COMPLETE), ("11", COMPLETE), *[(str(i), BAD) for i in range(12, 20)], live="11")
    assert cleanup_plan(s, 2) == [str(i) for i in range(12, 20)]


def test_cleanup_keeps_live_and_rollback_target_when_old() -> None:
    s = state(("10", VERIFIED), ("11", COMPLETE), ("12", COMPLETE), ("13", COMPLETE), live="11")
    assert cleanup_plan(s, 1) == ["12"]


def test_cleanup_never_touches_unknown_directories() -> None:
    s = state(("10", UNKNOWN), ("11", COMPLETE), live="11")
    assert cleanup_plan(s, 1) == []


def test_cleanup_awk_rule_matches_python_rule() -> None:
    cases = [
        (state(*[(str(i), COMPLETE) for i in range(10, 17)], ("17", BAD), ("18", PREPARING), live="16"), 5),
        (state(("10", COMPLETE), ("11", COMPLETE), ("12", COMPLETE), ("13", COMPLETE), live="11"), 1),
        (state(("10", UNKNOWN), ("11", COMPLETE), ("12", BAD), live="11"), 1),
        (state(("9", COMPLETE), ("10", COMPLETE), ("11", COMPLETE)), 2),
        (state(("a", COMPLETE), ("b", COMPLETE), ("c", COMPLETE), ("d", BAD), live="c"), 1),
        (state(("10", VERIFIED), ("11", COMPLETE), ("12", VERIFIED), ("13", COMPLETE), live="13"), 1),
        (state(("10", VERIFIED), ("11", VERIFIED), ("12", BAD), ("13", VERIFIED), live="11"), 1),
    ]
    for s, keep in cases:
        lines = "".join(f"{r.id} {r.state}\n" for r in s.releases)
        out = subprocess.run(
            ["awk", "-v", f"live={s.live or ''}", "-v", f"keep={keep}", steps.CLEANUP_AWK],
            input=lines, capture_output=True, text=True, check=True, env={"LC_ALL": "C"},
        ).stdout.split()
        assert out == cleanup_plan(s, keep), (s, keep)


# -- parsing and quoting -----------------------------------------------------------------------


def test_parse_state_reads_every_line() -> None:
    settings = Settings(deploy_to="/srv/app")
    lock = [f"@@dt lock\t{line}" for line in LockOwner.new().to_record().splitlines()]
    out = "\n".join([
        "noise", "@@dt exists\t1", "@@dt writable\t0", "@@dt free\t42",
        "@@dt current\tlink\t/srv/app/releases/2", "@@dt release\t1\tunknown\t", "",
        '@@dt release\t2\tverified\t{"state": "complete", "label": "abc", "who": "a@b", "when": "t"}',
        "@@dt release\t3\t", "@@dt meta\tstate=complete", "@@dt meta\tlabel=abc", "@@dt meta\twho=a@b",
        "@@dt release\t../x\t\t", *lock, '@@dt last\t{"event": "deploy"}',
    ])
    s = parse_state("h", settings, out)
    assert (s.exists, s.writable, s.free_mb, s.live) == (True, False, 42, "2")
    assert s.release_ids == ["1", "2", "3"] and s.releases[0].state == UNKNOWN and s.releases[1].label == "abc"
    assert s.releases[1].state == VERIFIED  # the host's marker wins over the metadata's word
    assert s.releases[2].state == COMPLETE and s.releases[2].who == "a@b"
    assert s.lock is not None and s.lock.pid > 0 and s.last_event == {"event": "deploy"}
    assert "cannot write" in (preflight_problem(s, 1) or "")


def test_live_id_accepts_relative_and_absolute_links() -> None:
    settings = Settings(deploy_to="/srv/app")
    assert live_id("/srv/app/releases/20261125100001", settings) == "20261125100001"
    assert live_id("releases/20261125100001/", settings) == "20261125100001"
    assert live_id("/elsewhere", settings) is None


def test_hostile_values_are_quoted_in_scripts() -> None:
    evil = "x'; touch /tmp/pwned; echo '$(id)`id`"
    settings = Settings(deploy_to="/srv/a b$(id)", shared=("data",), build_hooks=("make",))
    pkg = Package(None, evil, GIT, "u", git=GitSource("https://h/r.git; id", "main$(id)"))
    script = script_for_prepare(settings, "20261125100001", pkg, who=evil)
    assert shlex.quote("/srv/a b$(id)") in script
    assert shlex.quote("https://h/r.git; id") in script and shlex.quote("main$(id)") in script
    # the script is valid shell
    subprocess.run(["sh", "-n", "-c", script], check=True)
    with pytest.raises(UsageError):
        steps.script_for_switch(settings, "$(id)")


def test_lock_info_parses_damaged_files() -> None:
    assert LockInfo.parse("garbage").holder == "unknown@unknown (pid 0)"
    owner = LockOwner.new()
    assert LockInfo.parse(owner.to_record()).token == owner.token


def test_log_line_drops_secrets_and_adds_when() -> None:
    line = log_line({"event": "deploy", "sudo_password": "x", "token": "t", "release": "1"})
    assert "password" not in line and '"token"' not in line and '"when"' in line


def test_parse_marks() -> None:
    assert parse_marks("a\n@@dt previous\t/x\n@@dt removed\t1\n@@dt removed\t2\n") == {
        "previous": ["/x"], "removed": ["1", "2"]}


def test_redact_url() -> None:
    assert redact_url("https://bob:s3cret@git.example/r.git") == "https://bob@git.example/r.git"
    assert redact_url("git@github.com:o/r.git") == "git@github.com:o/r.git"


# -- locks that protect a live deploy, hints that work as printed ----------------------------------


def test_a_lock_is_live_while_it_beats_and_stale_after() -> None:
    from deploytest.lock import STALE_AFTER_SECONDS

    far = LockInfo(user="alice", host="elsewhere.example", pid=42, started="2026-11-25T10:00:01Z", age=3)
    assert far.staleness() is None and far.liveness() == "live, last heartbeat 3s ago"
    old = dataclasses.replace(far, age=STALE_AFTER_SECONDS + 1)
    assert old.staleness() == f"no heartbeat for {STALE_AFTER_SECONDS + 1}s"
    assert dataclasses.replace(far, age=3 * 3600).liveness() == "stale: no heartbeat for 3h"


def test_preflight_hints_carry_no_host_on_the_local_machine() -> None:
    lock = LockInfo(user="alice", host="elsewhere.example", pid=42, started="2026-11-25T10:00:01Z", age=500)
    state = HostState("local", "/srv/app", exists=True, writable=True, lock=lock, local=True)
    assert "stale (no heartbeat for 8m)" in (preflight_problem(state, 1) or "")
    assert preflight_hint([state]) == "fab unlock"  # no -H local
    remote = dataclasses.replace(state, host="web1", local=False, lock=dataclasses.replace(lock, age=2))
    other = dataclasses.replace(remote, host="web3")
    assert "another deploy is running" in (preflight_problem(remote, 1) or "")
    assert preflight_hint([remote, other]).endswith("fab -H web1,web3 unlock --force")  # one command
    stale = [dataclasses.replace(h, lock=lock) for h in (remote, other)]
    assert preflight_hint(stale) == "fab -H web1,web3 unlock"
