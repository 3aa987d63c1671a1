"""What a host holds: release ids and states, the releases and lock seen there, and the pure decisions
taken from them (preflight, rollback target, cleanup).

The layout is Capistrano's::

    <deploy_to>/releases/<id>/          one directory per release
    <deploy_to>/shared/                 the shared paths, linked into every release
    <deploy_to>/current                 absolute symlink to the live release, replaced by rename
    <deploy_to>/.deploytest/lock        the deploy lock (see :mod:`deploytest.lock`)
    <deploy_to>/.deploytest/journal     the rollout under way (see :mod:`deploytest.lock`)
    <deploy_to>/.deploytest/log.jsonl   one JSON object per deploy, rollback, verify, unlock
    <deploy_to>/.deploytest/releases/<id>.meta   a release's label, who, when and state (a record of
                                        :mod:`deploytest.records`; ``<id>.json`` before it, still read)

A release's state is ``preparing`` while it is built, ``complete`` once built, ``verified`` once it passed
its verification live, ``bad`` once it failed it; a directory without metadata (made by hand or by another
tool) is ``unknown``. Only complete and verified releases go live, count toward ``keep_releases`` or are
rolled back to; metadata is written before the directory, so an interrupted prepare is ``preparing`` and
removed by the next cleanup.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Optional, Sequence

from . import records
from .config import Settings
from .errors import UsageError, fab_command
from .lock import Journal, LockInfo

COMPLETE = "complete"
VERIFIED = "verified"
BAD = "bad"
PREPARING = "preparing"
UNKNOWN = "unknown"

RELEASE_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]*$")
_TIMESTAMP_ID = re.compile(r"^\d{14}$")


# -- release ids ---------------------------------------------------------------------------------


def new_release_id(existing_ids: Iterable[str], now: datetime | None = None) -> str:
    """A release id: UTC ``YYYYMMDDHHMMSS``, strictly greater than every timestamp-shaped existing id.

    The caller picks it once for a whole rollout (the same on every host), from the union of every
    host's ids. A clock behind the newest id gives that id + 1, so ids still sort by deploy order.
    """
    moment = now or datetime.now(timezone.utc)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    candidate = int(moment.strftime("%Y%m%d%H%M%S"))
    newest = max((int(i) for i in existing_ids if _TIMESTAMP_ID.fullmatch(i)), default=0)
    return str(max(candidate, newest + 1))


def check_release_id(release_id: str) -> str:
    """``release_id`` if it is a plain name (letters, digits, ``.``, ``_``, ``-``; no path, no shell).

    :raises UsageError: otherwise (exit 2).
    """
    if not isinstance(release_id, str) or not RELEASE_ID.fullmatch(release_id) or len(release_id) > 100:
        raise UsageError(
            f"release {release_id!r} is not a release name (letters, digits, '.', '_', '-')."
            " Nothing was changed."
        )
    return release_id


# -- host state ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseInfo:
    """One release directory on a host and its metadata."""

    id: str
    state: str = UNKNOWN
    label: str = ""
    who: str = ""
    when: str = ""
    revision: str = ""

    @property
    def good(self) -> bool:
        """Built and not bad (complete or verified): may go live, counts toward ``keep_releases``."""
        return self.state in (COMPLETE, VERIFIED)

    @property
    def verified(self) -> bool:
        """Was live and passed its verification: a rollback target."""
        return self.state == VERIFIED


@dataclass(frozen=True)
class HostState:
    """What :func:`inspect` saw on one host."""

    host: str
    deploy_to: str
    exists: bool = False
    writable: bool = False
    free_mb: Optional[int] = None
    releases: tuple[ReleaseInfo, ...] = ()
    live: Optional[str] = None
    current: str = ""
    current_kind: str = "none"
    lock: Optional[LockInfo] = None
    last_event: Optional[dict[str, Any]] = field(default=None, hash=False, compare=False)
    local: bool = False  # the local machine: on-call hints then carry no -H
    suites: frozenset[str] = frozenset()  # ids of the releases that have a recorded suite
    journal: Optional[Journal] = None  # the rollout that is (or was, if interrupted) under way here
    live_suite: Optional[str] = None  # the suite recorded with the live release

    def fab(self, task: str) -> str:
        """The command that runs ``task`` on this host, as an operator types it."""
        return fab_command(task, [self.host], local=self.local)

    @property
    def release_ids(self) -> list[str]:
        """Every release directory's id, oldest first."""
        return [r.id for r in self.releases]

    def release(self, release_id: str) -> ReleaseInfo | None:
        """The release with this id, if the host has it."""
        return next((r for r in self.releases if r.id == release_id), None)

    @property
    def previous(self) -> str | None:
        """Where a rollback goes: the newest verified release older than the live one."""
        if self.live is None:
            return None
        older = [r.id for r in self.releases if r.verified and r.id < self.live]
        return older[-1] if older else None

    @property
    def interrupted(self) -> bool:
        """A rollout's journal is here and its owner is gone (no lock of its own, or a stale one)."""
        if self.journal is None:
            return False
        lock = self.lock
        return lock is None or lock.token != self.journal.rollout or lock.staleness() is not None


