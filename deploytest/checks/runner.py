"""Running checks on hosts, "eventually": one script per host per attempt, red checks retried.

Each attempt sends every check still red on a host as ONE :meth:`Target.run` call. A check that
turns green stays green; a red one is re-run every ``interval`` until its deadline (its own
``timeout``, else the suite's). Hosts are verified in parallel; an unreachable host is reported as
a host error, never raised.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..config import VerifySettings
from ..errors import HostUnreachable
from ..hosts import Target, in_parallel
from .attempt import MIN_PROBE_SECONDS, run_attempt
from .base import Check, ProbeOutput, Verdict, redact


@dataclass
class CheckResult:
    """The final verdict of one check on one host.

    :param attempts: how many times its probe ran.
    :param seconds: from the start of verification until it turned green, or until it was given up.
    """

    check: Check
    verdict: Verdict
    attempts: int
    seconds: float
    secrets: list[str] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        """True when the check is green."""
        return self.verdict.ok

    @property
    def name(self) -> str:
        """The check's name, with secret values redacted (a command may spell one)."""
        return redact(self.check.name, self.secrets)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return {
            "name": self.name,
            "kind": self.check.kind,
            "ok": self.ok,
            "expected": self.verdict.expected,
            "observed": self.verdict.observed,
            "detail": self.verdict.detail,
            "attempts": self.attempts,
            "seconds": round(self.seconds, 3),
            "check": _redacted(self.check.to_dict(), self.secrets),
        }


