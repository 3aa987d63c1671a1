"""The ``rollback`` task: every host back on ONE verified release, or an interrupted rollout undone.

Two ways in, one ending: each host live on a release verified with the suite recorded with it, no
lock left, the release it left marked bad (only once the way back is green).

- Plain: each host goes to its previous verified release (or ``--to``); if that is not the same
  release on every host, nothing is changed and the ``--to`` that would work is named.
- Undo: a rollout whose owner died (``kill -9``, a CI runner gone) left its journal on the hosts it
  reached. ``rollback`` without ``--to`` puts each of those hosts back on the release that was live
  before that rollout, replaces the dead lock, and clears the journal; no ``unlock`` first.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from . import steps
from .checks.runner import VerifyReport
from .config import with_suite
from .errors import ConfigError, NeedsHuman, UsageError
from .flow import preflight, take_locks
from .heal import way_back
from .hosts import Target, in_parallel
from .lock import Journal, script_for_clear_journal
from .report_text import render
from .rollout import Heartbeat, Rollout
from .state import rollback_target
from .verifiers import suite_verifier


def rollback(run: Rollout, to: Optional[str], *, force: bool = False) -> int:
    """Roll every host back (see the module); ``run`` records the verification and outcome for reports.

    :param force: ``to`` may be a release that was never verified live.
    :raises UsageError: nothing to go back to, hosts that would end on different releases, or ``to``
        while an interrupted rollout is unresolved (exit 2, nothing changed).
    :raises NeedsHuman: a host could not be put back, or stays red on the release it went back to.
    """
    _record_todays_tests(run)
    preflight(run, lock=False, resolving=True)
    interrupted = {n: s.journal for n, s in run.states.items() if s.interrupted and s.journal is not None}
    if interrupted:
        if to is not None:
            raise UsageError(f"an interrupted rollout is unresolved on {', '.join(sorted(interrupted))}; undo it"
                             " first (rollback without --to). Nothing was changed.",
                             next_step=run.fab("rollback", sorted(interrupted)))
        return _undo(run, interrupted)
    picked = {name: rollback_target(state, to, force=force) for name, state in run.states.items()}
    _one_release(run, picked)
    take_locks(run)
    with Heartbeat(run):
        return _go_back(run, picked, {n: s.live for n, s in run.states.items()})


def _record_todays_tests(run: Rollout) -> None:
    """Today's test files go with the suite recorded for a release that had none; unreadable ones are
    no reason to refuse a rollback (it is then recorded without them)."""
    if run.settings.tests is None:
        return
    from .suite_files import snapshot

    try:
        run.settings = snapshot(run.settings)
    except ConfigError as error:
        run.console.line(f"deploytest: {error.message}")


def _one_release(run: Rollout, picked: dict[str, str]) -> None:
    """Refuse a rollback that would leave the hosts on different releases; name the ``--to`` that works."""
    if len(set(picked.values())) <= 1:
        return
    groups: dict[str, list[str]] = {}
    for name, rid in picked.items():
        groups.setdefault(rid, []).append(name)
    where = "; ".join(f"{', '.join(names)} -> {rid}" for rid, names in sorted(groups.items()))
    verified = [{r.id for r in s.releases if r.verified} for s in run.states.values()]
    lives = {s.live for s in run.states.values()}
    common = sorted(set.intersection(*verified) - lives) if verified else []
    hint = run.fab(f"rollback --to {common[-1]}", run.names) if common else run.fab("releases", run.names)
    raise UsageError(f"the hosts would go back to different releases ({where}); a rollback puts every host on"
                     " one release. Nothing was changed.", hosts=run.names, next_step=hint)


def _go_back(run: Rollout, picked: dict[str, str], live: dict[str, Optional[str]]) -> int:
    """Switch each host to ``picked``, restart, verify with that release's suite, then finish."""
    settings, console = run.settings, run.console
    console.stage("rollback")
    suites: dict[str, Optional[str]] = {}

    def back(target: Target) -> None:
        suites[target.name] = steps.switch_and_restart(target, settings, picked[target.name]).suite

    run.each(run.names, "rollback", back)
    for name in suites:
        console.host(name, "rollback", f"live on {picked[name]} (was {live[name] or 'nothing'})", "yellow")
    return _verify_and_finish(run, picked, live, suites, lambda name: [])


def _undo(run: Rollout, interrupted: dict[str, Journal]) -> int:
    """Put every host an interrupted rollout reached back on the release live before it."""
    settings, console = run.settings, run.console
    hosts = sorted(interrupted)
    first = interrupted[hosts[0]]
    console.stage(f"undo the interrupted {first.describe()} on {', '.join(hosts)}")
    for name in run.names:
        if name not in interrupted:
            console.host(name, "undo", "not part of that rollout: left alone")
    run.release_id = first.release
    takeover = {n: j.rollout for n, j in interrupted.items()
                if (lock := run.states[n].lock) is not None and lock.token == j.rollout}
    run.targets = run.pick(hosts)
    take_locks(run, names=hosts, takeover=takeover)
    picked = {n: j.previous or "" for n, j in interrupted.items()}
    live = {n: run.states[n].live for n in hosts}
    suites: dict[str, Optional[str]] = {}
    went_live = {n for n, j in interrupted.items() if live[n] == j.release or "switched" in j.steps}

    with Heartbeat(run):
        def back(target: Target) -> None:
            name, journal = target.name, interrupted[target.name]
            if live[name] == journal.previous:  # never switched, or already back
                suites[name] = run.states[name].live_suite
                return
            if live[name] not in (journal.release, None):
                raise UsageError(f"{name}: live is {live[name]}, neither {journal.release} nor the release before"
                                 " it; left as is")
            if journal.previous:
                suites[name] = steps.switch_and_restart(target, settings, journal.previous).suite
            else:
                steps.switch_back(target, settings, None, journal.release)  # stop hooks; nothing to go to

        run.each(hosts, "undo", back)
        for name in hosts:
            if name in run.failed:
                continue
            if live[name] == picked[name]:
                console.host(name, "undo", f"never switched to {first.release}: stays on {live[name]}")
            else:
                console.host(name, "undo", f"live on {picked[name] or 'nothing (first deploy: stopped)'}"
                             f" (was {live[name] or 'nothing'})", "yellow")

        def discard(name: str) -> list[str]:
            journal = interrupted[name]
            made = [steps.script_for_discard(settings, journal.release, bad=name in went_live)] \
                if journal.release else []  # killed before it named (or made) its release
            return made + [script_for_clear_journal(settings, journal.rollout)]

        return _verify_and_finish(run, picked, live, suites, discard)


