"""pytest deployment tests as a verification suite: collected at preflight, run in-process per host.

``deploytest.tests`` names files, directories or node ids relative to the fabfile's directory. They
run with the configured checks in every verification (baseline, each batch, a rollback's), one result
per host per test id, "eventually" like checks: only the red tests are re-run, only on the hosts where
they are red, every ``verify.interval`` until ``verify.timeout``.

How they run: one pytest session (``pytest.main`` in this process, with a plugin object) per host per
verification, the hosts' sessions side by side in threads (they configure and collect one at a time,
then run together: the tests' time is the hosts' round trips). Each session collects once, then its
own run loop re-runs its red items until they are green or time is up. ``deploytest_host`` is the
rollout's own :class:`~deploytest.hosts.Target` (its already-open connection: no new SSH connection
per attempt), ``deploytest_release`` the release live there. Why one session per host: pytest's
fixtures and setup state are not safe to share between threads, and a session per host keeps every
fixture (``conftest.py``, scope="session" included) exactly as pytest makes it, with hosts in parallel.
How the sessions share this process is :mod:`deploytest.pytest_sessions`.

The files are recorded with each verified release and a rollback to it runs them from there
(:mod:`deploytest.suite_files`).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import pytest

from . import pytest_plugin
from .checks.base import Check, ProbeOutput, Verdict
from .checks.runner import CheckResult, HostReport, VerifyReport, unverified
from .checks.schema import Field
from .config import Settings, VerifySettings
from .errors import ConfigError, HostUnreachable, interrupted
from .hosts import Cancelled, Target, in_parallel
from .pytest_sessions import _args, _ctrl_c, _imports_undone, _keep, _one_line, _reason_of, _sessions_quiet
from .suite_files import workspace

_EXPECTED = "pass"


class Placeholder(Target):
    """The host of a collect-only session: never run."""

    name = "collect"

    def run(self, script: str, *, stdin: bytes | None = None, timeout: float | None = None,
            reply: Any = None) -> Any:
        raise HostUnreachable(self.name, "collect-only: no host")


class TestCheck(Check):
    """One pytest test (by test id) as a check of the suite: green when it passes."""

    __test__ = False  # not a pytest test class
    kind: ClassVar[str] = "pytest"
    fields: ClassVar[Mapping[str, Field]] = {"test": Field("text", required=True), "sha256": Field("str")}
    primary: ClassVar[str] = "test"

    def __init__(self, nodeid: str, sha256: str = "") -> None:
        super().__init__({"test": nodeid, "sha256": sha256} if sha256 else {"test": nodeid}, name=nodeid)

    def subject(self) -> str:
        return self.name

    def expectation(self) -> str:
        return _EXPECTED

    def probe(self) -> str:
        return "true"  # not run: the test talks to the host itself

    def judge(self, output: ProbeOutput) -> Verdict:
        del output
        return Verdict(True, _EXPECTED, "passed")


# -- preflight: collect once, refuse what pytest would refuse ---------------------------------------


class _Collector:
    """Plugin of a collect-only session: the items, and the first reason they cannot run."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.problem = ""
        self.interrupted = False

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        self.interrupted = _ctrl_c(excinfo)

    def pytest_configure(self, config: pytest.Config) -> None:
        pytest_plugin.lend(config, Placeholder(), lambda target: None)  # node ids as in the real runs

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed and not self.problem:
            self.problem = f"{report.nodeid or 'collection'} does not collect: {_reason_of(report.longrepr)}"

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            missing = _missing_fixtures(item)
            if missing and not self.problem:
                self.problem = f"{item.nodeid}: fixture '{missing[0]}' not found"
            self.ids.append(item.nodeid)


def _missing_fixtures(item: pytest.Item) -> list[str]:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    return [name for name in info.names_closure if name != "request" and name not in info.name2fixturedefs]


def collect(settings: Settings) -> list[str]:
    """Collect the configured tests on this machine (no host needed): their test ids.

    :raises ConfigError: a file that does not import or collect, a missing fixture, a bad pytest
        argument or no tests at all: pytest's own reason in one line (exit 2, nothing changed).
    """
    tests = settings.tests
    if tests is None:
        return []
    collector = _Collector()
    with workspace(tests, settings.base_dir) as space, _sessions_quiet(), _imports_undone(space), \
            _keep() as kept:
        code = pytest.main(_args(tests, space, "--collect-only"), plugins=[pytest_plugin, collector])
    if collector.interrupted:
        raise KeyboardInterrupt
    problem = collector.problem
    if not problem and code not in (0, 5):
        lines = [line.strip() for line in "".join(kept).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith(("ERROR", "E ")) or "error: " in line]
        problem = (errors or lines or [f"pytest exited {int(code)}"])[-1]
    if not problem and not collector.ids:
        problem = f"no tests collected from {', '.join(tests.paths)}"
    if problem:
        raise ConfigError(f"config deploytest.tests: {_one_line(problem)}. Nothing was changed.")
    return collector.ids


