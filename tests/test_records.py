"""The host state format: what Python writes the shell reads back and the reverse, whatever a value holds;
and a host deployed by an earlier deploytest (one-line JSON files) keeps its rollback targets and locks."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import testbed

from deploytest import inspection, records, shell, steps
from deploytest.config import Settings
from deploytest.hosts import LocalTarget
from deploytest.lock import (
    Journal,
    LockInfo,
    LockOwner,
    acquire_lock,
    force_unlock,
    release_lock,
    script_for_clear_journal,
)
from deploytest.remote import run_script
from deploytest.ssh import SSHTarget, connect
from deploytest.state import BAD, COMPLETE, VERIFIED, rollback_target

HOSTILE = [
    "", "plain", "it's", 'say "hi"', "$(touch /tmp/dt-pwned)", "`id`", "${HOME}", "a\\b", "\\", "\\\\n",
    "\\c stops printf %b", "\\0101", "line\nbreak", "trailing newline\n", "\n\nleading", "tab\there", "cr\r\n",
    "key=value=more", "ünïcödé ✓ 日本", "\x01\x1f\x7f", "-n", "%s%d%%", "a;b|c&d>e<f*g?h[i]", " spaced ",
]

SH = "sh"  # /bin/sh: dash on Debian, as on most hosts deploytest reaches


def run_sh(body: str, values: dict[str, object], tmp_path: Path) -> str:
    text = shell.script(Settings(deploy_to=str(tmp_path / "app")), body, values)
    result = subprocess.run([SH, "-c", text], capture_output=True, check=True)
    return result.stdout.decode()


@pytest.mark.parametrize("value", HOSTILE)
def test_python_encodes_and_decodes_every_value(value: str) -> None:
    encoded = records.encode(value)
    assert "\n" not in encoded and "\t" not in encoded and "\r" not in encoded
    assert records.decode(encoded) == value
    assert records.parse_record(records.format_record({"k": value, "other": "x"})) == {"k": value, "other": "x"}


def test_what_python_writes_the_shell_reads(tmp_path: Path) -> None:
    path = tmp_path / "record"
    for value in HOSTILE:
        path.write_text(records.format_record({"token": "t", "who": value, "release": "r"}))
        out = run_sh('dt_get "$file" who; printf "|"; dt_get "$file" release', {"file": path}, tmp_path)
        assert out == value + "|r", repr(value)


def test_what_the_shell_writes_python_reads(tmp_path: Path) -> None:
    path = tmp_path / "record"
    for value in HOSTILE:
        run_sh('{ dt_put who "$v"; dt_put state complete; } > "$file"', {"v": value, "file": path}, tmp_path)
        assert records.parse_record(path.read_text()) == {"who": value, "state": "complete"}, repr(value)
        # and the shell reads its own writing back
        assert run_sh('dt_get "$file" who', {"file": path}, tmp_path) == value


def test_the_last_line_of_a_key_wins_on_both_sides(tmp_path: Path) -> None:
    path = tmp_path / "record"
    path.write_text("state=preparing\nlabel=a=b\nstate=complete\n")
    assert records.parse_record(path.read_text()) == {"state": "complete", "label": "a=b"}
    assert run_sh('dt_get "$file" state; dt_get "$file" label', {"file": path}, tmp_path) == "completea=b"
    assert run_sh('dt_get "$file" missing', {"file": path}, tmp_path) == ""


def test_lock_and_journal_with_hostile_values_round_trip() -> None:
    for value in HOSTILE:
        owner = LockOwner(user=value, host=value, pid=42, started=value, token="ab" * 16, release=value)
        parsed = LockInfo.parse(owner.to_record())
        assert (parsed.user, parsed.host, parsed.pid, parsed.started, parsed.token, parsed.release) == \
            (value, value, 42, value, "ab" * 16, value)
        journal = Journal("ab" * 16, value, 7, value, "20261125100001", None, value)
        assert Journal.parse(journal.to_record() + "step=prepared\nstep=switched\n") == \
            Journal("ab" * 16, value, 7, value, "20261125100001", None, value, ("prepared", "switched"))


# -- a host deployed by the earlier deploytest (one line of JSON per file) --------------------------


def legacy_host(deploy_to: Path, token: str) -> None:
    """Releases 1 (verified), 2 (verified, live before 3), 3 (complete, live), 4 (bad), a lock and a
    journal as the earlier deploytest wrote them: json.dumps with its default separators."""
    meta = deploy_to / ".deploytest" / "releases"
    meta.mkdir(parents=True)
    for rid, state in (("1", COMPLETE), ("2", COMPLETE), ("3", COMPLETE), ("4", COMPLETE)):
        (deploy_to / "releases" / rid).mkdir(parents=True)
        (meta / f"{rid}.json").write_text(json.dumps(
            {"id": rid, "kind": "directory", "label": f"label {rid}", "state": state, "when": "t", "who": "old@box"},
            sort_keys=True) + "\n")
    for rid, marker in (("1", VERIFIED), ("2", VERIFIED), ("4", BAD)):
        (meta / f"{rid}.{marker}").touch()
    os.symlink(str(deploy_to / "releases" / "3"), deploy_to / "current")
    lock = {"host": "elsewhere.example", "pid": 42, "release": "3", "started": "2026-01-01T00:00:00Z",
            "token": token, "user": "old"}
    (deploy_to / ".deploytest" / "lock").write_text(json.dumps(lock, sort_keys=True) + "\n")
    journal = {"host": "elsewhere.example", "pid": 42, "previous": "2", "release": "3", "rollout": token,
               "started": "2026-01-01T00:00:00Z", "who": "old@elsewhere.example"}
    (deploy_to / ".deploytest" / "journal").write_text(
        json.dumps(journal, sort_keys=True) + '\n{"step": "prepared"}\n{"step": "switched"}\n')


def test_a_host_of_the_earlier_format_keeps_its_rollback_targets_and_journal(tmp_path: Path) -> None:
    settings = Settings(deploy_to=str(tmp_path / "app"))
    legacy_host(tmp_path / "app", "c" * 32)
    state = inspection.inspect(LocalTarget(), settings)
    assert [(r.id, r.state, r.label, r.who) for r in state.releases] == [
        ("1", VERIFIED, "label 1", "old@box"), ("2", VERIFIED, "label 2", "old@box"),
        ("3", COMPLETE, "label 3", "old@box"), ("4", BAD, "label 4", "old@box")]
    assert state.live == "3" and rollback_target(state) == "2"
    assert state.lock is not None and state.lock.token == "c" * 32
    assert state.lock.holder == "old@elsewhere.example (pid 42)"
    assert state.journal == Journal("c" * 32, "old@elsewhere.example", 42, "elsewhere.example", "3", "2",
                                    "2026-01-01T00:00:00Z", ("prepared", "switched"))
    # the shell reads the old files' states too (a switch to a verified release of the old format works)
    assert steps.switch(LocalTarget(), settings, "2") == "3"
    with pytest.raises(Exception, match="bad"):
        steps.switch(LocalTarget(), settings, "4")


def test_a_lock_and_journal_of_the_earlier_format_are_released_by_their_token(tmp_path: Path) -> None:
    settings = Settings(deploy_to=str(tmp_path / "app"))
    state_dir = tmp_path / "app" / ".deploytest"
    legacy_host(tmp_path / "app", "c" * 32)
    owner = LockOwner(user="old", host="elsewhere.example", pid=42, started="x", token="c" * 32)
    other = LockOwner.new()
    assert release_lock(LocalTarget(), settings, other) is False  # not its lock: left alone
    assert (state_dir / "lock").exists() and (state_dir / "journal").exists()
    assert release_lock(LocalTarget(), settings, owner) is True
    assert not (state_dir / "lock").exists() and not (state_dir / "journal").exists()

    legacy_host(tmp_path / "again", "d" * 32)
    again = Settings(deploy_to=str(tmp_path / "again"))
    seen = inspection.inspect(LocalTarget(), again).lock
    assert seen is not None
    removed = force_unlock(LocalTarget(), again, "me@here", seen=seen)
    assert removed is not None and (removed.user, removed.token, removed.release) == ("old", "d" * 32, "3")
    assert not (tmp_path / "again" / ".deploytest" / "lock").exists()
    run_script(LocalTarget(), again, script_for_clear_journal(again, "e" * 32), "clear")
    assert (tmp_path / "again" / ".deploytest" / "journal").exists()  # another rollout's: kept
    run_script(LocalTarget(), again, script_for_clear_journal(again, "d" * 32), "clear")
    assert not (tmp_path / "again" / ".deploytest" / "journal").exists()


def test_a_dead_rollout_of_the_earlier_format_is_taken_over(tmp_path: Path) -> None:
    settings = Settings(deploy_to=str(tmp_path / "app"))
    legacy_host(tmp_path / "app", "c" * 32)
    owner = LockOwner.new()
    acquire_lock(LocalTarget(), settings, owner, journal=Journal.begin(owner, "", "3"), takeover="c" * 32)
    state = inspection.inspect(LocalTarget(), settings)
    assert state.lock is not None and state.lock.token == owner.token
    assert state.journal is not None and state.journal.rollout == owner.token and state.journal.previous == "3"


# -- over a real sshd ----------------------------------------------------------------------------


@pytest.mark.testbed
def test_hostile_values_round_trip_over_ssh(ssh_host: testbed.TestBed) -> None:
    settings = Settings(deploy_to="/srv/it's \"a\" $(x) app")
    target = connect(ssh_host.names[0], ssh_host.fabric_config())
    assert isinstance(target, SSHTarget)
    try:
        value = "al'ice \"$(touch /tmp/dt-pwned)\" `id` \\ back\\nslash\nnew line\ttab = ünïcödé"
        owner = LockOwner(user=value, host=value, pid=4242, started=value, token="ab" * 16, release=value)
        acquire_lock(target, settings, owner, journal=Journal.begin(owner, "20261125100001", None))
        state = inspection.inspect(target, settings)
        assert state.lock is not None and (state.lock.user, state.lock.host, state.lock.started) == \
            (value, value, value)
        assert state.journal is not None and state.journal.who == f"{value}@{value}"
        # the shell writes, Python reads
        body = 'dt_put who "$v" > "$S/probe"; dt_show probe "$S/probe"; dt_get "$S/probe" who > "$S/probe.raw"\n'
        _result, marks = run_script(target, settings, shell.script(settings, body, {"v": value}), "probe")
        assert records.parse_record("\n".join(marks["probe"])) == {"who": value}
        raw = ssh_host.hosts[0].sh("cat \"/srv/it's \\\"a\\\" \\$(x) app/.deploytest/probe.raw\"").stdout
        assert raw == value
        assert ssh_host.hosts[0].sh("test -e /tmp/dt-pwned").returncode != 0
        assert release_lock(target, settings, owner) is True
    finally:
        target.close()



def test_cleanup_on_a_host_of_the_earlier_format_removes_old_releases_and_their_metadata(tmp_path: Path) -> None:
    settings = Settings(deploy_to=str(tmp_path / "app"), keep_releases=1)
    legacy_host(tmp_path / "app", "c" * 32)
    owner = LockOwner(user="old", host="elsewhere.example", pid=42, started="x", token="c" * 32)
    done = steps.finish(LocalTarget(), settings, owner, {"event": "deploy", "release": "3"})
    # kept: the live release (3) and the rollback target (2); removed: the older verified one and the bad one
    assert done.removed == ("1", "4") and done.unlocked
    meta = tmp_path / "app" / ".deploytest" / "releases"
    assert sorted(p.name for p in meta.iterdir()) == ["2.json", "2.verified", "3.json"]
    assert sorted(os.listdir(tmp_path / "app" / "releases")) == ["2", "3"]
