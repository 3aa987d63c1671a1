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
pytest's process-wide helpers that threads would fight over are off in these sessions (output capture
is deploytest's own: what a test prints is kept off the console; see :data:`_OFF` for the plugins not
loaded), and the module globals where pytest keeps "the current session" are put back afterwards.

The files are recorded with each verified release (:func:`snapshot`: a tar.gz, base64, bounded by
:data:`MAX_ARCHIVE`); a rollback to that release runs them from a temporary directory (:func:`workspace`).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import gc
import gzip
import hashlib
import io
import json
import os
import posixpath
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, ClassVar, Iterator, Mapping, Optional, Sequence

import pytest

from . import pytest_plugin
from .checks.base import Check, ProbeOutput, Verdict
from .checks.runner import CheckResult, HostReport, VerifyReport, unverified
from .checks.schema import Field
from .config import DeploymentTests, Settings, VerifySettings
from .errors import ConfigError, HostUnreachable
from .hosts import Cancelled, Target, in_parallel

#: The most the recorded test files may take in a release's suite (base64 of their tar.gz): the suite
#: travels to each host inside one remote command, which the kernel bounds at 128 KiB.
MAX_ARCHIVE = 48 * 1024
#: Plugins these sessions never load: process-wide state that parallel sessions would fight over.
_OFF = ("deploytest", "cacheprovider", "warnings", "faulthandler", "unraisableexception", "threadexception",
        "debugging", "pastebin", "junitxml", "doctest", "stepwise", "setuponly", "setupplan")
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


# -- the files: today's, or recorded with a release ----------------------------------------------


def files_of(tests: DeploymentTests, base_dir: str) -> list[str]:
    """The files the tests need, relative to ``base_dir``: everything under the named directories and
    the named files, with the ``conftest.py`` and ``__init__.py`` files above them (sorted)."""
    found: set[str] = set()
    for path in tests.paths:
        rel = posixpath.normpath(path.split("::", 1)[0])
        full = os.path.join(base_dir, rel)
        if os.path.isdir(full):
            for root, dirs, files in os.walk(full):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
                for name in files:
                    if not name.startswith(".") and not name.endswith((".pyc", ".pyo")):
                        candidate = os.path.join(root, name)
                        if os.path.isfile(candidate) and not os.path.islink(candidate):
                            found.add(os.path.relpath(candidate, base_dir))
        elif os.path.isfile(full):
            found.add(rel)
        parent = posixpath.dirname(rel) if not os.path.isdir(full) else rel
        while True:
            for name in ("conftest.py", "__init__.py"):
                candidate = posixpath.join(parent, name) if parent else name
                if os.path.isfile(os.path.join(base_dir, candidate)):
                    found.add(candidate)
            if not parent:
                break
            parent = posixpath.dirname(parent)
    return sorted(found)


def pack(tests: DeploymentTests, base_dir: str) -> str:
    """The test files as base64 of a reproducible tar.gz (same files, same text)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in files_of(tests, base_dir):
            with open(os.path.join(base_dir, rel), "rb") as handle:
                data = handle.read()
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(gzip.compress(raw.getvalue(), mtime=0)).decode("ascii")


def unpack(archive: str, into: str) -> None:
    """Write recorded test files under ``into`` (regular files with relative paths only)."""
    data = gzip.decompress(base64.b64decode(archive.encode("ascii")))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for member in tar.getmembers():
            name = posixpath.normpath(member.name)
            if not member.isreg() or posixpath.isabs(name) or name.startswith(".."):
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            path = os.path.join(into, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(source.read())


def snapshot(settings: Settings) -> Settings:
    """``settings`` whose suite records today's test files (to go with each verified release).

    :raises ConfigError: the files are past :data:`MAX_ARCHIVE` or cannot be read (exit 2).
    """
    tests = settings.tests
    if tests is None or tests.archive is not None:
        return settings
    try:
        archive = pack(tests, settings.base_dir)
    except OSError as error:
        raise ConfigError(f"config deploytest.tests: cannot read the test files ({error})."
                          " Nothing was changed.") from None
    if len(archive) > MAX_ARCHIVE:
        raise ConfigError(f"config deploytest.tests: the test files take {len(archive) // 1024} KiB packed; at most"
                          f" {MAX_ARCHIVE // 1024} KiB are recorded with a release (its rollback runs them)."
                          " Nothing was changed.")
    suite = json.loads(settings.suite)
    recorded = dataclasses.replace(tests, archive=archive)
    suite["tests"] = recorded.to_dict()
    return dataclasses.replace(settings, tests=recorded,
                               suite=json.dumps(suite, sort_keys=True, separators=(",", ":")))


@dataclass
class Workspace:
    """Where a session runs: its rootdir, the paths to hand pytest, and the directories whose modules
    are the tests' own (imported anew by each verification)."""

    rootdir: str
    paths: list[str]
    own: list[str]


@contextlib.contextmanager
def workspace(tests: DeploymentTests, base_dir: str) -> Iterator[Workspace]:
    """Today's files in ``base_dir``, or the recorded ones unpacked into a temporary directory."""
    if tests.archive is None:
        own = []
        for path in tests.paths:
            full = os.path.join(base_dir, path.split("::", 1)[0])
            own.append(full if os.path.isdir(full) else os.path.dirname(full))
        yield Workspace(base_dir, [_arg(base_dir, p) for p in tests.paths], own)
        return
    with tempfile.TemporaryDirectory(prefix="deploytest-tests-") as tmp:
        unpack(tests.archive, tmp)
        yield Workspace(tmp, [_arg(tmp, p) for p in tests.paths], [tmp])


