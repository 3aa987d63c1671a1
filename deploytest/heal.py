"""When a rollout fails: put every host it switched back where it was (or stop a failed first
deploy), verify that with the suite recorded with the release it went back to, mark the failed
release bad, release the locks; and say, in words that are true, what happened."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Optional

from . import steps
from .checks.runner import HostReport, VerifyReport
from .config import VerifySettings, with_suite
from .errors import ConfigError, HostUnreachable, NeedsHuman, RolledBack, interrupted
from .hosts import Target, in_parallel
from .rollout import Rollout, few, log_event, reason_of, shielded_from_ctrl_c, summary
from .verifiers import suite_verifier


def roll_back(run: Rollout, error: BaseException) -> None:
    """Put every switched host back on the release it left (or stop a failed first deploy), verify
    that with the suite recorded with that release, mark the release bad, remove unfinished releases
    and release all locks; then raise RolledBack or NeedsHuman, saying only what happened."""
    settings = run.settings
    with shielded_from_ctrl_c(run.console):
        run.console.end_progress()
        cause = interrupted() if isinstance(error, KeyboardInterrupt) else reason_of(error)
        run.console.stage(f"failed: {cause}; rolling back")
        run.outcome = "rolled back"
        run.unpark(run.names)  # every host may be worked on from here: none is closed under a step
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
                stuck[name] = f"rollback failed: {reason_of(result).removeprefix(name + ': ')}"
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

        event = log_event(run, "deploy", "rolled back", error=cause)
        # Bad: it went live and is kept (a first deploy that may still run too); else removed.
        keep_bad = {n for n in run.touched if run.switched.get(n) or n in run.unstopped or n in run.tolerated}
        results: dict[str, steps.FinishResult] = {}

        def tidy(target: Target) -> steps.FinishResult:
            discard = steps.script_for_discard(settings, run.release_id, bad=target.name in keep_bad)
            return steps.finish(target, settings, run.owner, event, cleanup=False, first=[discard])

        for target, outcome in in_parallel(run.pick([n for n in run.locked if n not in unreached]), tidy,
                                           limit=settings.rollout.parallel):
            if isinstance(outcome, BaseException):
                why = reason_of(outcome).removeprefix(target.name + ": ")
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
                     f" on {few(run.stopped)}")
    quiet = [n for n in run.switched if not run.switched[n] and n not in run.stopped]
    if quiet:
        parts.append(f"first deploy failed: nothing to roll back to; {run.release_id} removed on"
                     f" {few(quiet)} (no restart hook had started it)")
    untouched = [n for n in run.names if n not in run.switched and n not in run.tolerated]
    if not run.switched:
        parts.append("nothing went live; the unfinished release was removed")
    elif untouched:
        parts.append(f"{run.release_id} never went live on {few(untouched)}: removed there")
    return "; ".join(parts) + "; locks released."


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
            run.console.stage(f"rollback verify: {few(names)} with today's checks"
                              " (their release has no recorded suite)" if run.verifier is None else
                              f"rollback verify: {few(names)}")
            hosts += run.verify(names, way_back(run.settings.verify), only).hosts
        else:
            run.console.stage(f"rollback verify: {few(names)} with the suite recorded with"
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


def tolerate(run: Rollout, name: str) -> None:
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
