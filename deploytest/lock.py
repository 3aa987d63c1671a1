"""The deploy lock on a host, and the journal of the rollout that holds it.

The lock is ``<deploy_to>/.deploytest/lock``: a record (:mod:`deploytest.records`) naming who holds it
(user, the machine they deploy from, pid, when it started) and a random token. It is taken atomically by
writing a temporary file and hard-linking it to ``lock`` (``ln`` fails if ``lock`` exists), so the lock
never exists without its owner. It is released only by the owner whose token it holds; ``force_unlock``
(the ``unlock`` task) removes it whoever holds it and says whose it was. A lock or journal written by an
earlier deploytest (one line of JSON) is still read, and released by its token.
"""

from __future__ import annotations

import getpass
import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any, Mapping

from . import records
from .audit import log_body, utc_now
from .config import Settings
from .errors import LockHeld, UsageError
from .hosts import Target
from .remote import run_script
from .shell import Body, script

#: Seconds between two heartbeats of a running rollout on each host it holds locked.
HEARTBEAT_SECONDS = 15.0
#: A lock whose last heartbeat is older than this is stale: its rollout is gone.
STALE_AFTER_SECONDS = 60
#: A rollout of more hosts than ``rollout.parallel`` closes a host's connection once its batch is done
#: (the last batch's after their finish; no thread per host outlives its batch) and renews that host's
#: lock only every half of this: its locks say so (``lease``), and stay live this long without a heartbeat.
PARKED_LEASE_SECONDS = 600


@dataclass(frozen=True)
class LockInfo:
    """Who holds a host's deploy lock, as written in the lock file.

    :ivar age: seconds since the holder's last heartbeat (the lock file's mtime), when read from a host.
    """

    user: str
    host: str
    pid: int
    started: str
    token: str = ""
    release: str = ""
    age: int | None = None
    lease: int = 0  # seconds the lock stays live without a heartbeat, when longer than STALE_AFTER_SECONDS

    @property
    def holder(self) -> str:
        """``alice@laptop (pid 4242)``."""
        return f"{self.user}@{self.host} (pid {self.pid})"

    def describe(self) -> str:
        """``alice@laptop (pid 4242) since 2026-11-25T10:00:01Z``."""
        return f"{self.holder} since {self.started}"

    def staleness(self) -> str | None:
        """Why this lock is stale (its rollout is gone), or None while it is live (pure but for the pid)."""
        if self.looks_dead():
            return "its process is no longer running"
        if self.age is not None and self.age > max(STALE_AFTER_SECONDS, self.lease):
            return f"no heartbeat for {_duration(self.age)}"
        return None

    def liveness(self) -> str:
        """``live, last heartbeat 3s ago`` or ``stale: no heartbeat for 5m``."""
        stale = self.staleness()
        if stale:
            return f"stale: {stale}"
        beat = f", last heartbeat {_duration(self.age)} ago" if self.age is not None else ""
        return f"live{beat}"

    def looks_dead(self) -> bool:
        """True when the holder ran on this machine and its process is gone (a stale lock)."""
        if self.host != socket.gethostname() or self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False

    @classmethod
    def parse(cls, text: str, age: int | None = None) -> LockInfo:
        """A lock from its file content (either format); a damaged file gives a lock held by "unknown"."""
        data = dict(records.load(text))
        if not data:
            return cls(user="unknown", host="unknown", pid=0, started="unknown", age=age)
        return cls(
            user=str(data.get("user", "unknown")),
            host=str(data.get("host", "unknown")),
            pid=records.number(data.get("pid")),
            started=str(data.get("started", "unknown")),
            token=str(data.get("token", "")),
            release=str(data.get("release", "") or ""),
            age=age,
            lease=records.number(data.get("lease")),
        )


