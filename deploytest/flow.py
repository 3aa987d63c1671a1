"""The red-green flow: one coordinated rollout across all hosts that verifies and heals itself.

Read :func:`deploy_and_verify` first: it is the whole flow, one named stage per line, like
Capistrano's ``starting, updating, publishing, finishing, failed``. Every stage works on all hosts in
parallel (bounded by ``rollout.parallel``) and records what it changed in :class:`Rollout`, so that
:func:`deploytest.heal.roll_back` knows exactly which hosts to put back, whatever went wrong and
wherever. The stages run the plan (:mod:`deploytest.plan`) that ``--dry-run`` prints.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Optional, Sequence

from . import analysis, gates, inspection, notify, steps
from . import plan as plans
from .checks.runner import VerifyReport, run_checks
from .config import VerifySettings
from .errors import (
    ChecksFailed,
    DeploytestError,
    HostKeyError,
    HostUnreachable,
    NeedsHuman,
    Refused,
    UsageError,
    fab_command,
)
from .heal import roll_back, tolerate
from .hosts import Target, in_parallel
from .lock import PARKED_LEASE_SECONDS, Journal, acquire_lock
from .prepare import run_prepare
from .report_text import explain, result_line
from .rollout import Heartbeat, Rollout, few, log_event, package_mb, release_locks, some, summary
from .source import pack_source
from .state import HostState, new_release_id, preflight_hint, preflight_problem


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
                    if stage.number < stage.of:  # a fleet: their connections close until the finish (the
                        run.park(stage.hosts)    # last batch's go on to it, and close after it)
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
    if run.parks:  # the locks of hosts whose batch is done are renewed rarely: they say so
        run.owner = dataclasses.replace(run.owner, lease=PARKED_LEASE_SECONDS)
    need_mb = settings.min_free_mb + package_mb(run.package)
    refused: list[HostState] = []
    key_steps: list[str] = []
    taking = [lock]  # the lock goes with the inspection (one round trip) while the first host's was won
    guard = threading.Lock()
    deferred: list[str] = []  # first deploys: locked once every host passed, so a refusal leaves them as they were
    probes = run.baseline_probes if baseline else None
    stranded: list[str] = []  # lost while their lock was being taken: they may hold it still

    def first_locked(taken: str) -> None:  # the first host's lock is decided: the others may go
        taking[0] = lock and taken == "locked"
        decided.set()

    def check(target: Target) -> HostState:
        if together and target.name == first:
            try:
                return examine(target)
            finally:
                decided.set()  # however it ended: the others go on, locking only if first_locked said so
        return examine(target)

    def examine(target: Target) -> HostState:
        try:
            if ahead is not None and target.name in ahead.failed:  # failed while the first host went alone
                raise ahead.failed[target.name]
            target.open()
        except HostKeyError as error:
            key_steps.append(f"{target.name}: {error.next_step}")
            raise
        finally:
            if together and target.name != first:
                decided.wait()
        taken, probed = "", None
        locking = taking[0] or (together and target.name == first)
        try:
            if together and target.name == first:  # its lock first, its baseline's look after it
                assert probes is not None
                state, taken, probed = inspection.lock_then_probe(target, settings, run.owner, probes, first_locked)
            elif probes is not None:  # the baseline's look goes with the inspection: one round trip
                state, taken, probed = inspection.probe_and_inspect(target, settings,
                                                                    run.owner if locking else None, probes)
            elif locking:
                state, taken = inspection.inspect_and_lock(target, settings, run.owner)
            else:
                state = inspection.inspect(target, settings)
        except HostUnreachable:
            if locking:
                with guard:
                    stranded.append(target.name)
            raise
        if probed is not None:
            with guard:
                run.probed[target.name] = probed
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

    # The first host in name order goes alone: two deploys racing for the same hosts meet at its
    # lock, so exactly one of them goes on to lock the rest (in parallel). With the baseline's probes,
    # its session says so before its probes run, and the others go on then (``together``); their
    # handshakes are made meanwhile either way: they are most of the wait.
    first, *rest = sorted(run.names)
    together = lock and probes is not None and bool(rest)
    decided = threading.Event()
    ahead: Optional[_OpenAhead] = None
    try:
        if together:
            taking[0] = False  # until the first host's lock is taken
            run.states = run.each([first, *rest], "preflight", check)
        else:
            decided.set()
            ahead = _open_ahead(run, rest)
            run.states = run.each([first], "preflight", check)
            ahead.wait()
            taking[0] = lock and first in run.locked and first not in run.failed
            run.states.update(run.each(rest, "preflight", check))
        if lock and not run.failed and first not in run.locked:
            # a first deploy on the first host: every lock once every host passed, first host first
            _lock(run, [first], stranded=stranded)
            if not run.failed:
                _lock(run, [n for n in rest if n not in run.locked], stranded=stranded)
        elif lock and not run.failed:
            _lock(run, deferred, stranded=stranded)
    except KeyboardInterrupt:
        run.failed.setdefault("local", "interrupted")
    hints = [preflight_hint(sorted(refused, key=lambda s: s.host)), *key_steps]
    _refuse_if_failed(run, "; ".join(h for h in hints if h), stranded=stranded)
    run.states = {n: run.states[n] for n in run.names}  # in the order given
    run.release_id = new_release_id(
        rid for state in run.states.values() for rid in state.release_ids
    )
    run.owner = dataclasses.replace(run.owner, release=run.release_id)
    for name, state in run.states.items():
        live = state.live or "nothing live yet"
        console.host(name, "preflight", f"ok (live: {live}, {state.free_mb} MB free)")


class _OpenAhead(threading.Thread):
    """Opens connections in the background; what failed, by host name (``failed``), once ``wait`` returned."""

    def __init__(self, targets: Sequence[Target], limit: int) -> None:
        super().__init__(name="deploytest-open-ahead", daemon=True)
        self.targets, self.limit = targets, limit
        self.failed: dict[str, BaseException] = {}

    def run(self) -> None:
        for target, result in in_parallel(self.targets, lambda t: t.open(), limit=self.limit):
            if isinstance(result, BaseException):
                self.failed[target.name] = result

    def wait(self) -> None:
        while self.is_alive():  # in slices, so Ctrl-C reaches this thread
            self.join(0.2)


def _open_ahead(run: Rollout, names: Sequence[str]) -> _OpenAhead:
    """Start opening the named hosts' connections (at most ``rollout.parallel`` at once)."""
    ahead = _OpenAhead(run.pick(names), run.settings.rollout.parallel)
    ahead.start()
    return ahead


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
          takeover: Optional[dict[str, str]] = None, stranded: Optional[list[str]] = None) -> None:
    """Take the named hosts' locks in parallel (with this rollout's journal, unless ``journal`` is
    False); refusals go to ``failed``, and a host lost meanwhile to ``stranded`` as well."""
    def take(target: Target) -> None:
        started = Journal.begin(run.owner, run.release_id, run.states[target.name].live) \
            if journal else None
        try:
            acquire_lock(target, run.settings, run.owner, journal=started,
                         takeover=(takeover or {}).get(target.name, ""))
        except HostUnreachable:
            if stranded is not None:
                stranded.append(target.name)
            raise

    run.locked += list(run.each(names, "lock", take))


