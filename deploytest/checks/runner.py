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
from typing import Any, Callable, Iterable, Sequence

from ..config import VerifySettings
from ..errors import HostUnreachable
from ..hosts import CommandTimeout, Target, in_parallel
from .base import Check, ProbeOutput, Verdict, redact
from .script import NO_TMPDIR, ProbeJob, build_script, new_nonce, parse_frames, secret_stdin

#: The shortest time a probe is given on the host when its check sets no ``timeout`` of its own,
#: even when the suite's deadline is closer (a suite timeout of 0 means "check once").
MIN_PROBE_SECONDS = 10.0
#: Slack for the whole session beyond the longest probe (connection, start-up, framing).
SESSION_SLACK_SECONDS = 15.0


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


def run_attempt(target: Target, checks: Sequence[Check], limits: Sequence[float]) -> list[ProbeOutput]:
    """One attempt of ``checks`` about ``target``: the probes as one script on the host (one session),
    and the local checks (``metric``) measured from this machine at the same time; outputs in order.

    :param limits: per-check time limits on the host, in seconds.
    :raises HostUnreachable: the host could not be reached.
    """
    local = {i: c for i, c in enumerate(checks) if c.local}
    if not local:
        return run_probes(target, checks, limits)
    measured: dict[int, ProbeOutput] = {}

    def measure(index: int, check: Check) -> None:
        try:
            measured[index] = check.measure(target)
        except Exception as exc:  # noqa: BLE001 - a measuring bug is that check's red, not the host's
            measured[index] = ProbeOutput(1, stderr=f"could not measure ({exc})".encode())

    threads = [threading.Thread(target=measure, args=item, daemon=True) for item in local.items()]
    for thread in threads:
        thread.start()
    remote = [(i, c, limit) for i, (c, limit) in enumerate(zip(checks, limits)) if i not in local]
    probed = run_probes(target, [c for _i, c, _l in remote], [lim for _i, _c, lim in remote]) if remote else []
    outputs: dict[int, ProbeOutput] = {i: out for (i, _c, _l), out in zip(remote, probed)}
    for thread in threads:
        thread.join()
    outputs.update(measured)
    return [outputs[i] for i in range(len(checks))]


def run_probes(target: Target, checks: Sequence[Check], limits: Sequence[float]) -> list[ProbeOutput]:
    """Run the probes of ``checks`` on ``target`` as one script (one session); outputs in order.

    :param limits: per-check time limits on the host, in seconds.
    :raises HostUnreachable: the host could not be reached.
    """
    jobs = [ProbeJob(i, c.probe(), limit, c.capture_bytes(), tuple(c.secret_env()))  # probe() names them
            for i, (c, limit) in enumerate(zip(checks, limits))]
    secret_env: dict[str, str] = {}
    for check in checks:
        secret_env.update(check.secret_env())
    nonce = new_nonce()
    script = build_script(jobs, secret_env, nonce)
    session_limit = max(limits, default=MIN_PROBE_SECONDS) + SESSION_SLACK_SECONDS
    try:
        result = target.run(script, stdin=secret_stdin(secret_env), timeout=session_limit)
    except CommandTimeout:
        return [
            ProbeOutput(
                -1,
                stderr=f"the check session ran past {session_limit:g}s".encode(),
                timed_out=True,
                seconds_limit=session_limit,
            )
            for _ in checks
        ]
    frames = parse_frames(result.stdout, nonce, jobs)
    missing_reason = (
        "no usable temporary directory on the host"
        if result.exit_code == NO_TMPDIR
        else (result.stderr.strip().splitlines() or [f"the check script exited {result.exit_code}"])[-1]
    )
    return [frames.get(i) or ProbeOutput(-1, stderr=missing_reason.encode()) for i in range(len(checks))]


def verify_host(
    target: Target,
    checks: Sequence[Check],
    settings: VerifySettings,
    on_result: OnResult | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> HostReport:
    """Verify one host "eventually"; never raises for an unreachable host (see ``HostReport.error``)."""
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

    while pending:
        now = time.monotonic()
        limits = [max(deadline[id(c)] - now, 1.0 if c.timeout else MIN_PROBE_SECONDS) for c in pending]
        try:
            outputs = run_attempt(target, pending, limits)
        except HostUnreachable as exc:
            report.error = redact(exc.reason, secret_values)
            break
        report.sessions += 1 if any(not c.local for c in pending) else 0
        still_red: list[Check] = []
        for check, output in zip(pending, outputs):
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
        pending = []
        for check in still_red:
            if now + settings.interval < deadline[id(check)]:
                pending.append(check)
            else:
                settle(check, last[id(check)])
        if pending:
            sleep(settings.interval)
    report.results = [final[id(c)] for c in checks if id(c) in final]
    report.seconds = time.monotonic() - started
    return report


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
) -> VerifyReport:
    """Verify ``checks`` on every target, hosts in parallel; one session per host per attempt.

    :param settings: the suite's ``timeout`` and ``interval`` (default: 30s, every 1s).
    :param parallel: how many hosts are verified at once.
    :param on_result: called as ``on_result(host, result)`` as each check settles (serialised).
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
        return verify_host(target, checks, settings, report_one)

    hosts: list[HostReport] = []
    for target, outcome in in_parallel(list(targets), verify, limit=parallel):
        hosts.append(outcome if isinstance(outcome, HostReport) else unverified(target.name, outcome))
    return VerifyReport(hosts, started=started_at, seconds=time.monotonic() - started)