def _arg(root: str, path: str) -> str:
    """A path (or node id) for pytest: relative to the current directory when under it, as pytest's
    own messages then read."""
    file_part, sep, rest = path.partition("::")
    full = os.path.join(root, file_part)
    cwd = os.getcwd()
    shown = os.path.relpath(full, cwd) if (full + os.sep).startswith(cwd + os.sep) or full == cwd else full
    return shown + sep + rest


def _args(tests: DeploymentTests, space: Workspace, *extra: str) -> list[str]:
    off = [arg for name in _OFF for arg in ("-p", f"no:{name}")]
    return [*off, "--rootdir", space.rootdir, "-q", *tests.args, "--capture=no", *extra, *space.paths]


# -- the process-wide state sessions touch ------------------------------------------------------------


class _Routed(io.TextIOBase):
    """sys.stdout / sys.stderr while sessions run: what a session's thread writes is kept off the console."""

    def __init__(self, original: Any) -> None:
        self.original = original
        self.kept: dict[int, list[str]] = {}

    def write(self, text: str) -> int:
        kept = self.kept.get(threading.get_ident())
        if kept is None:
            return int(self.original.write(text))
        if sum(map(len, kept)) < 64 * 1024:
            kept.append(text)
        return len(text)

    def flush(self) -> None:
        if threading.get_ident() not in self.kept:
            self.original.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return int(self.original.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self.original, "encoding", "utf-8") or "utf-8")


_ROUTE_LOCK = threading.Lock()
_ACTIVE = [0]
_SAVED: list[Any] = []


@contextlib.contextmanager
def _sessions_quiet() -> Iterator[None]:
    """Route the sessions' threads' output away (see :class:`_Routed`), keep pytest from setting
    ``PYTEST_CURRENT_TEST`` from many threads at once (one environment for the whole process), and put
    back afterwards the module globals where pytest keeps its current session (sessions side by side
    would leave them pointing at one another: every session kept alive)."""
    import _pytest.assertion.util as assertion_util
    import _pytest.runner as runner
    from _pytest.mark import MARK_GEN

    globals_ = ((MARK_GEN, "_config"), (assertion_util, "_reprcompare"), (assertion_util, "_assertion_pass"),
                (assertion_util, "_config"))
    with _ROUTE_LOCK:
        if _ACTIVE[0] == 0:
            _SAVED[:] = [sys.stdout, sys.stderr, runner._update_current_test_var,
                         [(owner, name, getattr(owner, name, None)) for owner, name in globals_]]
            sys.stdout, sys.stderr = _Routed(sys.stdout), _Routed(sys.stderr)
            runner._update_current_test_var = _no_current_test_var
        _ACTIVE[0] += 1
    try:
        yield
    finally:
        with _ROUTE_LOCK:
            _ACTIVE[0] -= 1
            if _ACTIVE[0] == 0:
                sys.stdout, sys.stderr, runner._update_current_test_var, saved = _SAVED
                for owner, name, value in saved:
                    setattr(owner, name, value)
                gc.collect()  # the sessions' cycles, at once: memory stays flat from one verification to the next


def _no_current_test_var(item: Any, when: Any) -> None:
    del item, when


@contextlib.contextmanager
def _keep() -> Iterator[list[str]]:
    """Within :func:`_sessions_quiet`: this thread's output is kept (returned), not shown."""
    kept: list[str] = []
    streams = [s for s in (sys.stdout, sys.stderr) if isinstance(s, _Routed)]
    for stream in streams:
        stream.kept[threading.get_ident()] = kept
    try:
        yield kept
    finally:
        for stream in streams:
            stream.kept.pop(threading.get_ident(), None)


@contextlib.contextmanager
def _imports_undone(space: Workspace) -> Iterator[None]:
    """The test modules (and conftest.py files) imported and the ``sys.path`` entries added while
    sessions ran are dropped afterwards: the next verification, maybe with a release's recorded files,
    imports its own. Other modules the tests imported stay."""
    modules, path = set(sys.modules), list(sys.path)
    own = tuple(os.path.realpath(d) + os.sep for d in space.own)
    root = os.path.realpath(space.rootdir) + os.sep
    try:
        yield
    finally:
        for name in [n for n in list(sys.modules) if n not in modules]:
            where = os.path.realpath(getattr(sys.modules.get(name), "__file__", None) or "/")
            if where.startswith(own) or (where.startswith(root) and os.path.basename(where) == "conftest.py"):
                sys.modules.pop(name, None)
        sys.path[:] = [p for p in sys.path if p in path] + [p for p in path if p not in sys.path]


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


def _ctrl_c(excinfo: pytest.ExceptionInfo[BaseException]) -> bool:
    """Ctrl-C, not pytest's own stop (``Interrupted: 1 error during collection``, ``pytest.exit()``)."""
    return excinfo.errisinstance(KeyboardInterrupt) and not excinfo.errisinstance(pytest.Session.Interrupted)


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


def _reason_of(longrepr: Any) -> str:
    """pytest's one line for a failure: its ``E`` line (``SyntaxError: ...``), else its last line."""
    crash = getattr(longrepr, "reprcrash", None)
    text = str(longrepr)
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    if errors:
        return errors[-1]
    if crash is not None and getattr(crash, "message", None):
        return str(crash.message).splitlines()[0]
    return lines[-1].strip() if lines else "failed"


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


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
                    self.cancelled = Cancelled(f"{self.target.name}: interrupted (Ctrl-C)")
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
    from .state import live_id
    from .steps import script_for_current

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