def _refuse_if_failed(run: Rollout, next_step: str = "", stranded: Sequence[str] = ()) -> None:
    """Refuse (exit 2) when any host failed, releasing the locks taken; exit 3 when a host was lost
    while its lock was being taken, so that it may hold it still (named, with what to run next)."""
    if not run.failed:
        return
    # ours where taken, and wherever an answer came back unread (a lock is released by its token only)
    unread = [n for n in run.failed if n not in run.lost and n not in run.locked and n in run.names]
    release_locks(run, run.locked + unread)
    lines = [f"  {host}: {why}" for host, why in run.failed.items()]
    held = [n for n in run.names if n in stranded and n in run.lost]
    if held:
        one = len(held) == 1
        raise NeedsHuman(
            f"preflight failed; no release was made or switched on any host, but {few(held)} "
            f"{'was' if one else 'were'} lost while {'its' if one else 'their'} lock was being taken and may "
            f"hold it still:\n" + "\n".join(lines),
            hosts=held,
            next_step=f"{fab_command('status', held)} once {'it answers' if one else 'they answer'} "
                      "(it names the one command that frees it, if any)",
        )
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
    where = "" if len(names) == len(run.names) else f" on {few(names)}"
    run.console.stage(f"prepare release {run.release_id} ({package.label}){where}")

    def build(target: Target) -> None:
        # the journal names the release, then upload, shared links, build hooks and "complete": one round trip
        run_prepare(target, settings, plan.script(target.name, "prepare"), run.release_id, package)

    done = run.each(names, "prepare", build)
    for name in done:
        run.console.host(name, "prepare", f"release {run.release_id} ready")
    if run.failed:
        raise DeploytestError(f"prepare failed on {some(run.failed)}")


def go_live(run: Rollout, stage: plans.Stage, *, verify: bool) -> None:
    """Switch one batch, restart it and (with ``verify``) wait for every check to turn green."""
    settings, plan, batch = run.settings, run.plan, stage.hosts
    assert plan is not None
    kind = "batch 1" if stage.kind == "all" else stage.kind
    run.console.stage(f"{kind}: switch {few(batch)}")

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
        raise ChecksFailed(f"{kind} failed on {some(run.failed)}")
    for name in [n for n in batch if n in run.failed]:
        tolerate(run, name)


def finish(run: Rollout) -> None:
    """Success: record the suite, clean up old releases, log, unlock, in one round trip per host.

    What each host did is shown as it happened; a lock that could not be released is exit 3.
    """
    run.console.end_progress()
    run.console.stage("finish")
    plan, settings = run.plan, run.settings
    assert plan is not None
    run.outcome = "verified" if plan.verify else "deployed"
    event = log_event(run, "deploy", run.outcome)
    # the plan's finish: mark it verified and record its suite (when verified), clean up, log, unlock

    def finish_host(target: Target) -> steps.FinishResult:
        try:
            return steps.run_finish(target, settings, plan.script(target.name, "finish"), event)
        finally:
            run.park([target.name])  # a fleet: no connection stays open past its host's last step

    done = run.each([n for n in run.locked if n not in run.tolerated], "finish", finish_host)
    for name, result in done.items():
        run.console.host(name, "finish", f"live on {run.release_id}; {result.describe()}",
                         "green" if result.unlocked and not result.warnings else "yellow")
    back = log_event(run, "deploy", "rolled back (within max_fail)", error=", ".join(run.failed.values()))

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
