"""The flow from Python, on the local machine: the failure paths a first deploy and hooks can take."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Dict

import pytest

from deploytest import config as config_module
from deploytest.console import Console
from deploytest.errors import NEEDS_HUMAN, REFUSED, NeedsHuman, Refused, RolledBack
from deploytest.flow import deploy_and_verify
from deploytest.hosts import LocalTarget
from deploytest.records import parse_record
from deploytest.rollout import Rollout


def settings_for(tmp_path: Path, **extra: Any) -> config_module.Settings:
    source = tmp_path / "src"
    source.mkdir(exist_ok=True)
    (source / "VERSION").write_text("1.0\n")
    data: Dict[str, Any] = {
        "deploy_to": str(tmp_path / "app"),
        "source": str(source),
        "checks": [{"file": {"path": str(tmp_path / "app" / "current" / "VERSION"), "contains": "1.0"}}],
        "verify": {"timeout": 1, "interval": 0.2},
    }
    data.update(extra)
    return config_module.load(data, base_dir=str(tmp_path))


def run(settings: config_module.Settings) -> Rollout:
    out = io.StringIO()
    rollout = Rollout(settings, [LocalTarget()], Console(out, out))
    try:
        deploy_and_verify(rollout)
    finally:
        print(out.getvalue())
    return rollout


def current(tmp_path: Path) -> str:
    link = tmp_path / "app" / "current"
    return os.readlink(link).rsplit("/", 1)[-1] if os.path.islink(link) else ""


def states(tmp_path: Path) -> Dict[str, str]:
    meta = tmp_path / "app" / ".deploytest" / "releases"
    states = {p.stem: parse_record(p.read_text()).get("state", "") for p in meta.glob("*.meta")}
    for marker in ("verified", "bad"):  # a marker wins over the metadata, as deploytest reads it
        states.update({p.stem: marker for p in meta.glob(f"*.{marker}") if p.stem in states})
    return states


def test_good_first_deploy(tmp_path: Path) -> None:
    rollout = run(settings_for(tmp_path))
    assert rollout.outcome == "verified"
    assert current(tmp_path) == rollout.release_id
    assert os.path.isabs(os.readlink(tmp_path / "app" / "current"))
    assert not (tmp_path / "app" / ".deploytest" / "lock").exists()


def test_broken_first_deploy_leaves_nothing_live(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, hooks={"build": ["echo 2.0 > VERSION"]})
    with pytest.raises(RolledBack) as info:
        run(settings)
    assert info.value.exit_code == 1
    assert current(tmp_path) == ""  # there was nothing before: nothing is live now, not a bad release
    assert states(tmp_path) == {}  # no restart hook ran, nothing was started: the release is removed
    assert "first deploy failed: nothing to roll back to;" in info.value.message
    assert "removed on local (no restart hook had started it); locks released." in info.value.message
    assert "verified" not in info.value.message
    assert not (tmp_path / "app" / ".deploytest" / "lock").exists()


def test_broken_first_deploy_is_stopped_by_the_stop_hook(tmp_path: Path) -> None:
    marker = tmp_path / "stopped-in"
    settings = settings_for(tmp_path, hooks={"build": ["echo 2.0 > VERSION"], "restart": ["touch started"],
                                              "stop": [f"pwd > {marker}"]})
    with pytest.raises(RolledBack) as info:
        run(settings)
    rid = info.value.message.split()[2]
    assert info.value.exit_code == 1
    assert f"first deploy failed: nothing to roll back to; {rid} stopped and removed on local" in info.value.message
    assert marker.read_text().strip() == str(tmp_path / "app" / "releases" / rid)  # ran in the failed release
    assert current(tmp_path) == "" and states(tmp_path) == {}
    assert not (tmp_path / "app" / "releases" / rid).exists()
    assert not (tmp_path / "app" / ".deploytest" / "lock").exists()


def test_broken_first_deploy_without_a_stop_hook_needs_a_human(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, hooks={"build": ["echo 2.0 > VERSION"], "restart": ["touch started"]})
    with pytest.raises(NeedsHuman) as info:
        run(settings)
    assert info.value.exit_code == NEEDS_HUMAN
    rid = info.value.message.split()[3]
    assert "nothing to roll back to, and no hooks.stop" in info.value.message
    assert "(touch started)" in info.value.message and f"releases/{rid} may still run on local" in info.value.message
    assert "add hooks.stop" in info.value.next_step and "fab status" in info.value.next_step
    assert "-H" not in info.value.next_step  # a local run's hint carries no -H local
    assert current(tmp_path) == "" and states(tmp_path) == {rid: "bad"}  # kept: it may still run from there
    assert not (tmp_path / "app" / ".deploytest" / "lock").exists()


def test_failing_restart_hook_rolls_back(tmp_path: Path) -> None:
    good = run(settings_for(tmp_path)).release_id
    # only the new release carries the file that makes its restart fail; the old one restarts fine
    settings = settings_for(tmp_path, hooks={"build": ["touch bad-restart"], "restart": ["test ! -e bad-restart"]})
    with pytest.raises(RolledBack) as info:
        run(settings)
    assert "restart" in info.value.message
    assert current(tmp_path) == good
    assert sorted(states(tmp_path).values()) == ["bad", "verified"]


def test_failing_build_hook_changes_nothing_live(tmp_path: Path) -> None:
    good = run(settings_for(tmp_path)).release_id
    with pytest.raises(RolledBack) as info:
        run(settings_for(tmp_path, hooks={"build": ["echo compiling; exit 3"]}))
    assert "build hook" in info.value.message and "exit 3" in info.value.message
    assert current(tmp_path) == good
    assert sorted(os.listdir(tmp_path / "app" / "releases")) == [good]  # the half-built one is gone


def test_lock_held_refuses(tmp_path: Path) -> None:
    run(settings_for(tmp_path))
    lock = tmp_path / "app" / ".deploytest" / "lock"
    lock.write_text(json.dumps({"user": "alice", "host": "laptop", "pid": 1, "started": "2026-11-25T10:00:01Z",
                                "token": "0" * 32}))
    with pytest.raises(Refused) as info:
        run(settings_for(tmp_path))
    assert info.value.exit_code == REFUSED
    assert "locked by alice@laptop" in info.value.message
    assert lock.exists()  # someone else's lock is never removed


def test_missing_source_refuses_before_anything(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, source=str(tmp_path / "nope"))
    with pytest.raises(Refused) as info:
        run(settings)
    assert "does not exist" in info.value.message
    assert not (tmp_path / "app").exists()


def test_needs_human_is_exit_3() -> None:
    assert NeedsHuman("x").exit_code == NEEDS_HUMAN


def test_a_verify_step_of_ones_own(tmp_path: Path) -> None:
    """A project composes the same flow around its own Python verify step (deploytest.assertions)."""
    from deploytest.assertions import assert_file
    from deploytest.verifiers import python_verifier

    seen: list = []

    def version_is_live(target: Any) -> None:
        seen.append(target.name)
        assert_file(target, str(tmp_path / "app" / "current" / "VERSION"), contains="2.0")

    settings = settings_for(tmp_path, checks=[])
    out = io.StringIO()
    rollout = Rollout(settings, [LocalTarget()], Console(out, out), verifier=python_verifier(version_is_live))
    with pytest.raises(RolledBack):
        deploy_and_verify(rollout)
    assert seen and "version is live" in out.getvalue()
    assert "expected" in out.getvalue() and "2.0" in out.getvalue()
    assert current(tmp_path) == ""


def test_a_rollback_that_does_not_come_back_green_needs_a_human(tmp_path: Path) -> None:
    """The new release breaks shared state: going back does not make the baseline green again."""
    marker = str(tmp_path / "app" / "shared" / "data" / "ok")
    checks = [{"file": {"path": marker, "name": "data is there"}}]
    run(settings_for(tmp_path, shared=["data"], hooks={"build": ["touch data/ok"]}, checks=checks))
    good = current(tmp_path)
    breaking = settings_for(
        tmp_path, shared=["data"], hooks={"build": ["rm -f data/ok"]},
        checks=checks + [{"file": {"path": str(tmp_path / "app" / "current" / "VERSION"), "contains": "2.0"}}],
    )
    with pytest.raises(NeedsHuman) as info:
        run(breaking)
    error = info.value
    assert error.exit_code == NEEDS_HUMAN
    assert error.hosts == ["local"]
    assert f"red with the suite recorded with {good}: data is there" in error.message
    assert "status" in error.next_step
    assert current(tmp_path) == good  # put back all the same, and the lock released
    assert not (tmp_path / "app" / ".deploytest" / "lock").exists()


# -- verify steps of one's own, locks kept fresh -------------------------------------------------------


def test_python_verify_functions_each_get_their_own_window_and_errors_are_red(tmp_path: Path) -> None:
    from deploytest.config import VerifySettings
    from deploytest.verifiers import python_verifier

    first_call: Dict[str, float] = {}

    def never(target: Any) -> None:
        raise AssertionError("never green")

    def slow_to_start(target: Any) -> None:
        first_call.setdefault("t", time.monotonic())
        assert time.monotonic() - first_call["t"] >= 0.5, "not yet"

    def broken(target: Any) -> None:
        raise ValueError("boom")

    report = python_verifier(never, slow_to_start, broken)([LocalTarget()], VerifySettings(1.0, 0.1), [])
    (host,) = report.hosts
    assert host.error is None  # a broken verify step is red, not a lost host
    verdicts = {r.name: (r.ok, r.verdict.observed) for r in host.results}
    assert verdicts["never"] == (False, "never green")
    assert verdicts["slow to start"] == (True, "passed")  # its window started when it did, not with "never"
    assert verdicts["broken"] == (False, "raised ValueError: boom")


def test_the_heartbeat_renews_the_runs_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deploytest import flow
    from deploytest import rollout as rollouts

    monkeypatch.setattr(rollouts, "HEARTBEAT_SECONDS", 0.2)
    settings = settings_for(tmp_path)
    out = io.StringIO()
    rollout = Rollout(settings, [LocalTarget()], Console(out, out))
    flow.preflight(rollout)
    lock = tmp_path / "app" / ".deploytest" / "lock"
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    with rollouts.Heartbeat(rollout):
        deadline = time.monotonic() + 10
        while time.time() - lock.stat().st_mtime > 60 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert time.time() - lock.stat().st_mtime < 60
    rollouts.release_locks(rollout, rollout.locked)
    assert not lock.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root")
def test_a_lock_that_cannot_be_released_is_exit_3_naming_the_host(tmp_path: Path) -> None:
    state = tmp_path / "app" / ".deploytest"
    # after the switch, the state directory turns read-only: finish cannot remove the lock
    ro = f"mount --bind {state} {state} && mount -o remount,ro,bind {state}"
    try:
        with pytest.raises(NeedsHuman) as info:
            run(settings_for(tmp_path, hooks={"restart": [ro]}))
    finally:
        subprocess.run(["umount", str(state)], check=False)
    assert info.value.exit_code == NEEDS_HUMAN and info.value.hosts == ["local"]
    assert "could not finish on local: its lock there is kept" in info.value.message
    assert "fab unlock" in info.value.next_step and "-H" not in info.value.next_step


def test_what_a_host_prints_cannot_drive_the_terminal(tmp_path: Path) -> None:
    from deploytest.console import neutral

    out, err = io.StringIO(), io.StringIO()
    console = Console(out, err)
    console.host("web1", "build", "\x1b[2J\x1b[31mboom\r\x07 done")
    console.error("deploytest: web1: build hook failed: \x1b]0;owned\x07 exit 1")
    assert "\x1b" not in out.getvalue() + err.getvalue() and "\x07" not in err.getvalue()
    assert "^[[2J^[[31mboom^M^G done" in out.getvalue()
    assert neutral("tab\tand\nnewline stay") == "tab\tand\nnewline stay"
    # a failing hook's own words reach the operator neutralised, through the flow's error
    settings = settings_for(tmp_path, hooks={"build": ["printf '\\033[2Jwiped\\n'; exit 1"]})
    with pytest.raises(RolledBack) as info:
        run(settings)
    shown = io.StringIO()
    Console(shown, shown).error(info.value.render())
    assert "^[[2Jwiped" in shown.getvalue() and "\x1b" not in shown.getvalue()


class _CutsThePreflightShort(LocalTarget):
    """The local machine, whose first preflight answer comes back without the inspection's lines (as
    a session that stopped reading early once did), though its script ran whole: the lock taken."""

    def __init__(self) -> None:
        super().__init__()
        self.cut = False

    def run(self, script: str, *, stdin: bytes | None = None, timeout: float | None = None,
            reply: Any = None) -> Any:
        result = super().run(script, stdin=stdin, timeout=timeout, reply=reply)
        if not self.cut and "@@dt writable" in result.stdout and "@@dt locked" in result.stdout:
            self.cut = True
            return dataclasses.replace(result, stdout=result.stdout[:result.stdout.index("@@dt exists")])
        return result


def test_a_preflight_answer_that_came_back_incomplete_refuses_and_leaves_no_lock(tmp_path: Path) -> None:
    run(settings_for(tmp_path))  # something live: the preflight takes the lock in its own session
    settings = settings_for(tmp_path)
    out = io.StringIO()
    with pytest.raises(Refused) as info:
        deploy_and_verify(Rollout(settings, [_CutsThePreflightShort()], Console(out, out)))
    assert info.value.exit_code == REFUSED
    assert "the host's state came back incomplete" in info.value.message, out.getvalue()
    state = tmp_path / "app" / ".deploytest"
    assert not (state / "lock").exists() and not (state / "journal").exists()  # taken, then given back
