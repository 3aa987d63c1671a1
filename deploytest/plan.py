"""A rollout's plan: what it will do on each host, step by step, with the shell text of every step.

``--dry-run`` prints a plan; ``deploy`` and ``deploy-and-verify`` execute the same plan object (see
:mod:`deploytest.flow`): the scripts the run sends to a host are the ones the plan holds, and the
stages it goes through (prepare, then each batch live) are the plan's. A step changed here shows in
both at once.

The plan is made once the hosts have been read (the preflight): the release id and what is live on
each host come from there. Its pieces are pure data, made without a host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from . import inspection
from . import steps as step_scripts
from .checks.attempt import Probes
from .checks.runner import first_limits
from .config import Settings, VerifySettings, plan_batches
from .lock import LockOwner
from .prepare import script_for_prepare
from .shell import chain
from .source import Package
from .state import HostState, cleanup_plan

#: The steps a host goes through, in order; ``verify`` runs on this machine, the others on the host.
STEPS = ("lock", "prepare", "switch", "verify", "finish")


@dataclass(frozen=True)
class Step:
    """One step on one host: what it does, in words (``says``), and the shell text it runs there in
    one session (``script``; empty for a step that runs on this machine)."""

    name: str
    says: tuple[str, ...]
    script: str = ""


@dataclass(frozen=True)
class HostPlan:
    """One host's steps, and how it is put back when the rollout fails (``on_failure``)."""

    host: str
    live: Optional[str]
    steps: tuple[Step, ...]
    on_failure: Step

    def step(self, name: str) -> Step:
        """The step called ``name``.

        :raises KeyError: this host's plan has no such step (a plain deploy has no ``verify``).
        """
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"{self.host} has no step {name!r}")


@dataclass(frozen=True)
class Stage:
    """A stage of the rollout: one step on a group of hosts at once (``number``: the batch, 1 first)."""

    step: str
    hosts: tuple[str, ...]
    number: int = 1
    of: int = 1  # batches in the rollout

    @property
    def kind(self) -> str:
        """``canary`` (the first of several batches), ``batch 2``, or ``all`` (one batch)."""
        if self.of == 1:
            return "all"
        return "canary" if self.number == 1 else f"batch {self.number}"


@dataclass(frozen=True)
class Plan:
    """What a rollout of ``release_id`` does, host by host and stage by stage."""

    release_id: str
    package: Package
    verify: bool
    hosts: Mapping[str, HostPlan]
    stages: tuple[Stage, ...]

    def script(self, host: str, step: str) -> str:
        """The shell text of ``step`` on ``host``."""
        return self.hosts[host].step(step).script

    @property
    def batches(self) -> list[tuple[str, ...]]:
        """The hosts of each batch, in the order they go live."""
        return [stage.hosts for stage in self.stages if stage.step == "go live"]


def baseline_probes(settings: Settings, *, own_verifier: bool = False) -> Optional[Probes]:
    """The probes of the baseline's one look at what is live, sent with the preflight's inspection
    (one round trip for both); None when the baseline needs a session of its own: a verifier of one's
    own, pytest tests, sudo (probes run as the login user), or no check that probes the host."""
    remote = [c for c in settings.checks if not c.local]
    if own_verifier or settings.tests is not None or settings.sudo or not remote:
        return None
    return Probes.of(remote, first_limits(remote, VerifySettings(0, settings.verify.interval)))


def make(settings: Settings, states: Mapping[str, HostState], package: Package, owner: LockOwner,
         release_id: str, *, verify: bool, tests: Sequence[str] = (), records_suite: bool = True,
         baseline: Optional[Probes] = None) -> Plan:
    """The plan of a deploy (``verify`` False) or a deploy-and-verify of ``package`` as ``release_id``
    to the hosts of ``states`` (in rollout order), as ``owner``.

    :param tests: the ids of the pytest tests that will run, if any (for the words of ``verify``).
    :param records_suite: a verified release gets the suite it was verified with beside it (not when
        the run verifies with a verifier of its own, which has no suite to record).
    :param baseline: the baseline's probes, when they go with the preflight's inspection and lock
        (see :func:`baseline_probes`).
    """
    names = list(states)
    hosts = {name: _host_plan(settings, state, package, owner, release_id, verify=verify, tests=tests,
                              records_suite=records_suite, baseline=baseline)
             for name, state in states.items()}
    batches = [tuple(batch) for batch in plan_batches(names, settings.rollout.batches)]
    stages: list[Stage] = []
    if settings.rollout.prepare != "per_batch":
        stages.append(Stage("prepare", tuple(names)))
    for number, batch in enumerate(batches, 1):
        if settings.rollout.prepare == "per_batch":  # a failed canary then costs one upload, not one per host
            stages.append(Stage("prepare", batch, number))
        stages.append(Stage("go live", batch, number, len(batches)))
    return Plan(release_id, package, verify, hosts, tuple(stages))


