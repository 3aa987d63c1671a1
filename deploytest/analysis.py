"""Canary versus the rest: which hosts of the running rollout a switched host is compared with.

While a batch is verified, the flow names the hosts of the same rollout that still run the release
everyone had before (:func:`comparing`); a ``metric`` check with ``compare`` measures them at the same
moment as the host under test (see :mod:`deploytest.checks.metric`). Outside a rollout (``fab verify``,
the baseline, a rollback's verification) there is nothing to compare with.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Sequence

from .hosts import Target

_lock = threading.Lock()
_baseline: list[Target] = []


@contextlib.contextmanager
def comparing(baseline_hosts: Sequence[Target]) -> Iterator[None]:
    """While the block runs, ``baseline_hosts`` (not switched yet) are what switched hosts compare with.

    :param baseline_hosts: the rollout's hosts still on the release they had before it.
    """
    global _baseline
    with _lock:
        before, _baseline = _baseline, list(baseline_hosts)
    try:
        yield
    finally:
        with _lock:
            _baseline = before


def baseline_for(host: str) -> list[Target]:
    """The hosts ``host`` is compared with now (never itself); empty outside a rollout's batch."""
    with _lock:
        return [t for t in _baseline if t.name != host]


def address_of(target: Target) -> str:
    """The address this machine reaches ``target`` at (ssh_config's HostName), 127.0.0.1 for local."""
    connection = getattr(target, "connection", None)
    host = getattr(connection, "host", None)
    return str(host) if host else "127.0.0.1"
