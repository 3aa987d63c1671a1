"""Assertions for Python code and pytest: the same checks as ``deploytest.checks``, one call each.

Each function takes where to check: a Fabric ``Connection`` (that host), an invoke ``Context``
(this machine) or a :class:`~deploytest.hosts.Target` (what the pytest plugin's fixtures give),
runs the check through the same engine as ``fab verify`` and raises :class:`CheckFailed` with the
failure line when it is red::

    from deploytest.assertions import assert_http, assert_port

    def test_app(deploytest_host):
        assert_port(deploytest_host, 8000, within=10)
        assert_http(deploytest_host, "http://127.0.0.1:8000/health", contains="ok")
"""

from __future__ import annotations

import weakref
from typing import Any, Mapping, Sequence, Union

from fabric import Connection
from invoke.context import Context

from .checks import make_check, parse_check
from .checks.base import Check
from .checks.runner import CheckResult, HostReport, run_checks
from .config import VerifySettings
from .host_keys import secure
from .hosts import LocalTarget, Target
from .report_text import host_error_line, result_line
from .ssh import SSHTarget

Where = Union[Target, Connection, Context]
CheckSpec = Union[Check, Mapping[str, Any]]

_TARGETS: weakref.WeakKeyDictionary[Connection, SSHTarget] = weakref.WeakKeyDictionary()


class CheckFailed(AssertionError):
    """A check was red (or its host unreachable); the message is the failure line(s)."""

    def __init__(self, message: str, report: HostReport) -> None:
        super().__init__(message)
        self.report = report


def as_target(where: Where) -> Target:
    """The :class:`Target` for a Connection (that host), a Context (this machine) or a Target."""
    if isinstance(where, Target):
        return where
    if isinstance(where, Connection):
        target = _TARGETS.get(where)
        if target is None:
            # Fabric alone accepts any host key; check it against known_hosts as OpenSSH would.
            target = _TARGETS[where] = SSHTarget(where if where.is_connected else secure(where))
        return target
    if isinstance(where, Context):
        return LocalTarget()
    raise TypeError(f"expected a fabric Connection, an invoke Context or a deploytest Target, got {where!r}")


def check_all(
    where: Where,
    checks: Sequence[CheckSpec],
    *,
    within: float = 0.0,
    interval: float = 1.0,
) -> HostReport:
    """Run ``checks`` on one host in one session per attempt; raise :class:`CheckFailed` if any is red.

    :param checks: :class:`Check` objects or config mappings like ``{"port": 8000}``.
    :param within: seconds to keep re-checking what is red ("eventually"); 0 checks once.
    :param interval: seconds between attempts.
    :returns: the host's report, all green.
    """
    __tracebackhide__ = True  # pytest shows the failure line, not these frames
    built = [c if isinstance(c, Check) else parse_check(c, f"checks[{i}]") for i, c in enumerate(checks)]
    target = as_target(where)
    report = run_checks([target], built, VerifySettings(timeout=within, interval=interval)).hosts[0]
    if not report.ok:
        lines = [result_line(report.host, r) for r in report.results if not r.ok]
        if report.error is not None:
            lines.append(host_error_line(report))
        raise CheckFailed("\n".join(lines), report)
    return report


def _one(where: Where, kind: str, within: float, interval: float, params: dict[str, Any]) -> CheckResult:
    __tracebackhide__ = True  # pytest shows the failure line, not these frames
    report = check_all(where, [make_check(kind, **params)], within=within, interval=interval)
    return report.results[0]


def assert_command(
    where: Where,
    run: str,
    *,
    exit: int | list[int] = 0,
    stdout: str | None = None,
    stderr: str | None = None,
    within: float = 0.0,
    interval: float = 1.0,
    **params: Any,
) -> CheckResult:
    """Assert a command's exit status and output (``stdout``/``stderr`` contain; see the command check)."""
    __tracebackhide__ = True  # pytest shows the failure line, not these frames
    return _one(
        where, "command", within, interval, dict(params, run=run, exit=exit, stdout=stdout, stderr=stderr)
    )