# -- a verification: one session per host, side by side ------------------------------------------------


Skip = Callable[[TestCheck], bool]
_SETUP = threading.Lock()


@dataclass
class _Outcome:
    """What one item did in one attempt."""

    ok: bool = True
    observed: str = "passed"
    lost: Optional[BaseException] = None


@dataclass(eq=False)  # a plugin: hashed by identity
class _HostSession:
    """The plugin of one host's session: runs its items "eventually" and keeps their verdicts."""

    target: Target
    settings: VerifySettings
    only: frozenset[str]
    skip: Optional[Skip]
    release: Callable[[Target], Optional[str]]
    results: list[CheckResult] = field(default_factory=list)
    error: Optional[str] = None
    cancelled: Optional[BaseException] = None
    interrupted: bool = False
    setting_up: bool = False  # holds _SETUP: configuring and collecting, one session at a time
    _now: dict[str, _Outcome] = field(default_factory=dict)
    _digests: dict[str, str] = field(default_factory=dict)
    _checks: dict[str, TestCheck] = field(default_factory=dict)

    def pytest_configure(self, config: pytest.Config) -> None:
        pytest_plugin.lend(config, self.target, self.release)

    def collected(self) -> None:
        """Let the next host's session configure and collect (pytest imports conftest.py files by
        removing and re-importing a module named ``conftest``: two sessions at once would race)."""
        if self.setting_up:
            self.setting_up = False
            _SETUP.release()

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            check = TestCheck(report.nodeid or "collection")
            verdict = Verdict(False, _EXPECTED, f"does not collect: {_reason_of(report.longrepr)}")
            self.results.append(CheckResult(check, verdict, 1, 0.0))

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        kept = []
        for item in items:
            check = TestCheck(item.nodeid, self._digest(str(item.path)))
            if (self.only and item.nodeid not in self.only) or (self.skip is not None and self.skip(check)):
                continue
            self._checks[item.nodeid] = check
            kept.append(item)
        items[:] = kept

    def _digest(self, path: str) -> str:
        if path not in self._digests:
            try:
                with open(path, "rb") as handle:
                    self._digests[path] = hashlib.sha256(handle.read()).hexdigest()
            except OSError:
                self._digests[path] = ""
        return self._digests[path]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        """Run every item, then only the red ones every ``interval`` until ``timeout``."""
        from .hosts import _CANCEL

        self.collected()

        started = time.monotonic()
        deadline = started + self.settings.timeout
        attempts = {item.nodeid: 0 for item in session.items}
        final: dict[str, CheckResult] = {}
        last: dict[str, Verdict] = {}
        pending = list(session.items)
        while pending and self.error is None and self.cancelled is None:
            red = []
            for index, item in enumerate(pending):
                self._now[item.nodeid] = _Outcome()
                nextitem = pending[index + 1] if index + 1 < len(pending) else None
                item.ihook.pytest_runtest_protocol(item=item, nextitem=nextitem)
                outcome = self._now.pop(item.nodeid)
                attempts[item.nodeid] += 1
                if outcome.lost is not None:
                    return True
                verdict = Verdict(outcome.ok, _EXPECTED, outcome.observed)
                if outcome.ok:
                    final[item.nodeid] = self._result(item.nodeid, verdict, attempts, started)
                else:
                    last[item.nodeid] = verdict
                    red.append(item)
            now = time.monotonic()
            pending = [item for item in red if now + self.settings.interval < deadline]
            for item in red:
                if item not in pending:
                    final[item.nodeid] = self._result(item.nodeid, last[item.nodeid], attempts, started)
            if pending:
                if _CANCEL.wait(self.settings.interval):
                    self.cancelled = Cancelled(f"{self.target.name}: {interrupted()}")
        self.results += [final[item.nodeid] for item in session.items if item.nodeid in final]
        return True

    def _result(self, nodeid: str, verdict: Verdict, attempts: dict[str, int], started: float) -> CheckResult:
        return CheckResult(self._checks[nodeid], verdict, attempts[nodeid], time.monotonic() - started)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
        report = yield
        outcome = self._now.get(item.nodeid)
        if outcome is None or not outcome.ok:
            return report
        excinfo = call.excinfo
        if excinfo is not None and excinfo.errisinstance((HostUnreachable, Cancelled)):
            outcome.ok, outcome.lost = False, excinfo.value
            if isinstance(excinfo.value, HostUnreachable):
                self.error = excinfo.value.reason
            else:
                self.cancelled = excinfo.value
            item.session.shouldstop = "deploytest: host lost"
        elif report.failed:
            outcome.ok = False
            outcome.observed = _observed(call.when, excinfo, report)
        elif report.skipped and call.when != "teardown":
            outcome.observed = _skipped(report)
        return report

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        self.interrupted = _ctrl_c(excinfo)