def _duration(seconds: int | None) -> str:
    """``42s``, ``5m``, ``3h``."""
    if seconds is None:
        return "?"
    seconds = max(0, seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


@dataclass(frozen=True)
class LockOwner(LockInfo):
    """This deploy, as it writes itself into the locks it takes."""

    @classmethod
    def new(cls, release: str = "") -> LockOwner:
        """The current process: local user and hostname, pid, now (UTC), a fresh random token."""
        return cls(
            user=getpass.getuser(),
            host=socket.gethostname(),
            pid=os.getpid(),
            started=utc_now(),
            token=secrets.token_hex(16),
            release=release,
        )

    @property
    def who(self) -> str:
        """``alice@laptop``: what release metadata and the log record as "who"."""
        return f"{self.user}@{self.host}"

    def to_record(self) -> str:
        """The lock file's content."""
        fields: dict[str, object] = {"user": self.user, "host": self.host, "pid": self.pid,
                                     "started": self.started, "token": self.token, "release": self.release}
        if self.lease:
            fields["lease"] = self.lease
        return records.format_record(fields)


def _check_token(token: str) -> str:
    if not token or not all(c in "0123456789abcdef" for c in token):
        raise UsageError(f"lock token {token!r} is not a hex string")
    return token


def script_for_acquire_lock(settings: Settings, owner: LockOwner, journal: Journal | None = None,
                            takeover: str = "") -> str:
    """Shell text that takes the lock (and writes ``journal`` with it), or prints the holder; one session.

    :param takeover: the token of a dead rollout's lock that this one may replace (by rename).
    """
    values: dict[str, object] = {"token": _check_token(owner.token), "lock_record": owner.to_record()}
    write_journal = ""
    if journal is not None:
        values["journal_record"] = journal.to_record()
        write_journal = """\
if ! { printf '%s' "$journal_record" > "$S/journal.tmp" && mv -f -- "$S/journal.tmp" "$S/journal"; } 2>/dev/null
then
  rm -f -- "$S/journal.tmp"; dt_holds "$token" && rm -f -- "$S/lock"; dt_fail lock "cannot write $S/journal"
fi
"""
    steal = ""
    if takeover:
        values["takeover"] = _check_token(takeover)
        steal = 'if dt_holds "$takeover" && mv -f -- "$tmp" "$S/lock" 2>/dev/null; then dt_locked; fi\n'
    return script(settings, f"""\
out=$(mkdir -p -- "$S" 2>&1) || dt_fail lock "cannot create $S: $out"
dt_locked() {{
{write_journal}  printf '@@dt locked\\n'; exit 0
}}
tmp="$S/lock.$token"
printf '%s' "$lock_record" > "$tmp" || {{ rm -f -- "$tmp"; dt_fail lock "cannot write $tmp"; }}
if ln -- "$tmp" "$S/lock" 2>/dev/null; then rm -f -- "$tmp"; dt_locked; fi
{steal}rm -f -- "$tmp"
if dt_holds "$token"; then printf '@@dt locked\\n'; exit 0; fi
dt_show held "$S/lock"
""", values)


@dataclass(frozen=True)
class Journal:
    """What a rollout records on a host before it changes anything there, so that an interrupted one
    (its owner killed, its machine gone) can be told and undone: who, which release, what was live
    before, and the steps it completed (``prepared``, ``switched``, ``restarted``)."""

    rollout: str  # the token of the rollout's lock
    who: str
    pid: int
    host: str  # the machine the rollout ran from
    release: str
    previous: str | None
    started: str
    steps: tuple[str, ...] = ()

    def describe(self) -> str:
        """``rollout of 20261202... by alice@laptop (pid 42) since 2026-...``."""
        what = f"rollout of {self.release}" if self.release else "rollout (no release made yet)"
        return f"{what} by {self.who} (pid {self.pid}) since {self.started}"

    def to_record(self) -> str:
        """The journal's header (the steps are appended after it, one ``step=`` line each)."""
        return records.format_record({"rollout": self.rollout, "who": self.who, "pid": self.pid, "host": self.host,
                                      "release": self.release, "previous": self.previous, "started": self.started})

    @classmethod
    def parse(cls, text: str) -> Journal | None:
        """A journal from its file content (either format); None if it is not one."""
        pairs = records.load(text)
        data = dict(pairs)
        if not data.get("rollout"):
            return None
        previous = data.get("previous")
        steps = tuple(str(v).strip() for k, v in pairs if k == "step")
        return cls(str(data["rollout"]), str(data.get("who", "unknown")), records.number(data.get("pid")),
                   str(data.get("host", "")), str(data.get("release") or ""), str(previous) if previous else None,
                   str(data.get("started", "unknown")), steps)

    @classmethod
    def begin(cls, owner: LockOwner, release: str, previous: str | None) -> Journal:
        """The journal of ``owner``'s rollout of ``release`` on a host where ``previous`` is live."""
        return cls(owner.token, owner.who, owner.pid, owner.host, release, previous, owner.started)


def lock_after_inspect_body(owner: LockOwner) -> Body:
    """Shell body (and values), to follow the inspect body in the same script, that takes ``owner``'s lock
    and writes its journal (with what is live now as ``previous``; the release is named by the prepare).

    Never fails the script: it prints ``locked``, ``held`` (and the holder) or ``lockfail``; or
    ``lockdeferred`` where deploytest has no state directory yet (a first deploy): a refusal must
    leave such a host untouched, so its lock is taken once every host passed.
    """
    head = Journal.begin(owner, "", None).to_record().splitlines(keepends=True)
    values = {"token": _check_token(owner.token), "lock_record": owner.to_record(),
              "journal_head": "".join(line for line in head if not line.startswith("previous="))}
    return """\
dt_lockfail() { printf '@@dt lockfail\\t%s\\n' "$1"; }
if [ ! -d "$S" ]; then printf '@@dt lockdeferred\\n'
elif printf '%s' "$lock_record" > "$S/lock.$token" 2>/dev/null
then
  if ln -- "$S/lock.$token" "$S/lock" 2>/dev/null; then
    rm -f -- "$S/lock.$token"
    if { { printf '%s' "$journal_head"; dt_put previous "$(dt_live)"; } > "$S/journal.tmp" \\
        && mv -f -- "$S/journal.tmp" "$S/journal"; } 2>/dev/null; then
      printf '@@dt locked\\n'
    else rm -f -- "$S/journal.tmp" "$S/lock"; dt_lockfail "cannot write $S/journal"; fi
  else
    rm -f -- "$S/lock.$token"
    dt_show held "$S/lock"
  fi
else rm -f -- "$S/lock.$token"; dt_lockfail "cannot write $S/lock"; fi
""", values


def name_release_body(owner: LockOwner) -> Body:
    """Shell body (and values) that names the release ``$id`` in ``owner``'s journal before it is made."""
    return """\
if dt_journal_of "$token"; then
  { { grep -v '^release=' -- "$S/journal"; dt_put release "$id"; } > "$S/journal.tmp" \\
    && mv -f -- "$S/journal.tmp" "$S/journal"; } 2>/dev/null \\
    || { rm -f -- "$S/journal.tmp"; cat >/dev/null; dt_fail prepare "cannot write $S/journal"; }
fi
""", {"token": _check_token(owner.token)}


def acquire_lock(target: Target, settings: Settings, owner: LockOwner, *, journal: Journal | None = None,
                 takeover: str = "") -> None:
    """Take the deploy lock on ``target`` (one round trip); taking one's own lock again is fine.

    :param journal: written with the lock, before anything else changes on the host.
    :param takeover: the token of a dead rollout's lock to replace (its journal is being undone).
    :raises LockHeld: someone else holds it; the message names them and how to unlock.
    :raises RemoteCommandFailed: the lock could not be written (permissions, disk full).
    """
    script_text = script_for_acquire_lock(settings, owner, journal, takeover)
    _result, marks = run_script(target, settings, script_text, "lock")
    if "locked" in marks:
        return
    holder = LockInfo.parse("\n".join(marks.get("held", [])))
    host = target.name
    unlock = "fab unlock" if target.is_local else f"fab -H {host} unlock"
    dead = " (that process is no longer running)" if holder.looks_dead() else ""
    raise LockHeld(
        f"{host}: locked by {holder.describe()}{dead}; nothing was changed. If that deploy is dead: {unlock}",
        hosts=[host],
        next_step=unlock,
    )


def release_lock_body(owner: LockOwner) -> Body:
    """Shell body (and values) that removes the lock (and its journal) only if they hold ``owner``'s token."""
    return """\
if dt_journal_of "$token"; then rm -f -- "$S/journal"; fi
if [ ! -f "$S/lock" ]; then printf '@@dt lockgone\\n'
elif dt_holds "$token"; then
  rm -f -- "$S/lock" && printf '@@dt released\\n'
else printf '@@dt lockother\\n'; fi
""", {"token": _check_token(owner.token)}


def script_for_release_lock(settings: Settings, owner: LockOwner) -> str:
    """Shell text that removes the lock only if it holds ``owner``'s token."""
    return script(settings, *release_lock_body(owner))


def release_lock(target: Target, settings: Settings, owner: LockOwner) -> bool:
    """Remove the lock if it is ``owner``'s (one round trip); True if it was removed.

    Another deploy's lock is left alone (compare deployer#958), as is a missing one.
    """
    _result, marks = run_script(target, settings, script_for_release_lock(settings, owner), "unlock")
    return "released" in marks


def script_for_clear_journal(settings: Settings, rollout: str) -> str:
    """Shell text that removes the journal of ``rollout`` (once it is undone or finished)."""
    return script(settings, 'if dt_journal_of "$rollout"; then rm -f -- "$S/journal"; fi\n',
                  {"rollout": _check_token(rollout)})


def script_for_heartbeat(settings: Settings, owner: LockOwner) -> str:
    """Shell text that renews ``owner``'s lock (its mtime is the heartbeat); needs no free space."""
    return script(settings, 'if dt_holds "$token"; then touch -c -- "$S/lock"; fi\n',
                  {"token": _check_token(owner.token)})


def heartbeat(target: Target, settings: Settings, owner: LockOwner) -> None:
    """Renew ``owner``'s lock on ``target`` (one round trip; a lock that is not ours is left alone)."""
    run_script(target, settings, script_for_heartbeat(settings, owner), "heartbeat", timeout=30)


def script_for_force_unlock(settings: Settings, token: str = "", event: Mapping[str, Any] | None = None) -> str:
    """Shell text that prints the lock and removes it (only while it holds ``token``, when given), then
    logs ``event``."""
    values: dict[str, object] = {}
    holds = "true"
    if token:
        values["token"] = _check_token(token)
        holds = 'dt_holds "$token"'
    log = ""
    if event is not None:
        log, log_values = log_body(event, fatal=False)
        values.update(log_values)
    return script(settings, f"""\
if [ -f "$S/lock" ]; then
  dt_show held "$S/lock"
  if {holds}; then
    rm -f -- "$S/lock" || dt_fail unlock "cannot remove $S/lock"
    printf '@@dt removed\\n'
{log}  fi
fi
""", values)


def force_unlock(target: Target, settings: Settings, who: str | None = None, *,
                 seen: LockInfo | None = None) -> LockInfo | None:
    """Remove the lock (the ``unlock`` task); return whose it was, or None when none was removed.

    One round trip, the ``unlock`` event (``who`` removed whose lock) included. With ``seen`` (the lock
    as read before deciding to remove it), only that very lock is removed: one taken since is kept.
    """
    event = None
    if who is not None:
        event = {"event": "unlock", "who": who, "outcome": "unlocked",
                 "holder": seen.describe() if seen else None, "release": (seen.release or None) if seen else None}
    token = seen.token if seen is not None and all(c in "0123456789abcdef" for c in seen.token) else ""
    _result, marks = run_script(target, settings, script_for_force_unlock(settings, token, event), "unlock")
    if "removed" not in marks:
        return None
    return LockInfo.parse("\n".join(marks["held"]))
