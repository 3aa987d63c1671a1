"""The bodies of the tasks an operator runs by hand: verify, rollback, status, releases, unlock, and
the dry run and reports of a deploy. Each works on all its hosts in parallel and returns an exit code.
"""

from __future__ import annotations

import os
import time
from typing import Optional, Sequence

from . import inspection, steps
from . import plan as plans
from .audit import log_line
from .checks.runner import Audit, HostReport, run_checks
from .config import Settings
from .console import Console
from .errors import (
    OK,
    ChecksFailed,
    HostKeyError,
    NeedsHuman,
    Refused,
    RemoteCommandFailed,
    UsageError,
    fab_command,
    interrupted,
)
from .hosts import Target, in_parallel
from .lock import LockInfo, LockOwner, force_unlock
from .remote import run_script
from .report import RunReport
from .report_json import write_document, write_json
from .report_junit import write_junit, write_run_junit
from .report_text import render, render_transitions
from .rollout import Rollout
from .source import pack_source
from .state import COMPLETE, HostState, new_release_id
from .verifiers import suite_verifier


def _fab(task: str, targets: Sequence[Target]) -> str:
    return fab_command(task, [t.name for t in targets], local=all(t.is_local for t in targets))


def _connect_all(targets: Sequence[Target], settings: Settings, console: Console) -> None:
    """Open every connection first: an unreachable host or unknown key refuses before anything runs."""
    console.set_hosts([t.name for t in targets])
    problems = [(t, r) for t, r in in_parallel(targets, lambda t: t.open(), limit=settings.rollout.parallel)
                if isinstance(r, BaseException)]
    if problems:
        lines = [f"  {t.name}: {_message(r)}" for t, r in problems]
        keys = [f"{t.name}: {r.next_step}" for t, r in problems if isinstance(r, HostKeyError) and r.next_step]
        raise Refused("cannot reach every host; nothing was checked or changed:\n" + "\n".join(lines),
                      hosts=[t.name for t, _ in problems], next_step="; ".join(keys))


