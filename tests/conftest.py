"""Shared pytest fixtures of the deploytest test suite."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import testbed  # noqa: E402
from reports_check import _deploytest_reports_are_valid  # noqa: E402,F401 - every report a test writes is checked

# Tests press Ctrl-C on the fab they start (SIGINT). A suite started in the background of a
# non-interactive shell (``cmd &``, nohup, some CI runners) inherits SIGINT ignored, and so would
# every fab it starts: Python then keeps it ignored and the "Ctrl-C" never arrives. A handled SIGINT
# here is reset to the default in each child at exec, where Python makes it KeyboardInterrupt again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# ==================================================================================================
# SSH test bed fixtures (tests/testbed.py): real OpenSSH servers to deploy to.
#
#   ssh_host                      a TestBed with one Host: sshd on 127.0.0.1:<free port> (function scope)
#   make_hosts(n, prefix="web", rtt_ms=None, jitter_ms=0)
#                                 a TestBed with n namespaced hosts <prefix>1..<prefix>n, each with its own
#                                 198.18.x.y address on port 22, processes, hostname and /srv, optionally a
#                                 round-trip time on the path to each sshd (function scope; all beds made
#                                 in a test are torn down after it)
#
# They FAIL (never skip) with one line naming what is missing when the machine cannot run them.
# ==================================================================================================


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a slower integration test (still run in CI)")
    config.addinivalue_line(
        "markers",
        "testbed: needs this machine as root: the real SSH test bed (sshd, namespaces), or system files,"
        " initdb or sudo; -m 'not testbed' is what any user can run",
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    # Leftovers of earlier runs that died without cleaning up (SIGKILL, power loss...).
    if os.geteuid() == 0:
        try:
            testbed.sweep_stale()
        except Exception as exc:  # never block the run on housekeeping
            print(f"testbed: sweeping stale test beds failed: {exc}", file=sys.stderr)


def _start(factory: Callable[[], testbed.TestBed]) -> testbed.TestBed:
    try:
        return factory()
    except testbed.TestBedError as exc:
        problem = str(exc)
    # Outside the except block, so the report is this one line, without a chained traceback.
    pytest.fail(f"SSH test bed unavailable: {problem}", pytrace=False)


@pytest.fixture
def ssh_host() -> Iterator[testbed.TestBed]:
    """One sshd on 127.0.0.1 (own /srv and hostname "local"): a TestBed with a single Host."""
    bed = _start(testbed.start_local)
    try:
        yield bed
    finally:
        bed.close()


@pytest.fixture
def make_hosts() -> Iterator[Callable[..., testbed.TestBed]]:
    """Factory: ``make_hosts(n, prefix="web", rtt_ms=None, jitter_ms=0)`` -> TestBed with hosts
    <prefix>1..<prefix>n (see ``testbed.start_hosts``)."""
    beds: List[testbed.TestBed] = []

    def make(n: int, prefix: str = "web", **options: Any) -> testbed.TestBed:
        bed = _start(lambda: testbed.start_hosts(n, prefix=prefix, **options))
        beds.append(bed)
        return bed

    try:
        yield make
    finally:
        for bed in beds:
            bed.close()


@pytest.fixture
def three(make_hosts: Callable[..., testbed.TestBed], tmp_path: Path) -> Dict[str, Any]:
    """Three test hosts and a project deploying the hello example to them in one batch (the hosts
    restart together; canary batches are the flow tests' business)."""
    from project import hello_bed

    return hello_bed(make_hosts, tmp_path, 3, rollout={"batches": ["100%"], "max_fail": 0, "parallel": 10})


# ============================================ end of SSH test bed fixtures ========================


# ==================================================================================================
# Real services for the check tests (tests/services.py): http_app, postgres, supervisor (session scope).
# ==================================================================================================

from services import http_app, postgres, supervisor  # noqa: E402,F401