def _host_plan(settings: Settings, state: HostState, package: Package, owner: LockOwner,
               release_id: str, *, verify: bool, tests: Sequence[str], records_suite: bool,
               baseline: Optional[Probes]) -> HostPlan:
    base = f"{settings.releases_dir}/{release_id}"
    live = state.live
    if baseline is not None:
        steps = [Step("lock", (f"lock      {settings.state_dir}/lock, in one session with the baseline:"
                               f" {len(baseline.jobs)} checks against what is live",),
                      inspection.script_for_probe_and_inspect(settings, owner, baseline))]
    else:
        steps = [Step("lock", (f"lock      {settings.state_dir}/lock",),
                      inspection.script_for_inspect_and_lock(settings, owner))]
    says = [f"upload    {package.files} files ({package.size // 1024 + 1} KB) as one archive into {base}"
            if package.data is not None else f"clone     {package.origin} at {package.label} into {base}"]
    says += [f"share     {base}/{path} -> {settings.shared_dir}/{path}" for path in settings.shared]
    says += [f"build     (in {base}) {hook}" for hook in settings.build_hooks]
    steps.append(Step("prepare", tuple(says),
                      script_for_prepare(settings, release_id, package, owner.who, build=True, owner=owner)))
    says = [f"switch    {settings.current} -> {base}"]
    says += [f"restart   (in {settings.current}) {hook}" for hook in settings.restart_hooks]
    steps.append(Step("switch", tuple(says), step_scripts.script_for_switch_and_restart(settings, release_id)))
    if verify and (settings.checks or settings.tests is not None):
        what = [f"{len(settings.checks)} checks, one command per attempt"] if settings.checks else []
        what += [f"{len(tests)} pytest tests on the open connection"] if tests else []
        steps.append(Step("verify", (f"verify    {' and '.join(what) or 'the tests'}, up to"
                                     f" {settings.verify.timeout:g}s",)))
    removed = cleanup_plan(state, settings.keep_releases)
    first = [step_scripts.script_for_mark_verified(settings, release_id)] if verify else []
    if verify and records_suite:  # the suite it was verified with goes beside it: a rollback to it is judged by it
        first.append(step_scripts.script_for_record_suite(settings, release_id, settings.suite))
    finish = chain(*first, step_scripts.script_for_finish(settings, owner, logs=True, cleanup=True))
    marks = "mark it verified, record its suite, " if records_suite else "mark it verified, "
    steps.append(Step("finish", (f"finish    {marks if verify else ''}"
                                 f"keep {settings.keep_releases} good releases"
                                 f"{' (remove ' + ', '.join(removed) + ')' if removed else ''}, log, unlock",),
                      finish))
    if live:
        back = (f"on failure: switch back to {live}" + (", restart there" if settings.restart_hooks else "")
                + f", mark {release_id} bad, unlock")
    elif settings.stop_hooks:
        back = f"on failure: nothing to go back to: run the stop hooks, remove current and {release_id}, unlock"
    elif settings.restart_hooks:
        back = (f"on failure: nothing to go back to: remove current, keep {release_id} marked bad (no"
                " hooks.stop: what the restart hooks started may still run), unlock")
    else:
        back = f"on failure: nothing to go back to: remove current and {release_id}, unlock"
    on_failure = Step("rollback", (back,),
                      step_scripts.script_for_switch_back(settings, live, release_id))
    return HostPlan(state.host, live, tuple(steps), on_failure)


def describe(plan: Plan, states: Mapping[str, HostState], *,
             scripts: bool = False) -> list[tuple[str, str]]:
    """The dry run's words for ``plan``, as ``(kind, text)``: kind ``stage`` for each host's heading,
    ``line`` for the rest: the rollout's stages, then each host's steps (with ``scripts``, the
    complete shell text of each as well)."""
    task = "deploy-and-verify" if plan.verify else "deploy"
    out = [("line", "rollout:  " + "; ".join(_stage_words(stage) for stage in plan.stages))]
    for name, host in plan.hosts.items():
        out.append(("stage", f"{name} (live: {states[name].live or 'nothing'}): {task} would"))
        for number, step in enumerate(host.steps, 1):
            out.append(("line", f"  {number:2}. {step.says[0]}"))
            out += [("line", f"      {more}") for more in step.says[1:]]
        out += [("line", f"      {say}") for say in host.on_failure.says]
        if scripts:
            for step in (*host.steps, host.on_failure):
                if step.script:
                    out += [("line", f"# --- {name}: {step.name} ---"), ("line", step.script.rstrip())]
    return out


def _stage_words(stage: Stage) -> str:
    hosts = ", ".join(stage.hosts) if len(stage.hosts) <= 5 else f"{', '.join(stage.hosts[:5])} and" \
        f" {len(stage.hosts) - 5} more"
    if stage.step == "prepare":
        return f"prepare {hosts}"
    return f"{stage.kind} live: {hosts}"
