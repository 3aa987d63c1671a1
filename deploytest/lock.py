"""The deploy lock on a host, and the one way deploytest runs its own scripts there.

The lock is ``<deploy_to>/.deploytest/lock``: one line of JSON naming who holds it (user, the machine
they deploy from, pid, when it started) and a random token. It is taken atomically by writing a
temporary file and hard-linking it to ``lock`` (``ln`` fails if ``lock`` exists), so the lock never
exists without its owner. It is released only by the owner whose token it holds; ``force_unlock``
(the ``unlock`` task) removes it whoever holds it and says whose it was.

:func:`run_script` is how every script of :mod:`deploytest.release` and of this module runs: in one
:meth:`Target.run` (one remote session), through ``sudo`` when the config says so, with failures
reported by the script as ``@@dt fail`` lines turned into :class:`RemoteCommandFailed`.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import shlex
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from .config import Settings
from .errors import LockHeld, RemoteCommandFailed, UsageError
from .hosts import RunResult, Target

MARK = "@@dt"
"""Prefix of the control lines deploytest's scripts print on stdout."""


PRELUDE = r"""set -u
LC_ALL=C; export LC_ALL
dt_clean() { printf '%s' "$1" | tr '\n\t' '| ' | cut -c1-600; }
dt_fail() { printf '@@dt fail\t%s\t%s\n' "$1" "$(dt_clean "$2")"; exit 97; }
dt_refuse() { printf '@@dt refused\t%s\n' "$(dt_clean "$1")"; exit 96; }
"""