def _message(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    hosts = getattr(error, "hosts", None) or [""]
    prefix = f"{getattr(error, 'host', '') or hosts[0]}: "  # HostKeyError names its host in .hosts only
    return text[len(prefix):] if prefix != ": " and text.startswith(prefix) else text


def verify(targets: Sequence[Target], settings: Settings, console: Console, json_path: Optional[str],
           junit_path: Optional[str]) -> int:
    """Run the checks and tests on every host now (with "eventually" retries); 0 all green, 1 any red."""
    if not settings.checks and settings.tests is None:
        raise UsageError("config deploytest.checks: no checks or tests configured; nothing to verify.")
    if settings.tests is not None:
        from .pytest_suite import collect

        collect(settings)  # a test file that does not collect: refused, nothing run
    _connect_all(targets, settings, console)
    if settings.tests is None and not settings.sudo:  # each host logs its verdict in its last attempt's session
        report = run_checks(list(targets), list(settings.checks), settings.verify,
                            parallel=settings.rollout.parallel, audit=_audit(settings))
    else:
        report = suite_verifier(settings, parallel=settings.rollout.parallel)(list(targets), settings.verify, [])
        in_parallel(targets, lambda t: _log_verify(t, settings, report.host(t.name)), limit=settings.rollout.parallel)
    console.line(render(report, color=console.colour))
    if json_path:
        write_json(json_path, report, extra={"task": "verify"})
    if junit_path:
        write_junit(junit_path, report, name="deploytest verify")
    unreachable = [h.host for h in report.hosts if h.error]
    if unreachable:
        raise NeedsHuman(f"lost {', '.join(unreachable)} while verifying", hosts=unreachable,
                         next_step=_fab("status", [t for t in targets if t.name in unreachable]))
    return OK if report.ok else ChecksFailed.exit_code


def _verify_event(host: HostReport) -> dict[str, object]:
    return {"event": "verify", "who": LockOwner.new().who, "outcome": "green" if host.ok else "red",
            "red": [r.name for r in host.results if not r.ok]}


def _audit(settings: Settings) -> Audit:
    """``verify``'s audit line, written in the session of each host's last attempt."""
    return Audit(steps.script_for_answered_log(settings),
                 lambda host: (log_line(_verify_event(host)) + "\n").encode(),
                 lambda target, host: _log_verify(target, settings, host))


def _log_verify(target: Target, settings: Settings, host: Optional[HostReport]) -> None:
    """Append a ``verify`` event to the log of a host that has been deployed to (best effort: a host
    that cannot take it keeps its verdict all the same)."""
    if host is None or host.error:
        return
    try:
        run_script(target, settings, steps.script_for_log(settings, _verify_event(host)), "log")
    except Exception:  # noqa: BLE001 - best effort, as ever: the verdict stands without its log line
        pass


def status(targets: Sequence[Target], settings: Settings, console: Console) -> int:
    """Per host: live release, previous good release, lock holder, last event.

    A host that cannot be read is listed as such and the others are still shown (exit 3 then).
    """
    states, lost = _read_states(targets, settings, console)
    for name, state in states.items():
        lock = f"{state.lock.describe()} ({state.lock.liveness()})" if state.lock else "free"
        last = describe_event(state.last_event) if state.last_event else "none"
        info = state.release(state.live) if state.live else None
        unverified = " (unverified)" if info is not None and not info.verified else ""
        console.line(f"{name}: live {state.live or '-'}{unverified}  previous {state.previous or '-'}  "
                     f"lock {lock}  last event: {last}")
        if state.journal is not None:
            how = "INTERRUPTED" if state.interrupted else "in progress"
            console.line(f"{name}: {how}: {state.journal.describe()}, from {state.journal.previous or 'nothing'};"
                         f" steps done here: {', '.join(state.journal.steps) or 'none'}")
    _interrupted(targets, states)
    return _unknown(lost)


def _interrupted(targets: Sequence[Target], states: dict[str, HostState]) -> None:
    """Exit 3 naming an interrupted rollout, where it left each host, and the ONE command that undoes it."""
    hit = {n: s for n, s in states.items() if s.interrupted and s.journal is not None}
    if not hit:
        return
    journal = next(iter(hit.values())).journal
    assert journal is not None
    on_new = sorted(n for n, s in hit.items() if s.live == journal.release)
    elsewhere = sorted(n for n in hit if n not in on_new)
    parts = []
    if on_new:
        parts.append(f"{', '.join(on_new)} live on {journal.release} (unverified)")
    if elsewhere:
        parts.append(", ".join(f"{n} on {hit[n].live or 'nothing'}" for n in elsewhere))
    hosts = sorted(hit)
    raise NeedsHuman(f"an interrupted {journal.describe()} left: {'; '.join(parts)}", hosts=hosts,
                     next_step=f"{_fab('rollback', [t for t in targets if t.name in hosts])}   (undoes it: each"
                     f" host back on {journal.previous or 'nothing'}, verified with that release's own suite)")


def releases(targets: Sequence[Target], settings: Settings, console: Console) -> int:
    """Per host: a table of releases (id, when, who, label, live / bad / rollback-target marks)."""
    states, lost = _read_states(targets, settings, console)
    for name, state in states.items():
        console.line(f"{name}:")
        console.line(release_table(state))
    return _unknown(lost)


def _read_states(targets: Sequence[Target], settings: Settings,
                 console: Console) -> tuple[dict[str, HostState], dict[str, BaseException]]:
    """Each host's deploy state, and why the others could not be read (on-call wants what it can get)."""
    console.set_hosts([t.name for t in targets])
    states: dict[str, HostState] = {}
    lost: dict[str, BaseException] = {}
    for target, result in in_parallel(targets, lambda t: inspection.inspect(t, settings),
                                      limit=settings.rollout.parallel):
        if isinstance(result, BaseException):
            lost[target.name] = result
        else:
            states[target.name] = result
    for name, error in lost.items():
        console.line(f"{name}: state unknown: {_message(error)}")
    return states, lost


def _unknown(lost: dict[str, BaseException]) -> int:
    if not lost:
        return OK
    keys = {n: e for n, e in lost.items() if isinstance(e, HostKeyError)}
    if keys:
        others = [n for n in lost if n not in keys]
        steps = "; ".join(f"{n}: {e.next_step}" for n, e in keys.items() if e.next_step)
        raise NeedsHuman(f"host key refused for {', '.join(keys)}"
                         + (f"; could not read the state of {', '.join(others)}" if others else ""),
                         hosts=list(lost), next_step=steps)
    raise NeedsHuman(f"could not read the state of {', '.join(lost)}", hosts=list(lost),
                     next_step="check that the host is up and reachable over SSH, then run this again")


def unlock(targets: Sequence[Target], settings: Settings, console: Console, force: bool = False) -> int:
    """Remove each host's stale deploy lock and say whose it was; a live one (its rollout still beats)
    only with ``force``. Any live lock without ``force``: nothing is removed anywhere (exit 2)."""
    _connect_all(targets, settings, console)
    states, lost = _read_states(targets, settings, console)
    if lost:
        raise Refused(f"cannot read the lock of {', '.join(lost)}; nothing was removed.", hosts=list(lost))
    live = {n: s.lock for n, s in states.items() if s.lock is not None and s.lock.staleness() is None}
    if live and not force:
        lines = [f"  {n}: held by {lock.describe()}, {lock.liveness()}" for n, lock in live.items() if lock]
        hosts = list(live)
        raise Refused("a running deploy holds these locks; nothing was removed:\n" + "\n".join(lines),
                      hosts=hosts, next_step=f"wait for it; if it is really dead: "
                      f"{_fab('unlock --force', [t for t in targets if t.name in hosts])}")
    me = LockOwner.new().who

    def remove(target: Target) -> Optional[LockInfo]:
        seen = states[target.name].lock
        return force_unlock(target, settings, me, seen=seen) if seen is not None else None

    for target, result in in_parallel(targets, remove, limit=settings.rollout.parallel):
        if isinstance(result, BaseException):
            raise RemoteCommandFailed(target.name, "unlock", _message(result))
        seen = states[target.name].lock
        if seen is None:
            console.host(target.name, "unlock", "no lock was held")
        elif result is None:
            console.host(target.name, "unlock", f"left alone: the lock changed hands since it was read"
                         f" (was {seen.describe()})", "yellow")
        else:
            how = seen.liveness() if seen.staleness() else f"{seen.liveness()}, removed with --force"
            console.host(target.name, "unlock", f"removed the lock of {result.describe()} ({how})", "yellow")
    return OK


def dry_run(targets: Sequence[Target], settings: Settings, console: Console, *, verify: bool) -> int:
    """Print, per host, what a deploy would do and the commands it would run; change nothing.

    Only read-only commands run (connect, read the deploy state). ``DEPLOYTEST_DEBUG=1`` also prints
    the complete shell script of every step.
    """
    package = pack_source(settings)
    tests: list[str] = []
    if verify and settings.tests is not None:
        from .pytest_suite import collect

        tests = collect(settings)
    states, lost = _read_states(targets, settings, console)
    if lost:
        raise Refused(f"cannot read the deploy state of {', '.join(lost)}; nothing was changed.",
                      hosts=list(lost))
    release_id = new_release_id(rid for s in states.values() for rid in s.release_ids)
    console.line(f"dry run: release {release_id} ({package.label}, {package.kind} from {package.origin});"
                 " nothing will be changed")
    owner = LockOwner.new(release_id)
    verifies = verify and (bool(settings.checks) or settings.tests is not None)
    plan = plans.make(settings, states, package, owner, release_id, tests=tests, verify=verifies,
                      baseline=plans.baseline_probes(settings) if verifies else None)
    for kind, text in plans.describe(plan, states, scripts=bool(os.environ.get("DEPLOYTEST_DEBUG"))):
        (console.stage if kind == "stage" else console.line)(text)
    from .gates import describe  # metric checks, gates and notifications: once for the whole rollout

    for line in describe(settings, verify=verify):
        console.line(f"  {line}")
    return OK


def write_reports(run: Rollout, task: str, json_path: Optional[str], junit_path: Optional[str],
                  error: Optional[BaseException] = None) -> None:
    """The reports of a rollout (deploy, deploy-and-verify, rollback), whatever its end: JSON (the
    versioned schema of :mod:`deploytest.report_json`) and JUnit, with per host what was live before and
    after and per check its transition; ``error`` is what ended the run (None: it succeeded)."""

    if not json_path and not junit_path:
        return
    facts = run_facts(run, task, error)
    if json_path:
        write_document(json_path, facts)
    if junit_path:
        write_run_junit(junit_path, facts)


def run_facts(run: Rollout, task: str, error: Optional[BaseException] = None) -> RunReport:
    """What the reports of a rollout say (see :func:`write_reports`); ``error``: what ended it."""
    from datetime import datetime, timedelta, timezone

    from .errors import DeploytestError, exit_code_for
    from .report import OUTCOME_FOR_CODE, HostFacts

    code = exit_code_for(error) if error is not None else OK
    message = (error.message if isinstance(error, DeploytestError) else
               interrupted() if isinstance(error, KeyboardInterrupt) else
               f"internal error: {type(error).__name__}: {error}" if error is not None else None)
    blamed = set(getattr(error, "hosts", None) or [])
    after_ids = {run.release_id} if run.release_id and "," not in run.release_id else set()

    def end_of(name: str, before: Optional[str]) -> tuple[str, Optional[str], str]:
        """``(status, live after, why)`` of one host at the end of the run."""
        if code == Refused.exit_code:
            return ("refused" if name in run.failed or name in blamed else "unchanged"), before, ""
        if name in run.lost or (code == NeedsHuman.exit_code and name in blamed) or code not in (0, 1, 3):
            return "unknown", None, "its state is unknown: see fab status"
        if task == "rollback":
            if name in run.failed:
                return "failed", None, ""
            checked = run.after.host(name) if run.after is not None else None
            return ("red" if checked is not None and not checked.ok else "rolled back"), \
                next(iter(after_ids), None), ""
        if code == OK:
            if name in run.tolerated:
                return "set aside", before, "within rollout.max_fail"
            return ("verified" if run.outcome == "verified" else "deployed"), run.release_id, ""
        if name not in run.switched:
            return "unchanged", before, ""
        if run.switched[name]:
            return "rolled back", run.switched[name], ""
        return ("stopped" if name in run.stopped else "removed"), None, "first deploy failed: nothing to go back to"

    hosts = []
    for name in run.names:
        state = run.states.get(name)
        before = state.live if state is not None else None
        status, after, why = end_of(name, before)
        hosts.append(HostFacts(name, status, before, after, run.failed.get(name, why)))
    seconds = round(time.monotonic() - run.started, 1)
    started = datetime.now(timezone.utc) - timedelta(seconds=seconds)
    package = run.package
    facts = RunReport(
        task=task, outcome=run.outcome if run.outcome != "pending" else OUTCOME_FOR_CODE.get(code, "failed"),
        exit_code=code, hosts=hosts, result=run.after, baseline=run.baseline, rollback=run.rollback_report,
        release=run.release_id or None, label=package.label if package is not None else None,
        source=package.origin if package is not None else None,
        error=message, next_step=getattr(error, "next_step", "") or "",
        started=started.isoformat(timespec="seconds"), seconds=seconds,
    )
    return facts


def print_transitions(run: Rollout) -> None:
    """The red -> green table: per host and check, baseline against the result, what was observed."""
    if run.after is not None:
        run.console.end_progress()
        run.console.stage("red -> green")
        run.console.line(render_transitions(run.baseline, run.after, color=run.console.colour))


def summarise(run: Rollout) -> int:
    """The closing line of a successful run."""
    console = run.console
    live = len(run.targets) - len(run.tolerated)
    console.line(console.paint(
        f"deploytest: {run.outcome}: release {run.release_id} live on {live} host(s)"
        f" in {time.monotonic() - run.started:.1f}s", "green"))
    if run.tolerated:
        console.error(f"deploytest: within rollout.max_fail, {len(run.tolerated)} host(s) stay on their previous"
                      f" release: {', '.join(run.tolerated)} ({'; '.join(run.failed[h] for h in run.tolerated)})")
    return OK


def describe_event(event: dict[str, object]) -> str:
    """``deploy 20261125112102 verified by alice@laptop at 2026-11-25T11:21:02Z``."""
    words = [str(event.get("event", "?")), str(event.get("release") or "-"), str(event.get("outcome") or "")]
    if event.get("who"):
        words.append(f"by {event['who']}")
    if event.get("when"):
        words.append(f"at {event['when']}")
    return " ".join(w for w in words if w)


def release_table(state: HostState) -> str:
    """The releases of one host, newest first, with live / rollback-target / bad marks."""
    header = ("release", "when", "who", "label", "state")
    rows = []
    for info in reversed(state.releases):
        marks = []
        if info.id == state.live:
            marks.append("live")
        if info.id == state.previous:
            marks.append("rollback target")
        marks.append("unverified" if info.state == COMPLETE else info.state)
        rows.append((info.id, info.when or "-", info.who or "-", info.label or "-", ", ".join(marks) or "-"))
    if not rows:
        return f"  no releases in {state.deploy_to}"
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)
