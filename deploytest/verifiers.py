"""What the red-green flow calls to verify hosts, and how to plug your own verify step into it.

A :data:`Verifier` takes targets and the ``verify`` settings and returns a :class:`VerifyReport`. The
default runs the configured checks (one command per host per attempt). :func:`python_verifier` turns
plain Python functions, written with :mod:`deploytest.assertions` the way pytest tests are, into a
verifier with the same "eventually" semantics and the same reports::

    from deploytest.assertions import assert_http, assert_process

    def app_is_running(target):
        assert_process(target, "hello.py")
        assert_http(target, "http://127.0.0.1:8000/health", contains="ok")

    run = Rollout(settings, targets, console, verifier=python_verifier(app_is_running))
    deploy_and_verify(run)
"""

from __future__ import annotations

import time
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

from .checks.base import Check, ProbeOutput, Verdict
from .checks.runner import CheckResult, HostReport, VerifyReport, run_checks, unverified
from .config import Settings, VerifySettings
from .errors import HostUnreachable
from .hosts import Cancelled, Target, in_parallel

Verifier = Callable[[Sequence[Target], VerifySettings, Sequence[str]], VerifyReport]
"""``verifier(targets, verify_settings, only)``: ``only`` limits the checks by name (empty: all)."""

HostFunction = Callable[[Target], None]


def checks_verifier(checks: Sequence[Check], *, parallel: int = 10) -> Verifier:
    """The default verifier: the configured checks, all of a host's in one command per attempt."""

    def verify(targets: Sequence[Target], settings: VerifySettings, only: Sequence[str]) -> VerifyReport:
        picked = [c for c in checks if not only or c.name in only]
        return run_checks(list(targets), picked, settings, parallel=parallel)

    return verify


def suite_verifier(settings: Settings, *, parallel: int = 10,
                   skip_tests: Optional[Callable[[Check], bool]] = None) -> Verifier:
    """The configured suite: ``settings.checks`` and ``settings.tests`` (pytest, see
    :mod:`deploytest.pytest_suite`), side by side; one report per host with the checks' results, then
    the tests'. ``only`` names checks and test ids.

    :param skip_tests: tests left out (a rollback's: red in the baseline, word for word).
    """
    checks = checks_verifier(list(settings.checks), parallel=parallel)
    if settings.tests is None:
        return checks
    from .pytest_suite import deployment_tests_verifier

    tests = deployment_tests_verifier(settings, parallel=parallel, skip=skip_tests)
    if not settings.checks:
        return tests

    def verify(targets: Sequence[Target], verify_settings: VerifySettings, only: Sequence[str]) -> VerifyReport:
        started = time.monotonic()
        parts = [checks, tests]
        done = in_parallel(parts, lambda part: part(targets, verify_settings, only), limit=2)
        reports = [r for _part, r in done if isinstance(r, VerifyReport)]
        for _part, result in done:
            if isinstance(result, BaseException):
                raise result
        return merge(reports, started)

    return verify


def merge(reports: Sequence[VerifyReport], started: float) -> VerifyReport:
    """One report from several of the same hosts: each host's results in order, its first error."""
    hosts: dict[str, HostReport] = {}
    for report in reports:
        for host in report.hosts:
            into = hosts.setdefault(host.host, HostReport(host.host))
            into.results += host.results
            into.error = into.error or host.error
            into.seconds = max(into.seconds, host.seconds)
            into.sessions += host.sessions
    first = next((r.started for r in reports if r.started), "")
    return VerifyReport(list(hosts.values()), started=first, seconds=time.monotonic() - started)


class FunctionCheck(Check):
    """A Python function run against a host; it is green when it returns, red when it raises."""

    kind: ClassVar[str] = "python"
    fields: ClassVar[Mapping[str, Any]] = {}
    primary: ClassVar[str] = ""

    def __init__(self, function: HostFunction) -> None:
        super().__init__({}, name=getattr(function, "__name__", "python check").replace("_", " "))
        self.function = function

    def subject(self) -> str:
        return getattr(self.function, "__name__", "function")

    def expectation(self) -> str:
        return "no assertion failed"

    def probe(self) -> str:
        return "true"  # not run: the function talks to the host itself

    def judge(self, output: ProbeOutput) -> Verdict:
        del output
        return Verdict(True, self.expectation(), "passed")


def _attempt(check: FunctionCheck, target: Target) -> Verdict:
    """One run of a verify function: green when it returns, red (with what it raised) otherwise."""
    try:
        check.function(target)
    except AssertionError as error:
        return Verdict(False, check.expectation(), _first_line(error) or "an assertion failed")
    except (HostUnreachable, Cancelled, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001 - a broken verify step is red, named, never a lost host
        return Verdict(False, check.expectation(), f"raised {type(error).__name__}: {_first_line(error)}".rstrip(": "))
    return Verdict(True, check.expectation(), "passed")


def _first_line(error: BaseException) -> str:
    text = str(error)
    return text.splitlines()[0] if text else ""


def python_verifier(*functions: HostFunction, parallel: int = 10) -> Verifier:
    """A verifier from functions ``fn(target)`` that raise ``AssertionError`` when a host is not right.

    Each function gets its own ``timeout`` window and is re-run every ``interval`` while it fails;
    hosts in parallel. Any other exception is a red result naming it (an unreachable host stays a
    host error).
    """
    checks = [FunctionCheck(fn) for fn in functions]

    def verify_one(target: Target, settings: VerifySettings, picked: list[FunctionCheck]) -> HostReport:
        started = time.monotonic()
        report = HostReport(target.name)
        for check in picked:
            attempts = 0
            window = time.monotonic()
            while True:
                attempts += 1
                verdict = _attempt(check, target)
                if verdict.ok or time.monotonic() - window + settings.interval > settings.timeout:
                    break
                time.sleep(settings.interval)
            report.results.append(CheckResult(check, verdict, attempts, time.monotonic() - window))
        report.seconds = time.monotonic() - started
        return report

    def verify(targets: Sequence[Target], settings: VerifySettings, only: Sequence[str]) -> VerifyReport:
        picked = [c for c in checks if not only or c.name in only]
        hosts: list[HostReport] = []
        for target, result in in_parallel(list(targets), lambda t: verify_one(t, settings, picked),
                                          limit=parallel):
            hosts.append(result if isinstance(result, HostReport) else unverified(target.name, result))
        return VerifyReport(hosts)

    return verify