def _verify_and_finish(run: Rollout, picked: dict[str, str], live: dict[str, Optional[str]],
                       suites: dict[str, Optional[str]], undo: Callable[[str], list[str]]) -> int:
    """Verify the hosts put back, mark what they left, log, unlock; the exit code or NeedsHuman."""
    settings, console = run.settings, run.console
    reports: list[VerifyReport] = []
    ok_hosts = [n for n in run.names if n not in run.failed and picked.get(n)]
    if run.verifies and ok_hosts:
        for suite, names in _by_suite(ok_hosts, suites).items():
            reports.append(_verify_with(run, names, suite, picked))
    report = VerifyReport([h for r in reports for h in r.hosts]) if reports else None
    run.after = report
    run.release_id = ", ".join(sorted({r for r in picked.values() if r})) or run.release_id
    if report is not None:
        console.line(render(report, color=console.colour))
    red = {h.host for h in report.hosts if not h.ok} if report else set()

    def finish(target: Target) -> steps.FinishResult:
        name = target.name
        left, to = live.get(name), picked[name]
        first: list[str] = []
        if name not in red:  # only a green way back condemns the release it left
            first += undo(name)
            if left and to and left != to and not first:
                first.append(steps.script_for_mark_bad(settings, left))
            if to and report is not None:
                first.append(steps.script_for_mark_verified(settings, to))
                if suites.get(name) is None:
                    first.append(steps.script_for_record_suite(settings, to, settings.suite))
        outcome = "failed" if name in run.failed or name in red else "rolled back"
        event = {"event": "rollback", "release": to or None, "from": left, "outcome": outcome, "who": run.owner.who}
        return steps.finish(target, settings, run.owner, event, cleanup=False, first=first)

    unfinished = []
    for target, result in in_parallel(run.pick(run.locked), finish, limit=settings.rollout.parallel):
        if isinstance(result, BaseException) or not result.unlocked:
            unfinished.append(target.name)
        elif result.warnings:
            console.host(target.name, "finish", result.describe(), "yellow")
    if run.failed or unfinished:
        hosts = sorted(set(run.failed) | set(unfinished))
        run.outcome = "needs a human"
        lines = [f"  {h}: {run.failed.get(h, 'could not finish (lock kept)')}" for h in hosts]
        raise NeedsHuman("rollback did not complete on these hosts:\n" + "\n".join(lines), hosts=hosts,
                         next_step=run.fab("status", hosts))
    if red:
        run.outcome = "needs a human"
        hosts = sorted(red)
        lines = [f"  {h}: live on {picked[h]}, red with its suite; {live[h] or 'nothing'} (left) not marked bad"
                 for h in hosts]
        back = {live[h] for h in hosts}
        step = run.fab("status", hosts)
        if len(back) == 1 and None not in back:
            left = str(next(iter(back)))
            force = "" if all((i := run.states[h].release(left)) and i.verified for h in hosts) else " --force"
            step += f"; to return where they were: {run.fab(f'rollback --to {left}{force}', hosts)}"
        raise NeedsHuman("the rollback is not verified:\n" + "\n".join(lines), hosts=hosts, next_step=step)
    run.outcome = "rolled back"
    where = ", ".join(sorted({r for r in picked.values() if r})) or "nothing (stopped)"
    check = ", verified" if report is not None else ", not verified (no checks)"
    console.line(console.paint(f"deploytest: rolled back: {len(picked)} host(s) live on {where}{check}", "green"))
    return 0


def _by_suite(names: Sequence[str], suites: dict[str, Optional[str]]) -> dict[Optional[str], list[str]]:
    groups: dict[Optional[str], list[str]] = {}
    for name in names:
        groups.setdefault(suites.get(name), []).append(name)
    return groups


def _verify_with(run: Rollout, names: list[str], suite: Optional[str], picked: dict[str, str]) -> VerifyReport:
    """Verify ``names`` with the suite recorded with the release they went back to, else today's checks."""
    releases_ = ", ".join(sorted({picked[n] for n in names}))
    if suite is not None:
        try:
            recorded = with_suite(run.settings, suite)
        except ConfigError as error:
            run.console.stage(f"verify {', '.join(names)}: the suite recorded with {releases_} no longer"
                              f" validates ({error.message}); with today's checks instead")
        else:
            run.console.stage(f"verify {', '.join(names)} with the suite recorded with {releases_}")
            verifier = suite_verifier(recorded, parallel=run.settings.rollout.parallel)
            return verifier(run.pick(names), way_back(run.settings.verify), [])
    else:
        run.console.stage(f"verify {', '.join(names)}: {releases_} has no recorded suite; with today's checks")
    return run.verify(names, way_back(run.settings.verify))