def utc_now() -> str:
    """The current UTC time as ``2026-11-25T10:00:01Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def prelude(settings: Settings) -> str:
    """Shell text every script starts with: strict mode, helpers, ``D`` and ``S`` set."""
    return PRELUDE + f"D={shlex.quote(settings.deploy_to)}\nS=\"$D/.deploytest\"\n"


# -- running scripts ---------------------------------------------------------------------------


def sudo_password(target: Target) -> str | None:
    """The sudo password for ``target``: its ``sudo_password`` attribute if set, else its Fabric
    config's ``sudo.password`` (what ``fab --prompt-for-sudo-password`` fills in), else None."""
    explicit = getattr(target, "sudo_password", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    config = getattr(getattr(target, "connection", None), "config", None)
    try:
        value = config.sudo.password if config is not None else None
    except AttributeError:
        return None
    return value if isinstance(value, str) and value else None


def wrap_sudo(script: str) -> str:
    """``script`` run as root through ``sudo``; the first stdin line is the password (may be empty).

    Without a password sudo must not be asked for one (``sudo -n``); with one, it is fed through
    ``sudo -S`` (which reads it byte by byte, so the rest of stdin reaches the script untouched).
    Whatever happens, stdin is read to its end, so an upload never stalls on a refused sudo.
    """
    inner = shlex.quote(script)
    return (
        "IFS= read -r dt_pw || dt_pw=''\n"
        f"if sudo -n true 2>/dev/null; then sudo -n -- /bin/sh -c {inner}; rc=$?\n"
        'elif [ -z "$dt_pw" ]; then echo "sudo: a password is required (set sudo.password)" >&2; rc=95\n'
        f"else {{ printf '%s\\n' \"$dt_pw\"; cat; }} | sudo -S -p '' -- /bin/sh -c {inner}; rc=$?; fi\n"
        "cat >/dev/null 2>&1; exit $rc\n"
    )


def run_script(
    target: Target,
    settings: Settings,
    script: str,
    step: str,
    *,
    stdin: bytes | None = None,
    timeout: float | None = None,
) -> tuple[RunResult, dict[str, list[str]]]:
    """Run one deploytest script on ``target`` (one session); return the result and its ``@@dt`` lines.

    :param step: names the step in error messages ("prepare", "switch", ...).
    :returns: the run result and the control lines by key: ``{"previous": ["<value>"], ...}``.
    :raises RemoteCommandFailed: the script reported a failure or exited non-zero.
    :raises UsageError: the script refused (e.g. removing the live release); nothing was changed.
    :raises HostUnreachable: from :meth:`Target.run`.
    """
    result, marks = execute(target, settings, script, stdin=stdin, timeout=timeout)
    raise_for(target, settings, result, marks, step)
    return result, marks


def execute(
    target: Target,
    settings: Settings,
    script: str,
    *,
    stdin: bytes | None = None,
    timeout: float | None = None,
) -> tuple[RunResult, dict[str, list[str]]]:
    """Like :func:`run_script` without raising on failure (see :func:`raise_for`)."""
    if settings.sudo:
        password = sudo_password(target) or ""
        script = wrap_sudo(script)
        stdin = password.encode() + b"\n" + (stdin or b"")
    result = target.run(script, stdin=stdin, timeout=timeout)
    return result, parse_marks(result.stdout)


def raise_for(target: Target, settings: Settings, result: RunResult, marks: dict[str, list[str]],
              step: str) -> None:
    """Raise what a script's failure means: :class:`RemoteCommandFailed` or :class:`UsageError`."""
    if "fail" in marks:
        where, _, detail = marks["fail"][0].partition("\t")
        detail = detail.strip(" |") or f"exit {result.exit_code}"
        raise RemoteCommandFailed(target.name, where or step, detail)
    if "refused" in marks:
        raise UsageError(f"{target.name}: {marks['refused'][0].strip(' |')}; nothing was changed.",
                         hosts=[target.name])
    if result.exit_code != 0:
        detail = result.tail(3) or "no output"
        if settings.sudo and "sudo" in detail:
            raise RemoteCommandFailed(target.name, "sudo", sudo_detail(result))
        raise RemoteCommandFailed(target.name, step, f"exit {result.exit_code}: {detail}")


_SUDO_NOISE = ("no password was provided", "Sorry, try again", "unable to resolve host")


def sudo_detail(result: RunResult) -> str:
    """What a refused ``sudo`` said, without its noise, with what to do about a wrong password.

    After a wrong password ``sudo -S`` says "Sorry, try again", asks again and finds the end of its
    input ("no password was provided"); a host missing from its own /etc/hosts adds "unable to
    resolve host". Only the lines that explain the refusal are kept.
    """
    lines = [line.strip() for line in (result.stderr.strip() or result.stdout).splitlines()]
    lines = [line for line in lines if line and not any(noise in line for noise in _SUDO_NOISE)]
    wrong = [line for line in lines if "incorrect password" in line]
    if wrong:
        return f"{wrong[-1]} (wrong sudo.password: fab --prompt-for-sudo-password, or FABRIC_SUDO_PASSWORD)"
    return " | ".join(lines[-3:]) or f"exit {result.exit_code}"


def parse_marks(stdout: str) -> dict[str, list[str]]:
    """The ``@@dt KEY<TAB>VALUE`` lines of a script's stdout, by key, in order."""
    marks: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        if not line.startswith(MARK + " "):
            continue
        key, _, value = line[len(MARK) + 1:].partition("\t")
        marks.setdefault(key.strip(), []).append(value)
    return marks


# -- the lock ----------------------------------------------------------------------------------


#: Seconds between two heartbeats of a running rollout on each host it holds locked.
HEARTBEAT_SECONDS = 15.0
#: A lock whose last heartbeat is older than this is stale: its rollout is gone.
STALE_AFTER_SECONDS = 60


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
        if self.age is not None and self.age > STALE_AFTER_SECONDS:
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
        """A lock from its file content; a damaged file gives a lock held by "unknown"."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError(text)
            pid = data.get("pid", 0)
            return cls(
                user=str(data.get("user", "unknown")),
                host=str(data.get("host", "unknown")),
                pid=pid if isinstance(pid, int) else 0,
                started=str(data.get("started", "unknown")),
                token=str(data.get("token", "")),
                release=str(data.get("release", "") or ""),
                age=age,
            )
        except ValueError:
            return cls(user="unknown", host="unknown", pid=0, started="unknown", age=age)


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

    def to_json(self) -> str:
        """The lock file's one line."""
        return json.dumps(
            {"user": self.user, "host": self.host, "pid": self.pid, "started": self.started,
             "token": self.token, "release": self.release},
            sort_keys=True,
        )


def _holds(token: str) -> str:
    """Shell test: the lock file holds ``token`` (a hex string), whatever the JSON's spacing."""
    return f"grep -q '\"token\": *\"{token}\"' \"$S/lock\" 2>/dev/null"


def _check_token(token: str) -> str:
    if not token or not all(c in "0123456789abcdef" for c in token):
        raise UsageError(f"lock token {token!r} is not a hex string")
    return token


def script_for_acquire_lock(settings: Settings, owner: LockOwner, journal: Journal | None = None,
                            takeover: str = "") -> str:
    """Shell text that takes the lock (and writes ``journal`` with it), or prints the holder; one session.

    :param takeover: the token of a dead rollout's lock that this one may replace (by rename).
    """
    token = _check_token(owner.token)
    write_journal = ""
    if journal is not None:
        write_journal = f"""\
if ! {{ printf '%s\\n' {shlex.quote(journal.to_json())} > "$S/journal.tmp" \\
      && mv -f -- "$S/journal.tmp" "$S/journal"; }} 2>/dev/null; then
  rm -f -- "$S/journal.tmp"; {_holds(token)} && rm -f -- "$S/lock"; dt_fail lock "cannot write $S/journal"
fi
"""
    steal = ""
    if takeover:
        steal = f"""\
if {_holds(_check_token(takeover))} && mv -f -- "$tmp" "$S/lock" 2>/dev/null; then dt_locked; fi
"""
    return prelude(settings) + f"""\
out=$(mkdir -p -- "$S" 2>&1) || dt_fail lock "cannot create $S: $out"
dt_locked() {{
{write_journal}  printf '@@dt locked\\n'; exit 0
}}
tmp="$S/lock.{token}"
printf '%s\\n' {shlex.quote(owner.to_json())} > "$tmp" \\
  || {{ rm -f -- "$tmp"; dt_fail lock "cannot write $tmp"; }}
if ln -- "$tmp" "$S/lock" 2>/dev/null; then rm -f -- "$tmp"; dt_locked; fi
{steal}rm -f -- "$tmp"
if {_holds(token)}; then printf '@@dt locked\\n'; exit 0; fi
printf '@@dt held\\t'; head -n 1 "$S/lock" 2>/dev/null; echo
"""


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

    def to_json(self) -> str:
        """The journal's first line."""
        return json.dumps({"rollout": self.rollout, "who": self.who, "pid": self.pid, "host": self.host,
                           "release": self.release, "previous": self.previous, "started": self.started},
                          sort_keys=True)

    @classmethod
    def parse(cls, text: str) -> Journal | None:
        """A journal from its first line; None if it is not one."""
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or not data.get("rollout"):
            return None
        pid = data.get("pid", 0)
        previous = data.get("previous")
        return cls(str(data["rollout"]), str(data.get("who", "unknown")), pid if isinstance(pid, int) else 0,
                   str(data.get("host", "")), str(data.get("release") or ""), str(previous) if previous else None,
                   str(data.get("started", "unknown")))

    @classmethod
    def begin(cls, owner: LockOwner, release: str, previous: str | None) -> Journal:
        """The journal of ``owner``'s rollout of ``release`` on a host where ``previous`` is live."""
        return cls(owner.token, owner.who, owner.pid, owner.host, release, previous, owner.started)


def script_for_lock_after_inspect(settings: Settings, owner: LockOwner) -> str:
    """Shell text, to follow the inspect script in the same session, that takes ``owner``'s lock and
    writes its journal (with what is live now as ``previous``; the release is named by the prepare).

    Never fails the script: it prints ``locked``, ``held`` (and the holder) or ``lockfail``; or
    ``lockdeferred`` where deploytest has no state directory yet (a first deploy): a refusal must
    leave such a host untouched, so its lock is taken once every host passed.
    """
    token = _check_token(owner.token)
    head, _, tail = Journal.begin(owner, "", None).to_json().partition('"previous": null')
    return f"""\
dt_lockfail() {{ printf '@@dt lockfail\\t%s\\n' "$1"; }}
if [ ! -d "$S" ]; then printf '@@dt lockdeferred\\n'
elif printf '%s\\n' {shlex.quote(owner.to_json())} > "$S/lock.{token}" 2>/dev/null
then
  if ln -- "$S/lock.{token}" "$S/lock" 2>/dev/null; then
    rm -f -- "$S/lock.{token}"
    lv=$(dt_live); if [ -n "$lv" ]; then pv="\\"$lv\\""; else pv=null; fi
    if {{ printf '%s%s%s\\n' {shlex.quote(head + '"previous": ')} "$pv" {shlex.quote(tail)} > "$S/journal.tmp" \\
        && mv -f -- "$S/journal.tmp" "$S/journal"; }} 2>/dev/null; then
      printf '@@dt locked\\n'
    else rm -f -- "$S/journal.tmp" "$S/lock"; dt_lockfail "cannot write $S/journal"; fi
  else
    rm -f -- "$S/lock.{token}"
    printf '@@dt held\\t'; head -n 1 -- "$S/lock" 2>/dev/null; echo
  fi
else rm -f -- "$S/lock.{token}"; dt_lockfail "cannot write $S/lock"; fi
"""


def script_for_name_release(settings: Settings, owner: LockOwner, release: str) -> str:
    """Shell text (with the prelude) that names ``release`` in ``owner``'s journal before it is made."""
    token = _check_token(owner.token)
    return f"""\
if grep -q '"rollout": *"{token}"' "$S/journal" 2>/dev/null; then
  {{ sed '1s/"release": *"[^"]*"/"release": "{release}"/' -- "$S/journal" > "$S/journal.tmp" \\
    && mv -f -- "$S/journal.tmp" "$S/journal"; }} 2>/dev/null \\
    || {{ rm -f -- "$S/journal.tmp"; cat >/dev/null; dt_fail prepare "cannot write $S/journal"; }}
fi
"""


def acquire_lock(target: Target, settings: Settings, owner: LockOwner, *, journal: Journal | None = None,
                 takeover: str = "") -> None:
    """Take the deploy lock on ``target`` (one round trip); taking one's own lock again is fine.

    :param journal: written with the lock, before anything else changes on the host.
    :param takeover: the token of a dead rollout's lock to replace (its journal is being undone).
    :raises LockHeld: someone else holds it; the message names them and how to unlock.
    :raises RemoteCommandFailed: the lock could not be written (permissions, disk full).
    """
    script = script_for_acquire_lock(settings, owner, journal, takeover)
    _result, marks = run_script(target, settings, script, "lock")
    if "locked" in marks:
        return
    holder = LockInfo.parse(marks.get("held", [""])[0])
    host = target.name
    unlock = "fab unlock" if target.is_local else f"fab -H {host} unlock"
    dead = " (that process is no longer running)" if holder.looks_dead() else ""
    raise LockHeld(
        f"{host}: locked by {holder.describe()}{dead}; nothing was changed. If that deploy is dead: {unlock}",
        hosts=[host],
        next_step=unlock,
    )


def script_for_release_lock(settings: Settings, owner: LockOwner) -> str:
    """Shell text that removes the lock only if it holds ``owner``'s token."""
    token = _check_token(owner.token)
    return prelude(settings) + f"""\
if grep -q '"rollout": *"{token}"' "$S/journal" 2>/dev/null; then rm -f -- "$S/journal"; fi
if [ ! -f "$S/lock" ]; then printf '@@dt lockgone\\n'
elif {_holds(token)}; then
  rm -f -- "$S/lock" && printf '@@dt released\\n'
else printf '@@dt lockother\\n'; fi
"""


def release_lock(target: Target, settings: Settings, owner: LockOwner) -> bool:
    """Remove the lock if it is ``owner``'s (one round trip); True if it was removed.

    Another deploy's lock is left alone (compare deployer#958), as is a missing one.
    """
    _result, marks = run_script(target, settings, script_for_release_lock(settings, owner), "unlock")
    return "released" in marks


#: Shell function that notes a completed step in this host's journal (best effort: it never fails a step).
STEP_FN = r"""dt_step() {
  [ -f "$S/journal" ] && printf '{"step": "%s"}\n' "$1" >> "$S/journal" 2>/dev/null
  return 0
}
"""


def script_for_clear_journal(settings: Settings, rollout: str) -> str:
    """Shell text that removes the journal of ``rollout`` (once it is undone or finished)."""
    return prelude(settings) + f"""\
if grep -q '"rollout": *"{_check_token(rollout)}"' "$S/journal" 2>/dev/null; then rm -f -- "$S/journal"; fi
"""


def script_for_heartbeat(settings: Settings, owner: LockOwner) -> str:
    """Shell text that renews ``owner``'s lock (its mtime is the heartbeat); needs no free space."""
    return prelude(settings) + f"if {_holds(_check_token(owner.token))}; then touch -c -- \"$S/lock\"; fi\n"


def heartbeat(target: Target, settings: Settings, owner: LockOwner) -> None:
    """Renew ``owner``'s lock on ``target`` (one round trip; a lock that is not ours is left alone)."""
    run_script(target, settings, script_for_heartbeat(settings, owner), "heartbeat", timeout=30)


def script_for_force_unlock(settings: Settings, token: str = "", event: Mapping[str, Any] | None = None) -> str:
    """Shell text that prints the lock and removes it (only while it holds ``token``, when given), then
    logs ``event``."""
    holds = _holds(_check_token(token)) if token else "true"
    log = script_for_log_line(event, fatal=False) if event is not None else ""
    return prelude(settings) + f"""\
if [ -f "$S/lock" ]; then
  printf '@@dt held\\t'; head -n 1 "$S/lock"; echo
  if {holds}; then
    rm -f -- "$S/lock" || dt_fail unlock "cannot remove $S/lock"
    printf '@@dt removed\\n'
{log}  fi
fi
"""


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
    return LockInfo.parse(marks["held"][0])


# -- the log -------------------------------------------------------------------------------------

_SECRET_WORDS = ("password", "secret", "token", "passphrase")


def log_line(event: Mapping[str, Any]) -> str:
    """One JSON line for ``log.jsonl``: ``when`` added if missing, secret-looking keys dropped."""
    data = {k: v for k, v in event.items() if not any(w in k.lower() for w in _SECRET_WORDS)}
    data.setdefault("when", utc_now())
    return json.dumps(data, sort_keys=True, default=str)


def script_for_log_line(event: Mapping[str, Any] | None, *, fatal: bool = True) -> str:
    """Shell text that appends ``event`` to ``$S/log.jsonl`` (needs the prelude).

    :param event: None: the line is the first line of the script's stdin (a step whose text is fixed
        before the run knows how it ends, like the plan's finish).
    :param fatal: a failed write ends the script; otherwise it prints a ``warn`` line and goes on.
    """
    failed = 'dt_fail log "cannot write $S/log.jsonl"' if fatal else \
        "printf '@@dt warn\\tcannot write %s\\n' \"$S/log.jsonl\""
    line = shlex.quote(log_line(event)) if event is not None else '"$dt_line"'
    read = "" if event is not None else "IFS= read -r dt_line || [ -n \"${dt_line:-}\" ] || dt_line='{}'\n"
    return (
        read + 'mkdir -p -- "$S" 2>/dev/null; printf \'%s\\n\' '
        f"{line} 2>/dev/null >> \"$S/log.jsonl\" || {failed}\n"
    )