def _observed(when: str, excinfo: Any, report: pytest.TestReport) -> str:
    """``expected status 200, got 500``, or ``raised KeyError: 'x'`` for anything but an assertion."""
    phase = "" if when == "call" else f"in {when}: "
    if excinfo is None:
        return phase + _one_line(_reason_of(report.longrepr))
    error = excinfo.value
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    red = [r for r in getattr(getattr(error, "report", None), "results", []) if not r.ok]
    if isinstance(error, AssertionError) and red and isinstance(red[0], CheckResult):  # deploytest.assertions
        verdict = red[0].verdict
        return phase + _one_line(f"{red[0].name}: expected {verdict.expected}, got {verdict.observed}")
    if isinstance(error, AssertionError):
        message = _reason_of(report.longrepr) if not first else first
        return phase + _one_line(message.removeprefix("AssertionError: ") or "an assertion failed")
    if isinstance(error, pytest.fail.Exception):
        return phase + _one_line(first or "failed")
    return phase + _one_line(f"raised {type(error).__name__}: {first}".rstrip(": "))


def _skipped(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed"
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else ""
    return _one_line(f"skipped: {str(reason).removeprefix('Skipped: ')}".rstrip(": "))


def live_release(settings: Settings) -> Callable[[Target], Optional[str]]:
    """How ``deploytest_release`` learns the release live on a host: read its ``current`` link."""
    from .inspection import script_for_current
    from .state import live_id

    def read(target: Target) -> Optional[str]:
        result = target.run(script_for_current(settings), timeout=30)
        return live_id(result.stdout.strip(), settings)

    return read


def deployment_tests_verifier(settings: Settings, *, parallel: int = 10, skip: Optional[Skip] = None) -> Callable[
        [Sequence[Target], VerifySettings, Sequence[str]], VerifyReport]:
    """A verifier running ``settings.tests`` (today's files, or a release's recorded ones) on each host.

    :param skip: tests left out (the rollback's: red in the baseline, word for word).
    """
    tests = settings.tests
    assert tests is not None
    reader = live_release(settings)

    def verify(targets: Sequence[Target], verify_settings: VerifySettings, only: Sequence[str]) -> VerifyReport:
        started, started_at = time.monotonic(), datetime.now(timezone.utc).isoformat(timespec="seconds")
        hosts: list[HostReport] = []
        with workspace(tests, settings.base_dir) as space, _sessions_quiet(), _imports_undone(space):
            args = _args(tests, space)

            def one(target: Target) -> HostReport:
                return _run_host(target, args, verify_settings, frozenset(only), skip, reader)

            for target, result in in_parallel(list(targets), one, limit=parallel):
                if isinstance(result, KeyboardInterrupt):
                    raise result
                hosts.append(result if isinstance(result, HostReport) else unverified(target.name, result))
        return VerifyReport(hosts, started=started_at, seconds=time.monotonic() - started)

    return verify


def _run_host(target: Target, args: list[str], settings: VerifySettings, only: frozenset[str],
              skip: Optional[Skip], reader: Callable[[Target], Optional[str]]) -> HostReport:
    started = time.monotonic()
    session = _HostSession(target, settings, only, skip, reader)
    _SETUP.acquire()  # released once the session has collected (see _HostSession.setting_up)
    session.setting_up = True
    try:
        with _keep() as kept:
            code = pytest.main(args, plugins=[pytest_plugin, session])
    finally:
        session.collected()
    if session.interrupted:
        raise KeyboardInterrupt
    if session.cancelled is not None:
        raise session.cancelled
    report = HostReport(target.name, session.results, session.error, time.monotonic() - started)
    if session.error is None and int(code) in (3, 4) and not session.results:
        lines = [line.strip() for line in "".join(kept).splitlines() if line.strip()]
        report.results.append(CheckResult(TestCheck("pytest"), Verdict(False, _EXPECTED, _one_line(
            (lines or [f"pytest exited {int(code)}"])[-1])), 1, 0.0))
    return report