def assert_file(
    where: Where, path: str, *, within: float = 0.0, interval: float = 1.0, **params: Any
) -> CheckResult:
    """Assert facts about a path: ``exists``, ``type``, ``mode``, ``owner``, ``contains``, ``sha256``..."""
    __tracebackhide__ = True  # pytest shows the failure line, not these frames
    return _one(where, "file", within, interval, dict(params, path=path))


def assert_http(
    where: Where,
    url: str,
    status: int | list[int] = 200,
    contains: str | None = None,
    *,
    within: float = 0.0,
    interval: float = 1.0,
    **params: Any,
) -> CheckResult:
    """Assert an HTTP response seen from the host: ``status``, ``contains``, ``json``, ``header``..."""
    __tracebackhide__ = True  # pytest shows the failure line, not these frames
    return _one(where, "http", within, interval, dict(params, url=url, status=status, contains=contains))


def assert_port(
    where: Where, port: int, *, within: float = 0.0, interval: float = 1.0, **params: Any
) -> CheckResult:
    """Assert something listens on ``port`` on the host (``proto``, ``address``, ``listening``)."""
    __tracebackhide__ = True  # pytest shows the failure line, not these frames
    return _one(where, "port", within, interval, dict(params, port=port))


def assert_tcp(
    where: Where, host: str, port: int, *, within: float = 0.0, interval: float = 1.0, **params: Any
) -> CheckResult:
    """Assert the host can open a TCP connection to ``host:port``."""
    __tracebackhide__ = True  # pytest shows the failure line, not these frames
    return _one(where, "tcp", within, interval, dict(params, host=host, port=port))


def assert_service(
    where: Where, name: str, *, within: float = 0.0, interval: float = 1.0, **params: Any
) -> CheckResult:
    """Assert a service is ``running`` (and ``enabled``) under systemd, supervisor or SysV init."""
    __tracebackhide__ = True  # pytest shows the failure line, not these frames
    return _one(where, "service", within, interval, dict(params, name=name))


def assert_process(
    where: Where, pattern: str, *, within: float = 0.0, interval: float = 1.0, **params: Any
) -> CheckResult:
    """Assert processes match ``pattern`` (``user``, ``count``, ``min``, ``max``)."""
    __tracebackhide__ = True  # pytest shows the failure line, not these frames
    return _one(where, "process", within, interval, dict(params, pattern=pattern))


def assert_package(
    where: Where,
    name: str,
    version: str | None = None,
    *,
    within: float = 0.0,
    interval: float = 1.0,
    **params: Any,
) -> CheckResult:
    """Assert a package is installed, optionally at a ``version`` like ``">=1.2"``."""
    __tracebackhide__ = True  # pytest shows the failure line, not these frames
    return _one(where, "package", within, interval, dict(params, name=name, version=version))


def assert_user(
    where: Where, name: str, *, within: float = 0.0, interval: float = 1.0, **params: Any
) -> CheckResult:
    """Assert a user exists (``uid``, ``groups``, ``home``, ``shell``)."""
    __tracebackhide__ = True  # pytest shows the failure line, not these frames
    return _one(where, "user", within, interval, dict(params, name=name))


def assert_group(
    where: Where, name: str, *, within: float = 0.0, interval: float = 1.0, **params: Any
) -> CheckResult:
    """Assert a group exists (``gid``, ``members``)."""
    __tracebackhide__ = True  # pytest shows the failure line, not these frames
    return _one(where, "group", within, interval, dict(params, name=name))


def assert_database(
    where: Where,
    engine: str,
    *,
    query: str = "SELECT 1",
    equals: str | int | float | None = None,
    contains: str | None = None,
    within: float = 0.0,
    interval: float = 1.0,
    **params: Any,
) -> CheckResult:
    """Assert a database answers ``query`` (postgres, mysql, sqlite); credentials never shown."""
    __tracebackhide__ = True  # pytest shows the failure line, not these frames
    return _one(
        where,
        "database",
        within,
        interval,
        dict(params, engine=engine, query=query, equals=equals, contains=contains),
    )


def assert_disk(
    where: Where, path: str = "/", *, within: float = 0.0, interval: float = 1.0, **params: Any
) -> CheckResult:
    """Assert free space on the filesystem of ``path`` (``min_free_mb``, ``max_used_percent``)."""
    __tracebackhide__ = True  # pytest shows the failure line, not these frames
    return _one(where, "disk", within, interval, dict(params, path=path))
