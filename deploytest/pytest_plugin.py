"""pytest plugin: write deployment checks as tests, run them over SSH hosts or this machine.

Options: ``--deploytest-hosts=web1,web2`` (hosts or ssh_config aliases; none means this machine)
and ``--deploytest-ssh-config=PATH``. Fixtures:

- ``deploytest_host``: one test per host, a :class:`~deploytest.hosts.Target` to pass to the
  functions of :mod:`deploytest.assertions` (session scope: fixtures of any scope may use it; tests
  run host by host);
- ``deploytest_hosts``: all the targets at once, for :func:`deploytest.checks.run_checks`;
- ``deploytest_release``: the release live on the host under test (``--deploytest-release=ID`` when
  run by hand; the test is skipped without it).

The same files run in every verification of ``fab deploy-and-verify`` when ``deploytest.tests``
names them (see :mod:`deploytest.pytest_suite`): there each session is lent the rollout's own target
for one host, and ``deploytest_release`` reads what is live on it.

Host keys are checked against known_hosts as OpenSSH does (see :func:`deploytest.ssh.connect`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import pytest
from fabric import Config

from .hosts import LOCAL, LocalTarget, Target, host_list
from .ssh import connect

_TARGETS = pytest.StashKey[dict[str, Target]]()
_LENT = pytest.StashKey[tuple[Target, Callable[[Target], Optional[str]]]]()


def lend(config: pytest.Config, target: Target, release: Callable[[Target], Optional[str]]) -> None:
    """Make this session's tests run against ``target`` alone (deploytest's own runs): no
    parametrisation, no connection of the plugin's own; ``release(target)`` gives the live release."""
    config.stash[_LENT] = (target, release)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--deploytest-hosts`` and ``--deploytest-ssh-config``."""
    group = parser.getgroup("deploytest", "deployment checks (deploytest)")
    group.addoption(
        "--deploytest-hosts",
        default=None,
        metavar="HOSTS",
        help="comma-separated hosts or ssh_config aliases to check (default: this machine)",
    )
    group.addoption(
        "--deploytest-release",
        default=None,
        metavar="ID",
        help="the release id the deploytest_release fixture gives (what is live on the hosts)",
    )
    group.addoption(
        "--deploytest-ssh-config",
        default=None,
        metavar="PATH",
        help="ssh_config file to read host aliases, users, ports and keys from",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Refuse an ``--deploytest-ssh-config`` that names no file, in one line before any test runs."""
    path = _ssh_config_path(config)
    if path is not None and not os.path.isfile(path):
        raise pytest.UsageError(f"--deploytest-ssh-config: no such file: {path}")


def _ssh_config_path(config: pytest.Config) -> str | None:
    ssh_config = config.getoption("--deploytest-ssh-config", default=None)
    return os.path.expanduser(ssh_config) if ssh_config else None


def host_names(config: pytest.Config) -> list[str]:
    """The hosts given with ``--deploytest-hosts``, in order, without repeats; [local] when none."""
    return host_list(str(config.getoption("--deploytest-hosts", default=None) or "")) or [LOCAL]


def _target(config: pytest.Config, name: str) -> Target:
    targets = config.stash.setdefault(_TARGETS, {})
    if name not in targets:
        if name == LOCAL:
            targets[name] = LocalTarget()
        else:
            path = _ssh_config_path(config)
            fabric_config = Config(runtime_ssh_path=path) if path else Config()
            targets[name] = connect(name, fabric_config)
    return targets[name]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One test per host for tests that use ``deploytest_host`` (one host in deploytest's own runs)."""
    if "deploytest_host" in metafunc.fixturenames and _LENT not in metafunc.config.stash:
        names = host_names(metafunc.config)
        metafunc.parametrize("deploytest_host", names, indirect=True, ids=names)


@pytest.fixture(scope="session")
def deploytest_host(request: pytest.FixtureRequest) -> Target:
    """The host this test runs against (parametrised over ``--deploytest-hosts``)."""
    lent = request.config.stash.get(_LENT, None)
    if lent is not None:
        return lent[0]
    name = getattr(request, "param", None) or host_names(request.config)[0]
    return _target(request.config, str(name))


@pytest.fixture(scope="session")
def deploytest_hosts(request: pytest.FixtureRequest) -> list[Target]:
    """Every host of ``--deploytest-hosts`` (this machine when none)."""
    lent = request.config.stash.get(_LENT, None)
    if lent is not None:
        return [lent[0]]
    return [_target(request.config, name) for name in host_names(request.config)]


_RELEASES = pytest.StashKey[dict[str, Optional[str]]]()


@pytest.fixture(scope="session")
def deploytest_release(request: pytest.FixtureRequest, deploytest_host: Target) -> Optional[str]:
    """The release id live on the host under test (None: nothing is live there)."""
    lent = request.config.stash.get(_LENT, None)
    if lent is None:
        given = request.config.getoption("--deploytest-release", default=None)
        if not given:
            pytest.skip("deploytest_release: give the live release with --deploytest-release=ID")
        return str(given)
    known = request.config.stash.setdefault(_RELEASES, {})
    if deploytest_host.name not in known:
        known[deploytest_host.name] = lent[1](deploytest_host)
    return known[deploytest_host.name]


def pytest_report_header(config: pytest.Config) -> Any:
    """Say which hosts the deployment checks run against."""
    return "deploytest hosts: " + ", ".join(host_names(config))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Close the SSH connections opened for the session."""
    for target in config.stash.get(_TARGETS, {}).values():
        target.close()
