"""The red-green flow: one coordinated rollout across all hosts that verifies and heals itself.

Read :func:`deploy_and_verify` first: it is the whole flow, one named stage per line, like
Capistrano's ``starting, updating, publishing, finishing, failed``. Every stage works on all hosts in
parallel (bounded by ``rollout.parallel``) and records what it changed in :class:`Rollout`, so that
:func:`roll_back` knows exactly which hosts to put back, whatever went wrong and wherever.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, TypeVar

from . import analysis, gates, notify, steps
from . import plan as plans
from .checks.attempt import Probes
from .checks.base import ProbeOutput
from .checks.runner import HostReport, VerifyReport, run_checks
from .config import Settings, VerifySettings, with_suite
from .console import Console
from .errors import (
    ChecksFailed,
    ConfigError,
    DeploytestError,
    HostKeyError,
    HostUnreachable,
    NeedsHuman,
    Refused,
    RolledBack,
    UsageError,
    fab_command,
)
from .hosts import Target, in_parallel
from .lock import HEARTBEAT_SECONDS, Journal, LockOwner, acquire_lock, heartbeat, release_lock
from .prepare import run_prepare
from .report_text import explain, result_line
from .source import Package, pack_source
from .state import HostState, new_release_id, preflight_hint, preflight_problem
from .verifiers import Verifier, suite_verifier

T = TypeVar("T")


@dataclass
class Rollout:
    """What one run knows and has changed so far, host by host."""

    settings: Settings
    targets: list[Target]
    console: Console
    owner: LockOwner = field(default_factory=LockOwner.new)
    states: dict[str, HostState] = field(default_factory=dict)
    locked: list[str] = field(default_factory=list)
    release_id: str = ""
    package: Optional[Package] = None
    switched: dict[str, Optional[str]] = field(default_factory=dict)  # host -> release it left
    failed: dict[str, str] = field(default_factory=dict)  # host -> why
    lost: set[str] = field(default_factory=set)  # hosts that stopped answering: state unknown
    baseline: Optional[VerifyReport] = None
    after: Optional[VerifyReport] = None
    rollback_report: Optional[VerifyReport] = None
    outcome: str = "pending"
    started: float = field(default_factory=time.monotonic)
    verifier: Optional[Verifier] = None  # default: the configured checks
    verifying: bool = True  # False for a plain deploy
    tolerated: list[str] = field(default_factory=list)  # failed within max_fail, put back on their own
    touched: set[str] = field(default_factory=set)  # hosts the new release went live on, even for a moment
    suites: dict[str, Optional[str]] = field(default_factory=dict)  # host -> suite of the release it went back to
    stopped: list[str] = field(default_factory=list)  # first deploy failed: its stop hooks ran there
    unstopped: list[str] = field(default_factory=list)  # first deploy failed, no stop hook: it may still run
    tests: list[str] = field(default_factory=list)  # ids of the pytest tests collected
    plan: Optional[plans.Plan] = None  # made once the preflight has read every host
    baseline_probes: Optional[Probes] = None  # the baseline's probes, sent with the preflight's inspection
    probed: dict[str, list[ProbeOutput]] = field(default_factory=dict)  # their outputs, by host
    notifier: Optional[Any] = None  # notify: the webhooks told of started/done/rolled_back (deploytest.notify)
    background: Optional[Any] = None  # rollout.analysis: background (deploytest.gates.Background)

    def fab(self, task: str, hosts: Sequence[str]) -> str:
        """The command an operator types to run ``task`` on ``hosts`` of this run."""
        return fab_command(task, hosts, local=all(t.is_local for t in self.pick(hosts)))

    @property
    def verifies(self) -> bool:
        """True when there is something to verify (configured checks or tests, or a verifier of one's own)."""
        return self.verifier is not None or bool(self.settings.checks) or self.settings.tests is not None

    def verify(self, names: Sequence[str], settings: VerifySettings, only: Sequence[str] = ()) -> VerifyReport:
        """Verify the named hosts now (checks and tests limited to ``only`` when given)."""
        verifier = self.verifier or suite_verifier(self.settings, parallel=self.settings.rollout.parallel)
        return verifier(self.pick(names), settings, list(only))

    @property
    def names(self) -> list[str]:
        """Host names, in the order given."""
        return [t.name for t in self.targets]

    def pick(self, names: Sequence[str]) -> list[Target]:
        """The targets named, in rollout order."""
        wanted = set(names)
        return [t for t in self.targets if t.name in wanted]

    def each(self, names: Sequence[str], step: str, fn: Callable[[Target], T]) -> dict[str, T]:
        """Run ``fn`` on the named hosts in parallel; results of the hosts that succeeded.

        A host that fails is recorded in ``failed`` with the step and the reason.
        """
        ok: dict[str, T] = {}
        picked = self.pick(names)
        done = [0]
        lock = threading.Lock()

        def counted(target: Target) -> T:
            try:
                return fn(target)
            finally:
                with lock:
                    done[0] += 1
                    self.console.progress(step, done[0], len(picked))

        for target, result in in_parallel(picked, counted, limit=self.settings.rollout.parallel):
            if isinstance(result, BaseException):
                if isinstance(result, HostUnreachable):
                    self.lost.add(target.name)
                reason = _reason(result).removeprefix(f"{target.name}: ")
                self.failed.setdefault(target.name, f"{step}: {reason}")
                self.console.host(target.name, step, reason, "red")
            else:
                ok[target.name] = result
        return ok


# -- the flow ------------------------------------------------------------------------------------


def deploy_and_verify(run: Rollout, *, verify: bool = True) -> Rollout:
    """Preflight, baseline, prepare, then switch + restart + verify batch by batch; heal on failure.

    :param verify: False for a plain ``deploy`` (switch and restart, no checks).
    :raises Refused: preflight failed; nothing changed anywhere (exit 2).
    :raises RolledBack: a step failed and every switched host is back and verified (exit 1).
    :raises NeedsHuman: a rollback failed or a host's state is unknown (exit 3).
    """
    run.verifying = verify
    run.package = pack_source(run.settings)
    if verify:
        collect_tests(run)
    run.baseline_probes = plans.baseline_probes(run.settings, own_verifier=run.verifier is not None) \
        if verify else None
    preflight(run, baseline=verify)
    run.plan = plans.make(run.settings, run.states, run.package, run.owner, run.release_id,
                          verify=verify and run.verifies, tests=run.tests, records_suite=run.verifier is None,
                          baseline=run.baseline_probes)
    if run.notifier is not None:
        run.notifier.event("started", notify.started_body(run))
    with Heartbeat(run):
        try:
            if verify:
                record_baseline(run)
            for stage in run.plan.stages:  # prepare, then each batch live (prepare per batch if so set)
                if stage.step == "prepare":
                    prepare(run, stage.hosts)
                else:
                    go_live(run, stage, verify=verify)
                    gates.after_batch(run, list(stage.hosts), stage.number, stage.of)  # soak, confirm, analysis
        except BaseException as error:  # a red check, a failing hook, a lost host, Ctrl-C
            roll_back(run, error)
        finish(run)
    return run


def preflight(run: Rollout, *, lock: bool = True, resolving: bool = False, baseline: bool = False) -> None:
    """Every host reachable with a known key, config sane, disk room, then every lock taken (with the
    rollout's journal, written before anything else changes on a host).

    Any failure releases the locks already taken: nothing has changed anywhere (exit 2).

    :param resolving: a rollback that may undo an interrupted rollout (its journal and dead lock are
        then no refusal).
    :param baseline: the checks' one look at what is live goes with each host's inspection (see
        :func:`record_baseline`), where it can.
    """
    console, settings = run.console, run.settings
    console.set_hosts(run.names)
    console.stage(f"preflight ({len(run.targets)} host{'s' if len(run.targets) != 1 else ''})")
    need_mb = settings.min_free_mb + _package_mb(run.package)
    refused: list[HostState] = []
    key_steps: list[str] = []
    taking = [lock]  # the lock goes with the inspection (one round trip) while the first host's was won
    guard = threading.Lock()
    deferred: list[str] = []  # first deploys: locked once every host passed, so a refusal leaves them as they were
    probes = run.baseline_probes if baseline else None

    def check(target: Target) -> HostState:
        try:
            target.open()
        except HostKeyError as error:
            key_steps.append(f"{target.name}: {error.next_step}")
            raise
        taken = ""
        if probes is not None:  # the baseline's look goes with the inspection: one round trip
            state, taken, probed = steps.probe_and_inspect(target, settings, run.owner if taking[0] else None,
                                                           probes)
            if probed is not None:
                with guard:
                    run.probed[target.name] = probed
        elif taking[0]:
            state, taken = steps.inspect_and_lock(target, settings, run.owner)
        else:
            state = steps.inspect(target, settings)
        if taken in ("locked", "deferred"):
            with guard:
                (run.locked if taken == "locked" else deferred).append(target.name)
        problem = preflight_problem(state, need_mb, resolving=resolving)
        if problem is None and taken == "held" and state.lock is not None:
            problem = f"locked by {state.lock.describe()}: another deploy took it just now"
        elif problem is None and taken not in ("", "locked", "held", "deferred"):
            problem = taken
        if problem:
            refused.append(state)
            raise Refused(f"{target.name}: {problem}")
        return state

    try:
        # The first host in name order goes alone: two deploys racing for the same hosts meet at its
        # lock, so exactly one of them goes on to lock the rest (in parallel).
        first, *rest = sorted(run.names)
        run.states = run.each([first], "preflight", check)
        taking[0] = lock and first in run.locked and first not in run.failed
        run.states.update(run.each(rest, "preflight", check))
        if lock and not run.failed and first not in run.locked:
            # a first deploy on the first host: every lock once every host passed, first host first
            _lock(run, [first])
            if not run.failed:
                _lock(run, [n for n in rest if n not in run.locked])
        elif lock and not run.failed:
            _lock(run, deferred)
    except KeyboardInterrupt:
        run.failed.setdefault("local", "interrupted")
    hints = [preflight_hint(sorted(refused, key=lambda s: s.host)), *key_steps]
    _refuse_if_failed(run, "; ".join(h for h in hints if h))
    run.states = {n: run.states[n] for n in run.names}  # in the order given
    run.release_id = new_release_id(
        rid for state in run.states.values() for rid in state.release_ids
    )
    run.owner = dataclasses.replace(run.owner, release=run.release_id)
    for name, state in run.states.items():
        live = state.live or "nothing live yet"
        console.host(name, "preflight", f"ok (live: {live}, {state.free_mb} MB free)")


def collect_tests(run: Rollout) -> None:
    """The configured pytest tests collect on this machine (else exit 2, nothing changed), and their
    files go with the suite recorded with the release."""
    tests = run.settings.tests
    if tests is None or run.verifier is not None:
        return
    from .pytest_suite import collect
    from .suite_files import snapshot

    run.tests = ids = collect(run.settings)
    run.settings = snapshot(run.settings)
    run.console.stage(f"tests: {len(ids)} collected from {', '.join(tests.paths)}")


def take_locks(run: Rollout, *, names: Optional[Sequence[str]] = None,
               takeover: Optional[dict[str, str]] = None) -> None:
    """Take the hosts' locks (all, or ``names``), first host first; any refusal releases those taken
    (exit 2). ``takeover`` maps a host to the token of a dead rollout's lock this run replaces."""
    names = list(run.names if names is None else names)
    if not names:
        return
    try:
        # The first host in name order is taken alone: two deploys racing for the same hosts meet
        # there first, so exactly one of them goes on to lock the rest (in parallel).
        first, *rest = sorted(names)
        _lock(run, [first], journal=False, takeover=takeover)
        if not run.failed:
            _lock(run, rest, journal=False, takeover=takeover)
    except KeyboardInterrupt:
        run.failed.setdefault("local", "interrupted")
    _refuse_if_failed(run)


def _lock(run: Rollout, names: Sequence[str], *, journal: bool = True,
          takeover: Optional[dict[str, str]] = None) -> None:
    """Take the named hosts' locks in parallel (with this rollout's journal, unless ``journal`` is
    False); refusals go to ``failed``."""
    def take(target: Target) -> None:
        started = Journal.begin(run.owner, run.release_id, run.states[target.name].live) \
            if journal else None
        acquire_lock(target, run.settings, run.owner, journal=started,
                             takeover=(takeover or {}).get(target.name, ""))

    run.locked += list(run.each(names, "lock", take))


def _refuse_if_failed(run: Rollout, next_step: str = "") -> None:
    if not run.failed:
        return
    release_locks(run, run.locked)
    lines = [f"  {host}: {why}" for host, why in run.failed.items()]
    raise Refused(
        "preflight failed; nothing was changed on any host:\n" + "\n".join(lines),
        hosts=list(run.failed), next_step=next_step,
    )


def record_baseline(run: Rollout) -> None:
    """Red: one pass of the checks against what is live now (no waiting); a first deploy has none."""
    settings = run.settings
    live = [name for name, state in run.states.items() if state.live]
    if not run.verifies or not live:
        return
    run.console.stage("baseline: checks against what is live now")
    once = VerifySettings(0, settings.verify.interval)
    if run.probed:  # the probes went with the preflight: only what they could not take is looked at now
        run.baseline = run_checks(run.pick(live), list(settings.checks), once, parallel=settings.rollout.parallel,
                                  first=run.probed)
    else:
        run.baseline = run.verify(live, once)
    for host in run.baseline.hosts:
        run.console.host(host.host, "baseline", summary(host), "green" if host.ok else "yellow")


def prepare(run: Rollout, names: Sequence[str]) -> None:
    """Upload, link shared paths and build the new release on the named hosts; nothing goes live."""
    settings, package, plan = run.settings, run.package, run.plan
    assert package is not None and plan is not None
    where = "" if len(names) == len(run.names) else f" on {_few(names)}"
    run.console.stage(f"prepare release {run.release_id} ({package.label}){where}")

    def build(target: Target) -> None:
        # the journal names the release, then upload, shared links, build hooks and "complete": one round trip
        run_prepare(target, settings, plan.script(target.name, "prepare"), run.release_id, package)

    done = run.each(names, "prepare", build)
    for name in done:
        run.console.host(name, "prepare", f"release {run.release_id} ready")
    if run.failed:
        raise DeploytestError(f"prepare failed on {_some(run.failed)}")


def go_live(run: Rollout, stage: plans.Stage, *, verify: bool) -> None:
    """Switch one batch, restart it and (with ``verify``) wait for every check to turn green."""
    settings, plan, batch = run.settings, run.plan, stage.hosts
    assert plan is not None
    kind = "batch 1" if stage.kind == "all" else stage.kind
    run.console.stage(f"{kind}: switch {_few(batch)}")

    def switch(target: Target) -> None:
        try:
            run.switched[target.name] = steps.run_switch_and_restart(
                target, settings, plan.script(target.name, "switch")).previous
        except steps.RestartFailed as error:
            run.switched[target.name] = error.previous
            raise
        except UsageError:
            raise  # refused before anything was switched
        except BaseException:
            # lost, interrupted or timed out mid-step: switched or not is unknown, so treat it as
            # switched (switching back to the release it had is safe either way)
            run.switched[target.name] = run.states[target.name].live
            raise
        finally:
            if target.name in run.switched:
                run.touched.add(target.name)

    for name in run.each(batch, "switch", switch):
        run.console.host(name, "switch", f"live on {run.release_id}, restarted", "green")
    if verify and run.verifies:
        live = [name for name in batch if name not in run.failed]
        unswitched = [n for n in run.names if n not in run.switched and n not in run.tolerated]
        with analysis.comparing(run.pick(unswitched)):  # what metric checks' compare holds the batch to
            report = run.verify(live, settings.verify)
        run.after = report if run.after is None else VerifyReport(run.after.hosts + report.hosts)
        for host in report.hosts:
            if host.error:
                run.lost.add(host.host)
                run.failed.setdefault(host.host, f"verify: {host.error}")
            elif not host.ok:
                red = [r for r in host.results if not r.ok]
                run.failed.setdefault(host.host, "verify: " + "; ".join(f"{r.name}: {explain(r)}" for r in red))
            colour = "green" if host.ok and not host.error else "red"
            run.console.host(host.host, "verify", summary(host), colour)
            for result in host.results:
                if not result.ok:
                    run.console.line("    " + result_line(host.host, result, color=run.console.colour))
    run.console.progress("live", len(run.switched), len(run.targets))
    too_many = len(run.failed) > settings.rollout.max_fail
    if too_many or run.lost:  # a lost host is never tolerated: its state is unknown
        raise ChecksFailed(f"{kind} failed on {_some(run.failed)}")
    for name in [n for n in batch if n in run.failed]:
        _tolerate(run, name)


def finish(run: Rollout) -> None:
    """Success: record the suite, clean up old releases, log, unlock, in one round trip per host.

    What each host did is shown as it happened; a lock that could not be released is exit 3.
    """
    run.console.end_progress()
    run.console.stage("finish")
    plan, settings = run.plan, run.settings
    assert plan is not None
    run.outcome = "verified" if plan.verify else "deployed"
    event = _event(run, "deploy", run.outcome)
    # the plan's finish: mark it verified and record its suite (when verified), clean up, log, unlock
    done = run.each([n for n in run.locked if n not in run.tolerated], "finish",
                    lambda t: steps.run_finish(t, settings, plan.script(t.name, "finish"), event))
    for name, result in done.items():
        run.console.host(name, "finish", f"live on {run.release_id}; {result.describe()}",
                         "green" if result.unlocked and not result.warnings else "yellow")
    back = _event(run, "deploy", "rolled back (within max_fail)", error=", ".join(run.failed.values()))

    def tidy(target: Target) -> steps.FinishResult:
        discard = steps.script_for_discard(settings, run.release_id, bad=target.name in run.touched)
        return steps.finish(target, settings, run.owner, back, cleanup=False, first=[discard])

    tidied = run.each([n for n in run.locked if n in run.tolerated], "finish", tidy)
    for name, result in tidied.items():
        what = "marked bad" if name in run.touched else "removed"
        run.console.host(name, "finish", f"stays on its previous release; {run.release_id} {what};"
                         f" {result.describe()}", "yellow")
    unlocked = {n for n, r in [*done.items(), *tidied.items()] if r.unlocked}
    run.locked = [n for n in run.locked if n not in unlocked]
    if run.locked:
        run.outcome = "needs a human"
        raise NeedsHuman(
            f"release {run.release_id} is live on every host but could not finish on {', '.join(run.locked)}:"
            " its lock there is kept (" + "; ".join(run.failed.get(n, "lock kept") for n in run.locked) + ")",
            hosts=list(run.locked),
            next_step=f"{run.fab('status', run.locked)}, then {run.fab('unlock', run.locked)}",
        )


# -- failure -------------------------------------------------------------------------------------


def roll_back(run: Rollout, error: BaseException) -> None:
    """Put every switched host back on the release it left (or stop a failed first deploy), verify
    that with the suite recorded with that release, mark the release bad, remove unfinished releases
    and release all locks; then raise RolledBack or NeedsHuman, saying only what happened."""
    settings = run.settings
    with _shielded_from_ctrl_c(run.console):
        run.console.end_progress()
        cause = "interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else _reason(error)
        run.console.stage(f"failed: {cause}; rolling back")
        run.outcome = "rolled back"
        stuck: dict[str, str] = {}

        def back(target: Target) -> steps.Switched:
            if not target.alive(max(settings.connect_timeout, 10.0)):
                raise HostUnreachable(target.name, "no answer; its state is unknown")
            # back on the previous release and restarted there, or (first deploy) stopped
            return steps.switch_back(target, settings, run.switched[target.name], run.release_id)

        switched = list(run.switched)
        for target, result in in_parallel(run.pick(switched), back, limit=settings.rollout.parallel):
            name = target.name
            if isinstance(result, BaseException):
                stuck[name] = f"rollback failed: {_reason(result).removeprefix(name + ': ')}"
                run.console.host(name, "rollback", stuck[name], "red")
            elif run.switched[name]:
                run.suites[name] = result.suite
                run.console.host(name, "rollback", f"back on {run.switched[name]}", "yellow")
            elif result.stopped:
                run.stopped.append(name)
                run.console.host(name, "rollback", f"nothing to go back to: {run.release_id} stopped"
                                 " (hooks.stop), current removed", "yellow")
            else:
                if settings.restart_hooks:
                    run.unstopped.append(name)
                run.console.host(name, "rollback", "nothing to go back to: current removed"
                                 + (", but no hooks.stop: what it started may still run"
                                    if settings.restart_hooks else ""), "red" if settings.restart_hooks else "yellow")
        restored = [n for n in switched if n not in stuck and run.switched[n]]
        # Not put back, or not answering: their locks and journals stay, for the one command that
        # settles them once they answer (status names it).
        for name in run.lost - set(stuck) - set(run.switched):
            if name in run.locked:
                stuck[name] = "unreachable; its lock and journal stay until it answers"
        unreached = set(stuck)
        verified = _verify_rollback(run, restored, stuck)

        event = _event(run, "deploy", "rolled back", error=cause)
        # Bad: it went live and is kept (a first deploy that may still run too); else removed.
        keep_bad = {n for n in run.touched if run.switched.get(n) or n in run.unstopped or n in run.tolerated}
        results: dict[str, steps.FinishResult] = {}

        def tidy(target: Target) -> steps.FinishResult:
            discard = steps.script_for_discard(settings, run.release_id, bad=target.name in keep_bad)
            return steps.finish(target, settings, run.owner, event, cleanup=False, first=[discard])

        for target, outcome in in_parallel(run.pick([n for n in run.locked if n not in unreached]), tidy,
                                           limit=settings.rollout.parallel):
            if isinstance(outcome, BaseException):
                why = _reason(outcome).removeprefix(target.name + ": ")
                stuck.setdefault(target.name, f"could not finish: {why}")
                run.console.host(target.name, "unlock", stuck[target.name], "red")
                continue
            results[target.name] = outcome
            if outcome.warnings or not outcome.unlocked:
                run.console.host(target.name, "finish", outcome.describe(), "yellow")
            if outcome.unlocked:
                run.locked.remove(target.name)
        for name in run.locked:
            if "lock" not in stuck.get(name, ""):
                stuck[name] = stuck.get(name, "") + ("; " if name in stuck else "") + "lock kept"

    if stuck:
        run.outcome = "needs a human"
        hosts = sorted(stuck)
        lines = [f"  {h}: {stuck[h]}" for h in hosts]
        raise NeedsHuman(
            f"deploy of {run.release_id} failed ({cause}) and these hosts could not be put back safely:\n"
            + "\n".join(lines),
            hosts=hosts,
            next_step=f"{run.fab('status', hosts)}   (it names the one command that settles them)",
        ) from (error if isinstance(error, Exception) else None)
    if run.unstopped:
        run.outcome = "needs a human"
        hosts = sorted(run.unstopped)
        hooks = "; ".join(settings.restart_hooks)
        raise NeedsHuman(
            f"first deploy of {run.release_id} failed ({cause}): nothing to roll back to, and no hooks.stop."
            f" What its restart hook ({hooks}) started from {settings.releases_dir}/{run.release_id} may"
            f" still run on {', '.join(hosts)}; current was removed and the release kept, marked bad.",
            hosts=hosts,
            next_step=f"stop it by hand on {', '.join(hosts)} (and add hooks.stop to fabric.yaml), then:"
                      f" {run.fab('status', hosts)}",
        ) from (error if isinstance(error, Exception) else None)
    raise RolledBack(f"deploy of {run.release_id} failed ({cause}); {_what_rollback_did(run, verified)}",
                     hosts=sorted(run.failed)) from (error if isinstance(error, Exception) else None)


def _what_rollback_did(run: Rollout, verified: Optional[bool]) -> str:
    """The closing words of a rollback, each one true of what happened."""
    parts = []
    back = [n for n in run.switched if run.switched[n]]
    if back:
        check = {True: "verified", None: "not verified (a plain deploy checks nothing)",
                 False: "verified where a check was green before the deploy"}[verified]
        parts.append(f"{len(back)} switched host(s) rolled back to their previous release and {check};"
                     f" {run.release_id} marked bad there")
    if run.stopped:
        parts.append(f"first deploy failed: nothing to roll back to; {run.release_id} stopped and removed"
                     f" on {_few(run.stopped)}")
    quiet = [n for n in run.switched if not run.switched[n] and n not in run.stopped]
    if quiet:
        parts.append(f"first deploy failed: nothing to roll back to; {run.release_id} removed on"
                     f" {_few(quiet)} (no restart hook had started it)")
    untouched = [n for n in run.names if n not in run.switched and n not in run.tolerated]
    if not run.switched:
        parts.append("nothing went live; the unfinished release was removed")
    elif untouched:
        parts.append(f"{run.release_id} never went live on {_few(untouched)}: removed there")
    return "; ".join(parts) + "; locks released."


def _few(names: Sequence[str], shown: int = 5) -> str:
    """``web1, web2`` or ``web1, ..., web5 and 95 more``."""
    names = sorted(names)
    return ", ".join(names) if len(names) <= shown else f"{', '.join(names[:shown])} and {len(names) - shown} more"


def _verify_rollback(run: Rollout, restored: list[str], stuck: dict[str, str]) -> Optional[bool]:
    """Verify the hosts put back: True when every one was verified, False when some had nothing to be
    held to, None for a plain deploy (nothing is checked).

    A host whose previous release has a recorded suite is judged by that suite, except the checks that
    were already red, word for word, in this run's baseline (not the rollback's to fix). Without a
    record, the checks of today's config that were green in the baseline must be green again.
    """
    if not run.verifies or not run.verifying:
        return None  # a plain deploy checks nothing, going forward or back
    if not restored:
        return True
    groups: dict[tuple[Optional[str], tuple[str, ...], frozenset[str]], list[str]] = {}
    for name in restored:
        before = run.baseline.host(name) if run.baseline else None
        suite = run.suites.get(name) if run.verifier is None else None
        if suite is not None:
            try:
                recorded = with_suite(run.settings, suite)
            except ConfigError as error:
                run.console.host(name, "rollback verify", f"its recorded suite no longer validates ({error.message});"
                                 " verified with today's checks", "yellow")
                suite = None
            else:
                red_before = {_same(r.check) for r in (before.results if before and not before.error else [])
                              if not r.ok}
                only = tuple(c.name for c in recorded.checks if _same(c) not in red_before)
                if only or recorded.tests is not None:
                    groups.setdefault((suite, only, frozenset(red_before)), []).append(name)
                continue
        green = () if before is None or before.error else tuple(r.name for r in before.results if r.ok)
        if before is not None and not before.error and not green:
            continue  # nothing was green before: nothing to hold the rollback to
        groups.setdefault((None, green, frozenset()), []).append(name)
    hosts: list[HostReport] = []
    recorded_with: dict[str, str] = {}
    for (suite, only, red_tests), names in groups.items():
        if suite is None:
            run.console.stage(f"rollback verify: {_few(names)} with today's checks"
                              " (their release has no recorded suite)" if run.verifier is None else
                              f"rollback verify: {_few(names)}")
            hosts += run.verify(names, way_back(run.settings.verify), only).hosts
        else:
            run.console.stage(f"rollback verify: {_few(names)} with the suite recorded with"
                              f" {run.switched[names[0]]}")
            recorded = with_suite(run.settings, suite)
            kept = dataclasses.replace(recorded, checks=tuple(c for c in recorded.checks if c.name in only))
            verifier = suite_verifier(kept, parallel=run.settings.rollout.parallel,
                                      skip_tests=_red_in(red_tests))
            recorded_with.update({n: str(run.switched[n]) for n in names})
            hosts += verifier(run.pick(names), way_back(run.settings.verify), []).hosts
    run.rollback_report = VerifyReport(hosts)
    for host in hosts:
        if host.error:
            stuck[host.host] = f"rollback not verified: {host.error}"
        elif not host.ok:
            red = ", ".join(r.name for r in host.results if not r.ok)
            suite_of = recorded_with.get(host.host)
            stuck[host.host] = (f"rollback not verified: red with the suite recorded with {suite_of}: {red}"
                                if suite_of else f"rollback not verified: green before the deploy, red now: {red}")
        colour = "red" if host.host in stuck else "green"
        run.console.host(host.host, "rollback verify", stuck.get(host.host, summary(host)), colour)
    return len(hosts) == len(restored)


def _red_in(red: frozenset[str]) -> Callable[[Any], bool]:
    """Whether a test was red, word for word (same id, same file), in the baseline."""
    return lambda test: _same(test) in red


#: The least time a release that was verified before gets to turn green again on the way back: a tight
#: ``verify.timeout`` is for judging new releases, and a restart on a busy host should not turn a
#: sound rollback into "needs a human".
WAY_BACK_SECONDS = 10.0


def way_back(settings: VerifySettings) -> VerifySettings:
    """The verify settings of a rollback: ``settings`` with at least :data:`WAY_BACK_SECONDS`."""
    return dataclasses.replace(settings, timeout=max(settings.timeout, WAY_BACK_SECONDS))


def _same(check: Any) -> str:
    """A check's identity for comparing suites: its kind, name and parameters."""
    return json.dumps(check.to_dict(), sort_keys=True, default=str)


def _tolerate(run: Rollout, name: str) -> None:
    """Within ``rollout.max_fail``: put this one host back (or aside) and carry on with the rollout."""
    run.tolerated.append(name)
    if name not in run.switched:  # refused before its switch: it never had the release
        live = run.states[name].live if name in run.states else None
        run.console.host(name, "rollback", f"set aside: stays on {live or 'nothing'} (within max_fail)", "yellow")
        return
    target = run.pick([name])[0]
    previous = run.switched[name]
    steps.switch_back(target, run.settings, previous, run.release_id)  # and restart there
    run.switched.pop(name, None)
    run.console.host(name, "rollback", f"back on {previous or 'nothing'} (within max_fail)", "yellow")


class Heartbeat:
    """Keeps this run's locks fresh while it works, so that ``unlock`` can tell it from a dead one: every
    :data:`HEARTBEAT_SECONDS` each host still locked has its lock renewed (one short session)."""

    def __init__(self, run: Rollout) -> None:
        self.run = run
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="deploytest-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _beat(self) -> None:
        run = self.run
        while not self._stop.wait(HEARTBEAT_SECONDS):
            in_parallel(run.pick(list(run.locked)), lambda t: heartbeat(t, run.settings, run.owner),
                        limit=run.settings.rollout.parallel)


def release_locks(run: Rollout, names: Sequence[str]) -> None:
    """Release this run's locks on the named hosts (best effort: a refusal to change anything)."""
    for target, _result in in_parallel(run.pick(names), lambda t: release_lock(t, run.settings, run.owner),
                                       limit=run.settings.rollout.parallel):
        if target.name in run.locked:
            run.locked.remove(target.name)


def _event(run: Rollout, kind: str, outcome: str, **extra: Any) -> dict[str, Any]:
    package = run.package
    return {
        "event": kind,
        "release": run.release_id,
        "label": package.label if package else None,
        "outcome": outcome,
        "who": run.owner.who,
        "hosts": run.names,
        "seconds": round(time.monotonic() - run.started, 1),
        **extra,
    }


def summary(host: HostReport) -> str:
    """``all 5 checks green`` / ``2 of 5 red: health, port 8000`` / the host's error."""
    if host.error:
        return host.error
    red = [r.name for r in host.results if not r.ok]
    if not red:
        return f"all {len(host.results)} checks green"
    return f"{len(red)} of {len(host.results)} red: " + ", ".join(red)


def _package_mb(package: Optional[Package]) -> int:
    """Room the release needs on a host: its unpacked size (the archive is streamed, not stored)."""
    if package is None:
        return 0
    return -(-package.unpacked_size * 11 // 10 // (1024 * 1024))


def _some(failed: dict[str, str], shown: int = 3) -> str:
    """``web2 (verify: health: ...)`` for a few hosts, and how many more (each was printed above)."""
    items = [f"{host} ({why})" for host, why in list(failed.items())[:shown]]
    more = f"; and {len(failed) - shown} more" if len(failed) > shown else ""
    return "; ".join(items) + more


def _reason(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(error, DeploytestError):
        return error.message
    return f"{type(error).__name__}: {error}"


class _shielded_from_ctrl_c:
    """While rolling back, a second Ctrl-C must not leave hosts half-done: say so and carry on."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.previous: Any = None

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            def refuse(_signum: int, _frame: Any) -> None:
                self.console.error("deploytest: rolling back; Ctrl-C ignored until the hosts are safe")
            self.previous = signal.signal(signal.SIGINT, refuse)

    def __exit__(self, *_exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
