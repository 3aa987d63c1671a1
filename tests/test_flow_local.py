"""The flow from Python, on the local machine: the failure paths a first deploy and hooks can take."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Dict

import pytest

from deploytest import config as config_module
from deploytest.console import Console
from deploytest.errors import NEEDS_HUMAN, REFUSED, NeedsHuman, Refused, RolledBack
from deploytest.flow import Rollout, deploy_and_verify
from deploytest.hosts import LocalTarget


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
    return {p.stem: json.loads(p.read_text()).get("state", "") for p in meta.glob("*.json")}


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
    assert list(states(tmp_path).values()) == ["bad"]
    assert not (tmp_path / "app" / ".deploytest" / "lock").exists()


def test_failing_restart_hook_rolls_back(tmp_path: Path) -> None:
    good = run(settings_for(tmp_path)).release_id
    # only the new release carries the file that makes its restart fail; the old one restarts fine
    settings = settings_for(tmp_path, hooks={"build": ["touch bad-restart"], "restart": ["test ! -e bad-restart"]})
    with pytest.raises(RolledBack) as info:
        run(settings)
    assert "restart" in info.value.message
    assert current(tmp_path) == good
    assert sorted(states(tmp_path).values()) == ["bad", "complete"]


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
    assert "green before the deploy, red now: data is there" in error.message
    assert "status" in error.next_step
    assert current(tmp_path) == good  # put back all the same, and the lock released
    assert not (tmp_path / "app" / ".deploytest" / "lock").exists()