def parse_state(host: str, settings: Settings, stdout: str) -> HostState:
    """A :class:`HostState` from the output of the inspect script (pure).

    A record file is printed one line per control line (``lock``, ``journal``; a release's ``meta`` lines
    follow its ``release`` line); a file of the earlier format is one line of JSON, read just the same.
    """
    exists = writable = False
    free: int | None = None
    current, kind = "", "none"
    lock_lines: list[str] = []
    lock_age: int | None = None
    last: dict[str, Any] | None = None
    found: list[tuple[str, str, list[str]]] = []
    suites: set[str] = set()
    journal_lines: list[str] = []
    live_suite: str | None = None
    for line in stdout.splitlines():
        if not line.startswith("@@dt "):
            continue
        key, _, value = line[5:].partition("\t")
        if key == "exists":
            exists = value == "1"
        elif key == "writable":
            writable = value == "1"
        elif key == "free":
            free = int(value) if value.strip().isdigit() else None
        elif key == "current":
            kind, _, current = value.partition("\t")
        elif key == "release":
            rid, _, rest = value.partition("\t")
            state, _, meta = rest.partition("\t")
            found.append((rid, state, [meta] if meta.strip() else []))
        elif key == "meta" and found:
            found[-1][2].append(value)
        elif key == "journal":
            journal_lines.append(value)
        elif key == "livesuite":
            live_suite = value.strip() or None
        elif key == "lock":
            lock_lines.append(value)
        elif key == "lockage":
            lock_age = int(value) if value.strip().lstrip("-").isdigit() else None
        elif key == "suite":
            suites.add(value.strip())
        elif key == "last":
            last = _json_object(value)
    releases = sorted((_release_info(rid, state, "\n".join(meta)) for rid, state, meta in found
                       if RELEASE_ID.fullmatch(rid)), key=lambda r: r.id)
    live = live_id(current, settings) if kind == "link" else None
    lock = LockInfo.parse("\n".join(lock_lines), lock_age) if lock_lines else None
    journal = Journal.parse("\n".join(journal_lines)) if journal_lines else None
    return HostState(host, settings.deploy_to, exists, writable, free, tuple(releases), live, current, kind,
                     lock, last, suites=frozenset(suites), journal=journal, live_suite=live_suite)


def live_id(link: str, settings: Settings) -> str | None:
    """The release a ``current`` link target lies in (absolute, or relative to ``deploy_to``), or None.

    A link into a release's subdirectory (``releases/<id>/public``) names ``<id>``: that release is
    what serves, and must not be taken for removable. A link outside ``<deploy_to>/releases`` names
    none. The shell's ``dt_live`` reads a link the same way.
    """
    link = link.rstrip("/")
    if not link.startswith("/"):
        link = f"{settings.deploy_to}/{link}"
    prefix = f"{settings.releases_dir}/"
    if not link.startswith(prefix):
        return None
    name = link[len(prefix):].split("/", 1)[0]
    return name if RELEASE_ID.fullmatch(name) else None


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _release_info(rid: str, state: str, meta: str) -> ReleaseInfo:
    """A release from the host's word on its state (markers win over the metadata) and its metadata."""
    data = dict(records.load(meta))
    if not data:
        return ReleaseInfo(rid)
    state = state.strip() or str(data.get("state", UNKNOWN))
    return ReleaseInfo(
        rid,
        state if state in (COMPLETE, VERIFIED, BAD, PREPARING) else UNKNOWN,
        str(data.get("label", "")),
        str(data.get("who", "")),
        str(data.get("when", "")),
        str(data.get("revision", "")),
    )


