"""The plan: one description of a rollout that the dry run prints and the run executes."""

from __future__ import annotations

import dataclasses
import io
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deploytest import plan as plans
from deploytest.config import load
from deploytest.console import Console
from deploytest.flow import deploy_and_verify
from deploytest.hosts import LocalTarget
from deploytest.lock import LockOwner
from deploytest.oncall import dry_run
from deploytest.rollout import Rollout
from deploytest.source import Package
from deploytest.state import HostState, ReleaseInfo

PACKAGE = Package(b"x" * 2048, "abc", "directory", "/src", files=3)


def settings(**extra: Any) -> Any:
    data: dict[str, Any] = {
        "deploy_to": "/srv/it's app", "source": "/src", "shared": ["log"],
        "hooks": {"build": ["make"], "restart": ["sh bin/restart"], "stop": ["sh bin/stop"]},
        "checks": [{"port": 8000}], "rollout": {"batches": [1, "100%"]},
    }
    data.update(extra)
    return load(data, base_dir="/")


def states() -> dict[str, HostState]:
    old = ReleaseInfo("20260101000000", "verified", label="1.0")
    return {"web1": HostState("web1", "/srv/it's app", exists=True, releases=(old,), live=old.id),
            "web2": HostState("web2", "/srv/it's app")}


def test_a_plan_has_every_step_of_every_host_and_its_batches() -> None:
    plan = plans.make(settings(), states(), PACKAGE, LockOwner.new(), "20261202000000", verify=True)
    assert [s.name for s in plan.hosts["web1"].steps] == ["lock", "prepare", "switch", "verify", "finish"]
    assert [(s.step, s.hosts, s.kind) for s in plan.stages] == [
        ("prepare", ("web1", "web2"), "all"),
        ("go live", ("web1",), "canary"), ("go live", ("web2",), "batch 2")]
    assert plan.batches == [("web1",), ("web2",)]
    assert "switch back to 20260101000000" in plan.hosts["web1"].on_failure.says[0]
    assert "run the stop hooks" in plan.hosts["web2"].on_failure.says[0]  # a first deploy: nothing to go back to
    for host in plan.hosts.values():
        for step in (*host.steps, host.on_failure):
            if step.script:
                subprocess.run(["sh", "-n", "-c", step.script], check=True)
    assert plan.script("web1", "verify") == ""  # runs here, not on the host


def test_per_batch_prepares_each_batch_before_it_goes_live() -> None:
    plan = plans.make(settings(rollout={"batches": [1, "100%"], "prepare": "per_batch"}), states(), PACKAGE,
                      LockOwner.new(), "20261202000000", verify=False)
    assert [(s.step, s.hosts) for s in plan.stages] == [
        ("prepare", ("web1",)), ("go live", ("web1",)), ("prepare", ("web2",)), ("go live", ("web2",))]
    assert "verify" not in [s.name for s in plan.hosts["web1"].steps]  # a plain deploy
    assert "mark it verified" not in plan.hosts["web1"].step("finish").says[0]


def test_the_dry_run_and_the_run_execute_the_same_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step changed in the plan shows in the dry run's text AND is what runs on the host."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "VERSION").write_text("1.0\n")
    app = tmp_path / "app"
    config = load({"deploy_to": str(app), "source": str(source),
                   "checks": [{"file": {"path": str(app / "current" / "VERSION"), "contains": "1.0"}}],
                   "verify": {"timeout": 2, "interval": 0.2}}, base_dir=str(tmp_path))
    make = plans.make

    def changed(*args: Any, **kwargs: Any) -> plans.Plan:
        plan = make(*args, **kwargs)
        hosts = {}
        for name, host in plan.hosts.items():
            step = host.step("switch")
            marked = dataclasses.replace(step, script=step.script + '\necho planned > "$D/planned-step"\n')
            hosts[name] = dataclasses.replace(host, steps=tuple(marked if s is step else s for s in host.steps))
        return dataclasses.replace(plan, hosts=hosts)

    monkeypatch.setattr(plans, "make", changed)
    monkeypatch.setenv("DEPLOYTEST_DEBUG", "1")
    out = io.StringIO()
    assert dry_run([LocalTarget()], config, Console(out, out), verify=True) == 0
    assert 'echo planned > "$D/planned-step"' in out.getvalue()
    assert not app.exists()  # the dry run changed nothing

    out = io.StringIO()
    run = deploy_and_verify(Rollout(config, [LocalTarget()], Console(out, out)))
    assert run.outcome == "verified", out.getvalue()
    assert (app / "planned-step").read_text() == "planned\n"  # the run executed the plan's script
    assert (app / "current" / "VERSION").read_text() == "1.0\n"
