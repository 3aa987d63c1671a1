"""The plan of a deploy on one host: every script it runs, one per remote session, for ``--dry-run``.

The steps themselves are in :mod:`deploytest.steps` and :mod:`deploytest.prepare`, what a host holds in
:mod:`deploytest.state`, the lock and journal in :mod:`deploytest.lock`.
"""

from __future__ import annotations

from .config import Settings
from .lock import LockOwner
from .prepare import script_for_prepare
from .source import Package
from .steps import script_for_finish, script_for_inspect_and_lock, script_for_switch_and_restart


def plan(settings: Settings, release_id: str, package: Package, owner: LockOwner) -> list[tuple[str, str]]:
    """``(step, script)`` of a deploy on one host, one per session, for ``--dry-run``: nothing runs."""
    return [
        ("inspect, lock", script_for_inspect_and_lock(settings, owner)),
        ("prepare, build", script_for_prepare(settings, release_id, package, owner.who, build=True, owner=owner)),
        ("switch, restart", script_for_switch_and_restart(settings, release_id)),
        ("finish", script_for_finish(settings, owner, {"event": "deploy", "release": release_id})),
    ]