def preflight_problem(state: HostState, need_mb: int, *, resolving: bool = False) -> str | None:
    """Why this host cannot take a deploy now (one line), or None (pure).

    :param resolving: for a rollback that undoes an interrupted rollout: its journal and its dead
        lock are what it comes for, not a refusal.
    """
    if not state.writable:
        where = state.deploy_to if state.exists else f"the parent of {state.deploy_to}"
        return f"cannot write {where} (set deploytest.sudo or fix permissions)"
    if state.free_mb is not None and state.free_mb < need_mb:
        return f"only {state.free_mb} MB free at {state.deploy_to}, need {need_mb} MB"
    if state.current_kind == "other":
        return f"{state.deploy_to}/current exists and is not a symlink; move it away first"
    if resolving and state.interrupted:
        return None
    if state.interrupted and state.journal is not None:
        return (f"an interrupted {state.journal.describe()} is unresolved here (live: {state.live or 'nothing'});"
                " undo it first with rollback")
    if state.lock is not None:
        stale = state.lock.staleness()
        if stale:
            return f"locked by {state.lock.describe()}, stale ({stale}); unlock it once checked"
        return (f"locked by {state.lock.describe()} ({state.lock.liveness()}): another deploy is running;"
                " wait for it (unlock --force only if it is really dead)")
    return None


def preflight_hint(states: Sequence[HostState]) -> str:
    """ONE next command for the hosts a preflight refused, in the order that works: undo an interrupted
    rollout (rollback replaces its dead locks itself), else unlock stale locks; '' if neither applies."""
    interrupted = [s for s in states if s.interrupted]
    if interrupted:
        return fab_command("rollback", [s.host for s in interrupted], local=interrupted[0].local) \
            + "   (undoes the interrupted rollout)"
    stale = [s for s in states if s.lock is not None and s.lock.staleness()]
    if stale:
        return fab_command("unlock", [s.host for s in stale], local=stale[0].local)
    busy = [s for s in states if s.lock is not None]
    if busy:
        return (f"wait for the running deploy; only if it is really dead: "
                f"{fab_command('unlock --force', [s.host for s in busy], local=busy[0].local)}")
    return ""


def rollback_target(state: HostState, to: str | None = None, *, force: bool = False) -> str:
    """The release a rollback on this host goes to: ``to``, or the previous verified release (pure).

    :param force: ``to`` may be a complete release that was never verified live.
    :raises UsageError: ``to`` is not a plain release name, not on the host, bad, unverified without
        ``force`` or already live; or there is no previous verified release (exit 2, nothing changed).
    """
    host = state.host
    if to is None:
        if state.previous is None:
            live = state.live or "nothing"
            older = [r.id for r in state.releases if r.good and state.live and r.id < state.live]
            hint = (f"; {older[-1]} is older but was never verified live: rollback --to {older[-1]} --force"
                    if older else "")
            raise UsageError(
                f"{host}: no previous verified release to roll back to (live: {live}){hint}. Nothing was changed.",
                hosts=[host],
                next_step=state.fab("releases"),
            )
        return state.previous
    check_release_id(to)
    info = state.release(to)
    if info is None:
        known = ", ".join(state.release_ids[-5:]) or "none"
        raise UsageError(f"{host}: release {to} does not exist (latest: {known}). Nothing was changed.",
                         hosts=[host], next_step=state.fab("releases"))
    if not info.good:
        raise UsageError(f"{host}: release {to} is {info.state}; it cannot go live. Nothing was changed.",
                         hosts=[host])
    if not info.verified and not force:
        raise UsageError(f"{host}: release {to} was never verified live (unverified); to go back to it anyway:"
                         f" rollback --to {to} --force. Nothing was changed.", hosts=[host])
    if to == state.live:
        raise UsageError(f"{host}: release {to} is already live. Nothing was changed.", hosts=[host])
    return to


def cleanup_plan(state: HostState, keep: int) -> list[str]:
    """Release ids a cleanup removes (pure; the remote script applies the same rule).

    Kept: the ``keep`` newest good (complete or verified) releases, the live one and the rollback
    target; ``unknown`` directories are never touched. Removed: everything else (bad, preparing,
    older good ones).
    """
    kept = {r.id for r in [r for r in state.releases if r.good][-keep:]} if keep > 0 else set()
    kept |= {rid for rid in (state.live, state.previous) if rid is not None}
    return [r.id for r in state.releases if r.id not in kept and r.state != UNKNOWN]