def _redacted(value: Any, secrets: list[str]) -> Any:
    """``value`` (JSON-like) with every secret in its strings replaced by ``***``."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {k: _redacted(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v, secrets) for v in value]
    return value


@dataclass
class HostReport:
    """All check results for one host, or the error that kept the host from being checked."""

    host: str
    results: list[CheckResult] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    sessions: int = 0

    @property
    def ok(self) -> bool:
        """True when the host was reached and every check is green."""
        return self.error is None and all(r.ok for r in self.results)

    def result(self, name: str) -> CheckResult | None:
        """The result of the check named ``name``, if any."""
        return next((r for r in self.results if r.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return {
            "host": self.host,
            "ok": self.ok,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "sessions": self.sessions,
            "checks": [r.to_dict() for r in self.results],
        }


@dataclass
class VerifyReport:
    """The outcome of verifying a set of hosts: one :class:`HostReport` per host, in input order."""

    hosts: list[HostReport]
    started: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every host was reached and every check is green."""
        return all(h.ok for h in self.hosts)

    def host(self, name: str) -> HostReport | None:
        """The report of host ``name``, if it was verified."""
        return next((h for h in self.hosts if h.host == name), None)

    def counts(self) -> dict[str, int]:
        """Numbers for a summary: hosts, checks, green, red, unreachable hosts."""
        results = [r for h in self.hosts for r in h.results if h.error is None]
        return {
            "hosts": len(self.hosts),
            "checks": len(results),
            "green": sum(1 for r in results if r.ok),
            "red": sum(1 for r in results if not r.ok),
            "unreachable": sum(1 for h in self.hosts if h.error is not None),
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (secrets already redacted)."""
        return {
            "ok": self.ok,
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "summary": self.counts(),
            "hosts": [h.to_dict() for h in self.hosts],
        }


OnResult = Callable[[str, CheckResult], None]


@dataclass(frozen=True)
class Audit:
    """A verification that logs its verdict on the host in the session of its last attempt.

    ``tail`` (shell run after the probes' frames) reads one line from stdin and logs it; ``line`` is
    that line for a host's final report (empty: log nothing). When the last attempt's session could
    not carry it (it broke off, or the host has no probes to run), ``alone`` logs it in a session of
    its own.
    """

    tail: str
    line: Callable[[HostReport], bytes]
    alone: Callable[[Target, HostReport], None]


def verify_host(
    target: Target,
    checks: Sequence[Check],
    settings: VerifySettings,
    on_result: OnResult | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    first: Sequence[ProbeOutput] | None = None,
    audit: Audit | None = None,
) -> HostReport:
    """Verify one host "eventually"; never raises for an unreachable host (see ``HostReport.error``).

    :param first: the outputs of the first attempt's probes, taken already in another session (the
        preflight's): the first attempt then opens none.
    :param audit: log the verdict on the host, in the last attempt's session where it can.
    """
    started = time.monotonic()
    report = HostReport(target.name)
    secret_values = [v for c in checks for v in c.secret_values()]
    deadline = {id(c): started + (c.timeout if c.timeout is not None else settings.timeout) for c in checks}
    attempts = {id(c): 0 for c in checks}
    final: dict[int, CheckResult] = {}
    last: dict[int, Verdict] = {}
    history: dict[int, list[Verdict]] = {id(c): [] for c in checks}
    pending = list(checks)

    def settle(check: Check, verdict: Verdict) -> None:
        result = CheckResult(check, verdict, attempts[id(check)], time.monotonic() - started, secret_values)
        final[id(check)] = result
        if on_result is not None:
            on_result(target.name, result)

    logged = False

    def judge(attempt: list[Check], outputs: Sequence[ProbeOutput]) -> list[Check]:
        """Settle what this attempt decided; the checks to try again."""
        still_red: list[Check] = []
        for check, output in zip(attempt, outputs):
            attempts[id(check)] += 1
            given_up = False
            try:
                history[id(check)].append(check.evaluate(output))
                at_deadline = time.monotonic() + settings.interval >= deadline[id(check)]
                concluded, given_up = check.conclude(history[id(check)], last=at_deadline)
                verdict = concluded.redacted(secret_values)
            except Exception as exc:  # noqa: BLE001 - a judge bug must not hide the other checks
                verdict = Verdict(False, check.expectation(), f"could not judge the output ({exc})")
            if verdict.ok or given_up:
                settle(check, verdict)
            else:
                last[id(check)] = verdict
                still_red.append(check)
        now = time.monotonic()
        again = []
        for check in still_red:
            if now + settings.interval < deadline[id(check)]:
                again.append(check)
            else:
                settle(check, last[id(check)])
        return again

    def done() -> HostReport:
        report.results = [final[id(c)] for c in checks if id(c) in final]
        report.seconds = time.monotonic() - started
        return report

    while pending:
        limits = _limits(pending, deadline)
        attempt, judged = list(pending), [False]

        def answer(outputs: list[ProbeOutput], attempt: list[Check] = attempt, judged: list[bool] = judged) -> bytes:
            nonlocal pending, logged
            pending, judged[0] = judge(attempt, outputs), True
            if pending or audit is None:
                return b"\n"
            logged = True
            return audit.line(done())

        probed, first = first, None  # the first attempt's probes, if taken already
        # the verdict goes back in the session, unless a metric check may stop to ask a human meanwhile
        asks = audit is not None and probed is None and not any(c.local for c in attempt)
        try:
            outputs = run_attempt(target, attempt, limits, probed=probed, answer=answer if asks else None,
                                  tail=audit.tail if asks and audit is not None else "")
        except HostUnreachable as exc:
            report.error = redact(exc.reason, secret_values)
            break
        report.sessions += 1 if probed is None and any(not c.local for c in attempt) else 0
        if not judged[0]:
            pending = judge(attempt, outputs)
        if pending:
            sleep(settings.interval)
    done()
    if audit is not None and not logged and not report.error:
        audit.alone(target, report)
    return report


def _limits(checks: Sequence[Check], deadline: Mapping[int, float]) -> list[float]:
    now = time.monotonic()
    return [max(deadline[id(c)] - now, 1.0 if c.timeout else MIN_PROBE_SECONDS) for c in checks]


def first_limits(checks: Sequence[Check], settings: VerifySettings) -> list[float]:
    """The time limits of the probes of a first attempt under ``settings`` (as :func:`verify_host`
    gives them), for probes taken ahead of it."""
    now = time.monotonic()
    return _limits(checks, {id(c): now + (c.timeout if c.timeout is not None else settings.timeout) for c in checks})


def unverified(host: str, error: BaseException) -> HostReport:
    """The report of a host that could not be verified at all, saying why."""
    reason = error.reason if isinstance(error, HostUnreachable) else str(error) or type(error).__name__
    return HostReport(host, error=reason)


def run_checks(
    targets: Iterable[Target],
    checks: Sequence[Check],
    settings: VerifySettings | None = None,
    *,
    parallel: int = 10,
    on_result: OnResult | None = None,
    first: Mapping[str, Sequence[ProbeOutput]] | None = None,
    audit: Audit | None = None,
) -> VerifyReport:
    """Verify ``checks`` on every target, hosts in parallel; one session per host per attempt.

    :param settings: the suite's ``timeout`` and ``interval`` (default: 30s, every 1s).
    :param parallel: how many hosts are verified at once.
    :param on_result: called as ``on_result(host, result)`` as each check settles (serialised).
    :param first: by host, the first attempt's probe outputs, already taken (see :func:`verify_host`).
    :param audit: each host logs its verdict, in its last attempt's session where it can.
    """
    settings = settings or VerifySettings()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    started = time.monotonic()
    lock = threading.Lock()

    def report_one(host: str, result: CheckResult) -> None:
        if on_result is not None:
            with lock:
                on_result(host, result)

    def verify(target: Target) -> HostReport:
        return verify_host(target, checks, settings, report_one, first=(first or {}).get(target.name), audit=audit)

    hosts: list[HostReport] = []
    for target, outcome in in_parallel(list(targets), verify, limit=parallel):
        hosts.append(outcome if isinstance(outcome, HostReport) else unverified(target.name, outcome))
    return VerifyReport(hosts, started=started_at, seconds=time.monotonic() - started)
