"""Per-host release primitives: inspect, prepare, switch and restart, mark bad, finish.

Each primitive is one shell script run in ONE :meth:`Target.run` (one remote session), whatever the
number of files or releases; ``script_for_*`` gives that script as text without running it, for
``--dry-run``. The layout is Capistrano's::

    <deploy_to>/releases/<id>/          one directory per release
    <deploy_to>/shared/                 the shared paths, linked into every release
    <deploy_to>/current                 absolute symlink to the live release, replaced by rename
    <deploy_to>/.deploytest/lock        the deploy lock (see :mod:`deploytest.lock`)
    <deploy_to>/.deploytest/log.jsonl   one JSON object per deploy, rollback, verify, unlock
    <deploy_to>/.deploytest/releases/<id>.json   a release's label, who, when and state

A release's state is ``preparing`` while it is built, ``complete`` once built, ``bad`` once it failed
verification; a directory without metadata (made by hand or by another tool) is ``unknown``. Only
complete releases go live, count toward ``keep_releases`` or are rolled back to; metadata is written
before the directory, so an interrupted prepare is ``preparing`` and removed by the next cleanup.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Optional, Sequence

from .config import Settings, clean_relative_path
from .errors import RemoteCommandFailed, UsageError, fab_command
from .hosts import Target
from .lock import (
    STEP_FN,
    Journal,
    LockInfo,
    LockOwner,
    acquire_lock,
    execute,
    force_unlock,
    log_line,
    prelude,
    raise_for,
    release_lock,
    run_script,
    script_for_lock_after_inspect,
    script_for_log_line,
    script_for_name_release,
    script_for_release_lock,
    utc_now,
)
from .source import GIT, Package, pack_source

__all__ = [
    "BAD", "COMPLETE", "PREPARING", "UNKNOWN", "FinishResult", "HostState", "LockInfo", "LockOwner",
    "Package", "ReleaseInfo", "RestartFailed", "acquire_lock", "chain", "check_release_id",
    "cleanup_plan", "finish", "force_unlock", "inspect", "mark_bad", "new_release_id", "pack_source",
    "parse_state", "preflight_problem", "prepare", "release_lock", "remove_release",
    "rollback_target", "script_for_discard", "script_for_mark_bad", "switch", "switch_and_restart",
    "switch_back", "Switched", "recorded_suite", "script_for_record_suite", "VERIFIED", "Journal",
    "script_for_mark_verified",
]

COMPLETE = "complete"
VERIFIED = "verified"
BAD = "bad"
PREPARING = "preparing"
UNKNOWN = "unknown"

RELEASE_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]*$")
_TIMESTAMP_ID = re.compile(r"^\d{14}$")
_EXTENSION = re.compile(r"[^/]\.[A-Za-z0-9]+$")


class RestartFailed(RemoteCommandFailed):
    """A restart hook failed after the switch: the host is live on the new release.

    :ivar previous: the release that was live before the switch (None on a first deploy).
    """

    def __init__(self, host: str, step: str, detail: str, previous: str | None) -> None:
        super().__init__(host, step, detail)
        self.previous = previous


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


def script_for_inspect(settings: Settings) -> str:
    """Shell text printing a host's state as ``@@dt`` lines (read-only)."""
    return prelude(settings) + _LIST_FN + """\
if [ -d "$D" ]; then printf '@@dt exists\\t1\\n'; else printf '@@dt exists\\t0\\n'; fi
d=$D; while [ ! -d "$d" ]; do d=${d%/*}; [ -n "$d" ] || d=/; done
if [ -w "$d" ]; then printf '@@dt writable\\t1\\n'; else printf '@@dt writable\\t0\\n'; fi
printf '@@dt free\\t%s\\n' "$(df -Pk -- "$d" 2>/dev/null | awk 'NR==2 {print int($4/1024)}')"
if [ -L "$D/current" ]; then printf '@@dt current\\tlink\\t%s\\n' "$(readlink -- "$D/current")"
elif [ -e "$D/current" ]; then printf '@@dt current\\tother\\n'
else printf '@@dt current\\tnone\\n'; fi
dt_list | while read -r id st; do
  printf '@@dt release\\t%s\\t%s\\t' "$id" "$st"
  if [ "$st" != unknown ]; then head -n 1 -- "$S/releases/$id.json"; fi
  echo
done
if [ -f "$S/journal" ]; then printf '@@dt journal\\t'; head -n 1 -- "$S/journal"; echo
  sed -n 's/^{"step": *"\\([a-z ]*\\)".*/@@dt step\\t\\1/p' -- "$S/journal"; fi
lv=$(dt_live)
if [ -n "$lv" ] && [ -f "$S/releases/$lv.suite.json" ]; then
  printf '@@dt livesuite\\t'; head -n 1 -- "$S/releases/$lv.suite.json"; echo; fi
if [ -f "$S/lock" ]; then
  printf '@@dt lock\\t'; head -n 1 -- "$S/lock"; echo
  m=$(stat -c %Y -- "$S/lock" 2>/dev/null || stat -f %m -- "$S/lock" 2>/dev/null)
  [ -n "$m" ] && printf '@@dt lockage\\t%s\\n' "$(( $(date +%s) - m ))"
fi
for f in "$S/releases"/*.suite.json; do
  [ -f "$f" ] && { f=${f##*/}; printf '@@dt suite\\t%s\\n' "${f%.suite.json}"; }
done
if [ -f "$S/log.jsonl" ]; then printf '@@dt last\\t'; tail -n 1 -- "$S/log.jsonl"; echo; fi
"""


def inspect(target: Target, settings: Settings, *, timeout: float | None = None) -> HostState:
    """Read a host's releases, live release, lock, free disk and writability (one round trip).

    :raises RemoteCommandFailed: the script could not run (e.g. sudo refused).
    :raises HostUnreachable: from the target.
    """
    result, _marks = run_script(target, settings, script_for_inspect(settings), "inspect", timeout=timeout)
    return dataclasses.replace(parse_state(target.name, settings, result.stdout), local=target.is_local)


def script_for_inspect_and_lock(settings: Settings, owner: LockOwner) -> str:
    """Shell text of :func:`inspect_and_lock`."""
    return script_for_inspect(settings) + script_for_lock_after_inspect(settings, owner)


def inspect_and_lock(target: Target, settings: Settings, owner: LockOwner) -> tuple[HostState, str]:
    """:func:`inspect`, then take ``owner``'s lock and journal, in ONE round trip.

    :returns: the state as it was before the lock, and ``locked``, ``held``, ``deferred`` (a first
        deploy: the lock is taken after the preflight) or why the lock could not be written.
    """
    result, marks = run_script(target, settings, script_for_inspect_and_lock(settings, owner), "inspect")
    state = dataclasses.replace(parse_state(target.name, settings, result.stdout), local=target.is_local)
    if "locked" in marks:
        return state, "locked"
    if "lockdeferred" in marks:
        return state, "deferred"
    if "held" in marks:
        return dataclasses.replace(state, lock=state.lock or LockInfo.parse(marks["held"][0])), "held"
    return state, marks.get("lockfail", ["the lock could not be taken"])[0]


def parse_state(host: str, settings: Settings, stdout: str) -> HostState:
    """A :class:`HostState` from the output of :func:`script_for_inspect` (pure)."""
    exists = writable = False
    free: int | None = None
    current, kind = "", "none"
    lock_text: str | None = None
    lock_age: int | None = None
    last: dict[str, Any] | None = None
    releases: list[ReleaseInfo] = []
    suites: set[str] = set()
    journal: Journal | None = None
    steps: list[str] = []
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
            if RELEASE_ID.fullmatch(rid):
                releases.append(_release_info(rid, state, meta))
        elif key == "journal":
            journal = Journal.parse(value)
        elif key == "step":
            steps.append(value.strip())
        elif key == "livesuite":
            live_suite = value.strip() or None
        elif key == "lock":
            lock_text = value
        elif key == "lockage":
            lock_age = int(value) if value.strip().lstrip("-").isdigit() else None
        elif key == "suite":
            suites.add(value.strip())
        elif key == "last":
            last = _json_object(value)
    releases.sort(key=lambda r: r.id)
    live = live_id(current, settings) if kind == "link" else None
    lock = LockInfo.parse(lock_text, lock_age) if lock_text is not None else None
    if journal is not None:
        journal = dataclasses.replace(journal, steps=tuple(steps))
    return HostState(host, settings.deploy_to, exists, writable, free, tuple(releases), live, current, kind,
                     lock, last, suites=frozenset(suites), journal=journal, live_suite=live_suite)


def live_id(link: str, settings: Settings) -> str | None:
    """The release id a ``current`` link target names (absolute or relative), or None."""
    link = link.rstrip("/")
    parent, name = posixpath.split(link)
    if posixpath.basename(parent) != "releases" or not RELEASE_ID.fullmatch(name):
        return None
    return name


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _release_info(rid: str, state: str, meta: str) -> ReleaseInfo:
    """A release from the host's word on its state (markers win over the metadata) and its metadata."""
    data = _json_object(meta.strip()) if meta.strip() else None
    if data is None:
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


# -- shell building blocks -------------------------------------------------------------------------

_LIST_FN = r"""dt_state() {
  m="$S/releases/$1"
  if [ -e "$m.bad" ]; then echo bad
  elif [ -e "$m.verified" ]; then echo verified
  elif [ -f "$m.json" ]; then
    s=$(sed -n 's/.*"state": *"\([a-z]*\)".*/\1/p' -- "$m.json" | head -n 1)
    printf '%s\n' "${s:-unknown}"
  else echo unknown; fi
}
dt_list() {
  [ -d "$D/releases" ] || return 0
  for p in "$D/releases"/*; do
    [ -d "$p" ] && [ ! -L "$p" ] || continue
    id=${p##*/}
    case $id in [!0-9A-Za-z]*|*[!0-9A-Za-z._-]*) continue;; esac
    printf '%s %s\n' "$id" "$(dt_state "$id")"
  done
}
dt_live() {
  dt_lv=''
  if [ -L "$D/current" ]; then
    l=$(readlink -- "$D/current"); l=${l%/}
    case $l in */releases/*|releases/*) dt_lv=${l##*/};; esac
  fi
  printf '%s\n' "$dt_lv"
}
"""

_STATE_FN = r"""dt_set_state() {
  case $2 in bad|verified)
    # A marker beside the metadata: an empty file needs no free block, so even a full disk cannot keep
    # a release from being marked bad (or verified).
    { mkdir -p -- "$S/releases" && : > "$S/releases/$1.$2"; } 2>/dev/null || dt_fail "$3" "cannot mark $1 $2"
    [ "$2" = verified ] || rm -f -- "$S/releases/$1.verified"
    return 0;;
  esac
  m="$S/releases/$1.json"
  if [ -f "$m" ]; then
    sed 's/"state": *"[a-z]*"/"state": "'"$2"'"/' -- "$m" > "$m.tmp" && mv -f -- "$m.tmp" "$m" \
      || { rm -f -- "$m.tmp"; dt_fail "$3" "cannot write $m"; }
  else
    mkdir -p -- "$S/releases" && printf '{"id": "%s", "state": "%s"}\n' "$1" "$2" > "$m" \
      || dt_fail "$3" "cannot write $m"
  fi
}
"""

_HOOK_FN = r"""dt_hook() {
  log="$S/$1.log"
  ( cd -- "$2" && exec /bin/sh -ec "$3" ) </dev/null >"$log" 2>&1
  rc=$?
  cat -- "$log" >&2
  if [ "$rc" -ne 0 ]; then
    t=$(tail -n 3 -- "$log" 2>/dev/null)
    # on a full disk the hook's own words may not have reached its log: say what is known
    case $(df -Pk -- "$D" 2>/dev/null | awk 'NR==2 {print $4}') in
      0) case $t in *"No space left"*) ;; *) t="$t (No space left on device under $D)";; esac;;
    esac
    dt_fail "$1 hook" "$3: exit $rc: $t"
  fi
}
dt_env() {
  DEPLOYTEST_RELEASE=$1; DEPLOYTEST_RELEASE_DIR=$2; DEPLOYTEST_DEPLOY_TO=$D; DEPLOYTEST_SHARED="$D/shared"
  export DEPLOYTEST_RELEASE DEPLOYTEST_RELEASE_DIR DEPLOYTEST_DEPLOY_TO DEPLOYTEST_SHARED
}
"""

_LINK_FN = r"""dt_link() {
  if [ -e "$D/current" ] && [ ! -L "$D/current" ]; then
    dt_fail switch "$D/current exists and is not a symlink; move it away first"
  fi
  prev=''; [ -L "$D/current" ] && prev=$(readlink -- "$D/current")
  printf '@@dt previous\t%s\n' "$prev"
  tmp="$D/.current.tmp.$$"
  rm -f -- "$tmp"
  out=$(ln -s -- "$1" "$tmp" 2>&1) || dt_fail switch "$out"
  out=$(mv -f -T -- "$tmp" "$D/current" 2>&1) || out=$(mv -f -h -- "$tmp" "$D/current" 2>&1) \
    || { rm -f -- "$tmp"; dt_fail switch "cannot replace $D/current: $out"; }
  printf '@@dt live\t%s\n' "$1"
}
"""

_SHARE_FN = r"""dt_share() {
  src="$D/shared/$1"; dst="$R/$1"; parent=${dst%/*}
  a=$parent
  while [ ! -e "$a" ] && [ ! -L "$a" ]; do a=${a%/*}; done
  real=$(cd -P -- "$a" 2>/dev/null && pwd) || dt_fail shared "$1: ${a#"$R"/} is not a directory"
  case "$real/" in "$Rreal"/*) ;; *) dt_fail shared "$1: leads out of the release through a symlink";; esac
  out=$(mkdir -p -- "${src%/*}" "$parent" 2>&1) || dt_fail shared "$out"
  if [ ! -e "$src" ] && [ ! -L "$src" ]; then
    if [ -e "$dst" ] || [ -L "$dst" ]; then
      out=$(mv -- "$dst" "$src" 2>&1) || dt_fail shared "$out"
    elif [ "$2" = file ]; then
      out=$(: 2>&1 > "$src") || dt_fail shared "cannot create $src"
    else
      out=$(mkdir -p -- "$src" 2>&1) || dt_fail shared "$out"
    fi
  fi
  if [ -e "$dst" ] || [ -L "$dst" ]; then
    [ -L "$dst" ] || chmod -R u+w -- "$dst" 2>/dev/null
    out=$(rm -rf -- "$dst" 2>&1) || dt_fail shared "$out"
  fi
  out=$(ln -s -- "$src" "$dst" 2>&1) || dt_fail shared "$out"
}
"""

_RECORDED_FN = r"""dt_recorded() {
  f="$S/releases/$1.suite.json"
  if [ -f "$f" ]; then printf '@@dt recorded\t'; head -n 1 -- "$f"; echo; fi
}
"""

_REMOVE_FN = r"""dt_remove() {
  if [ "$1" = "$(dt_live)" ]; then printf '@@dt warn\tnot removing live release %s\n' "$1"; return 0; fi
  p="$D/releases/$1"
  chmod -R u+w -- "$p" 2>/dev/null
  if out=$(rm -rf -- "$p" 2>&1) && rm -f -- "$S/releases/$1".json "$S/releases/$1".suite.json \
      "$S/releases/$1".bad "$S/releases/$1".verified; then
    printf '@@dt removed\t%s\n' "$1"
  else
    printf '@@dt warn\tcannot remove %s: %s\n' "$p" "$(dt_clean "$out")"; dt_bad=1
  fi
}
"""

# The rule of cleanup_plan, over "id state" lines sorted by id; string comparisons throughout.
_CLEANUP_AWK = r"""{ id[NR] = $1; st[NR] = $2 }
END {
  prev = ""
  if (live != "") for (i = 1; i <= NR; i++) if (st[i] == "verified" && (id[i] "") < (live "")) prev = id[i]
  n = 0
  for (i = NR; i >= 1; i--) if (st[i] == "complete" || st[i] == "verified") { n++; if (n <= keep) k[id[i]] = 1 }
  for (i = 1; i <= NR; i++) {
    if ((id[i] "") == (live "") || (id[i] "") == (prev "") || (id[i] in k) || st[i] == "unknown") continue
    print id[i]
  }
}"""


def _q(value: str) -> str:
    return shlex.quote(value)


def _ids(release_id: str) -> str:
    rid = check_release_id(release_id)
    return f'id={_q(rid)}; R="$D/releases/$id"; M="$S/releases/$id.json"\n'


def _cleanup_body(settings: Settings) -> str:
    return (
        "dt_bad=0\nfor id in $(dt_list | sort | awk -v live=\"$(dt_live)\""
        f" -v keep={int(settings.keep_releases)} {_q(_CLEANUP_AWK)}); do dt_remove \"$id\"; done\n"
    )


def _shared_kind(path: str) -> str:
    # A shared path that exists nowhere yet is created as an empty file when it looks like one
    # (config/app.env, .env, settings.yml), otherwise as a directory (data, log).
    name = posixpath.basename(path)
    return "file" if name.startswith(".") or _EXTENSION.search(name) else "dir"


# -- prepare ---------------------------------------------------------------------------------------


def script_for_prepare(settings: Settings, release_id: str, package: Package, who: str,
                       *, build: bool = False, owner: LockOwner | None = None) -> str:
    """Shell text of :func:`prepare` (the archive, if any, is its stdin)."""
    rid = check_release_id(release_id)
    git = package.git if package.kind == GIT else None
    meta: dict[str, str] = {
        "id": rid, "kind": package.kind, "label": "@@label@@" if git else package.label,
        "state": PREPARING, "when": utc_now(), "who": who,
    }
    if git:
        meta["revision"] = "@@rev@@"
    lines = [prelude(settings), _STATE_FN, _HOOK_FN, _SHARE_FN, STEP_FN, _ids(rid)]
    if owner is not None:  # the journal names the release before it is made
        lines.append(script_for_name_release(settings, owner, rid))
    lines.append(f"""\
out=$(mkdir -p -- "$D/releases" "$D/shared" "$S/releases" 2>&1) \\
  || {{ cat >/dev/null; dt_fail prepare "$out"; }}
if [ -e "$R" ] || [ -L "$R" ] || [ -e "$M" ]; then cat >/dev/null; dt_refuse "release $id already exists"; fi
dt_ok=0
dt_undo() {{
  [ "$dt_ok" = 1 ] && return 0
  cd /; chmod -R u+w -- "$R" 2>/dev/null; rm -rf -- "$R"; rm -f -- "$M" "$M.tmp"
}}
trap dt_undo EXIT
trap 'exit 98' HUP INT TERM
{{ printf '%s\\n' {_q(json.dumps(meta, sort_keys=True))} > "$M.tmp" \\
  && mv -f -- "$M.tmp" "$M"; }} 2>/dev/null \\
  || {{ cat >/dev/null; dt_fail prepare "cannot write $M (disk full or read-only?)"; }}
out=$(mkdir -- "$R" 2>&1) || {{ cat >/dev/null; dt_fail prepare "$out"; }}
label={_q(package.label)}
""")
    if git:
        lines.append(f"""\
url={_q(git.url)}; ref={_q(git.ref)}; G="$S/repo"
if [ -d "$G/objects" ]; then
  out=$(git --git-dir="$G" remote set-url origin "$url" 2>&1 \\
    && git --git-dir="$G" fetch --quiet --prune origin 2>&1) \\
    || dt_fail "git fetch" "$out"
else
  rm -rf -- "$G"
  out=$(git clone --quiet --mirror -- "$url" "$G" 2>&1) || dt_fail "git clone" "$out"
fi
rev=$(git --git-dir="$G" rev-parse --verify --quiet "$ref^{{commit}}") \\
  || dt_fail "git checkout" "ref $ref not found"
case $rev in ''|*[!0-9a-f]*) dt_fail "git checkout" "unexpected revision $rev";; esac
out=$(git --git-dir="$G" --work-tree="$R" checkout --quiet --force "$rev" -- . 2>&1) \\
  || dt_fail "git checkout" "$out"
label=$(printf '%s' "$rev" | cut -c1-12)
sed -e "s/@@label@@/$label/" -e "s/@@rev@@/$rev/" -- "$M" > "$M.tmp" && mv -f -- "$M.tmp" "$M" \\
  || dt_fail prepare "cannot write $M"
""")
    else:
        lines.append("""\
out=$(tar -x -z -o -f - -C "$R" 2>&1) \\
  || { cat >/dev/null; dt_fail upload "$(printf '%s' "$out" | tail -n 3)"; }
""")
    if settings.shared:
        lines.append('Rreal=$(cd -P -- "$R" && pwd)\n')
        for path in settings.shared:
            clean = clean_relative_path(path, "shared")
            lines.append(f"dt_share {_q(clean)} {_shared_kind(clean)}\n")
    if build:
        lines.append(_build_body(settings))
        # Still connected? If the deploy that asked vanished (killed, network gone), this write raises
        # SIGPIPE and the release is undone instead of being marked complete behind its back.
        lines.append("trap 'exit 98' PIPE\nprintf '@@dt built\\n' || exit 98\n")
        lines.append(f"dt_set_state \"$id\" {COMPLETE} prepare\ndt_step prepared\n")
    lines.append("dt_ok=1\nprintf '@@dt label\\t%s\\n' \"$label\"\n")
    return "".join(lines)


def prepare(target: Target, settings: Settings, release_id: str, package: Package, who: str,
            *, build: bool = False, timeout: float | None = None, owner: LockOwner | None = None) -> str:
    """Create ``releases/<id>`` (state preparing): unpack or clone, link shared paths (one round trip).

    The archive streams on stdin into ``tar``; a shared path found in the new release seeds
    ``shared/`` the first time and is replaced by the link after that. On any failure the
    release directory and its metadata are removed; ``current`` is never touched.

    :param who: recorded as the release's author, e.g. ``LockOwner.who``.
    :param build: also run the build hooks and mark the release complete, in the same round trip.
    :param owner: the rollout whose journal on the host gets to name this release first.
    :returns: the release's label (for git: the first 12 hex of the commit the host checked out).
    :raises UsageError: bad release id, or the release already exists on the host.
    :raises RemoteCommandFailed: step ``upload`` (e.g. disk full), ``shared``, ``git clone``,
        ``git checkout``, ``build hook``, or ``prepare``.
    """
    script = script_for_prepare(settings, release_id, package, who, build=build, owner=owner)
    return run_prepare(target, settings, script, release_id, package, timeout=timeout)


def run_prepare(target: Target, settings: Settings, script: str, release_id: str, package: Package,
                *, timeout: float | None = None) -> str:
    """Run a :func:`script_for_prepare` script with the package on its stdin; see :func:`prepare`."""
    try:
        _result, marks = run_script(target, settings, script, "prepare", stdin=package.data, timeout=timeout)
    except RemoteCommandFailed as error:
        if "No space left" in error.detail:
            raise RemoteCommandFailed(
                target.name, error.step,
                f"no space left on device under {settings.deploy_to} ({package.size_mb} MB archive);"
                f" the partial release {release_id} was removed and current was not changed",
            ) from error
        raise
    return marks.get("label", [package.label])[0]


def _build_body(settings: Settings) -> str:
    if not settings.build_hooks:
        return ""
    lines = ['dt_env "$id" "$R"\n']
    lines += [f'dt_hook build "$R" {_q(hook)}\n' for hook in settings.build_hooks]
    return "".join(lines)


def script_for_mark_bad(settings: Settings, release_id: str) -> str:
    """Shell text of :func:`mark_bad` (needs no free space)."""
    return (prelude(settings) + _STATE_FN + _ids(release_id)
            + f'[ -d "$R" ] || exit 0\ndt_set_state "$id" {BAD} "mark bad"\n')


def script_for_mark_verified(settings: Settings, release_id: str) -> str:
    """Shell text that marks a release verified: it was live and passed its verification."""
    return (prelude(settings) + _STATE_FN + _ids(release_id)
            + f'[ -d "$R" ] || exit 0\ndt_set_state "$id" {VERIFIED} "mark verified"\n')


def mark_bad(target: Target, settings: Settings, release_id: str) -> None:
    """Mark a release bad: never live again, never a rollback target, removed by cleanup (one round trip).

    A release the host does not have is left alone.
    """
    run_script(target, settings, script_for_mark_bad(settings, release_id), "mark bad")


def chain(*scripts: str) -> str:
    """Scripts run one after another in ONE round trip, each in a subshell of its own (its ``exit``
    ends only itself); the first that fails ends the whole, with its exit status and its marks."""
    return "".join(f"(\n{script}\n) || exit $?\n" for script in scripts)


# -- switch and restart ------------------------------------------------------------------------------


def script_for_switch(settings: Settings, release_id: str) -> str:
    """Shell text of :func:`switch`."""
    return prelude(settings) + _LIST_FN + _LINK_FN + _RECORDED_FN + STEP_FN + _ids(release_id) + """\
[ -d "$R" ] && [ ! -L "$R" ] || dt_refuse "release $id does not exist"
st=$(dt_state "$id")
case $st in complete|verified) ;; *) dt_refuse "release $id is $st; it cannot go live";; esac
dt_link "$R"
dt_step switched
dt_recorded "$id"
"""


def recorded_suite(marks: Mapping[str, list[str]]) -> str | None:
    """The suite recorded with the release a switch went to (JSON text), if it has one."""
    text = marks.get("recorded", [""])[0].strip()
    return text or None


def script_for_record_suite(settings: Settings, release_id: str, suite: str) -> str:
    """Shell text that records ``suite`` (one line of JSON) as the suite ``release_id`` was verified with;
    a failure to write it is a warning."""
    line = json.dumps(json.loads(suite), sort_keys=True, separators=(",", ":"))  # one line, whatever came in
    return prelude(settings) + _ids(release_id) + f"""\
f="$S/releases/$id.suite.json"
if [ -d "$R" ]; then
  {{ printf '%s\\n' {_q(line)} > "$f.tmp" && mv -f -- "$f.tmp" "$f"; }} 2>/dev/null \
    || {{ rm -f -- "$f.tmp"; printf '@@dt warn\\tcannot record the suite of %s (disk full?)\\n' "$id"; }}
fi
"""


def _previous(marks: dict[str, list[str]], settings: Settings) -> str | None:
    link = marks.get("previous", [""])[0]
    return live_id(link, settings) if link else None


@dataclass(frozen=True)
class Switched:
    """What a switch did on one host: the release that was live before, the suite recorded with the
    release that is live now (None: it has none), and whether stop hooks ran (nothing to go back to)."""

    previous: str | None
    suite: str | None = None
    stopped: bool = False


def switch(target: Target, settings: Settings, release_id: str) -> str | None:
    """Point ``current`` at a complete release, atomically, with an absolute link (one round trip).

    :returns: the release that was live before (None if nothing was).
    :raises UsageError: the release does not exist on the host or is not complete.
    :raises RemoteCommandFailed: ``current`` is a real directory, or the link could not be replaced.
    """
    _result, marks = run_script(target, settings, script_for_switch(settings, release_id), "switch")
    return _previous(marks, settings)


def script_for_restart(settings: Settings) -> str:
    """Shell text of :func:`restart`."""
    return prelude(settings) + _HOOK_FN + STEP_FN + _restart_body(settings)


def _restart_body(settings: Settings) -> str:
    lines = ["""\
[ -L "$D/current" ] || dt_fail restart "nothing is live ($D/current is missing)"
rel=$(cd -P -- "$D/current" 2>/dev/null && pwd) || dt_fail restart "$D/current points at a missing directory"
dt_env "${rel##*/}" "$rel"
mkdir -p -- "$S" 2>/dev/null
"""]
    lines += [f'dt_hook restart "$rel" {_q(hook)}\n' for hook in settings.restart_hooks]
    lines.append("dt_step restarted 2>/dev/null\nprintf '@@dt restarted\\t%s\\n' \"${rel##*/}\"\n")
    return "".join(lines)


def script_for_switch_and_restart(settings: Settings, release_id: str) -> str:
    """Shell text of :func:`switch_and_restart`."""
    return script_for_switch(settings, release_id) + _HOOK_FN + _restart_body(settings)


def switch_and_restart(target: Target, settings: Settings, release_id: str,
                       *, timeout: float | None = None) -> Switched:
    """:func:`switch` then :func:`restart`, in one round trip.

    :returns: the release that was live before, and the suite recorded with ``release_id``.
    :raises RestartFailed: the switch happened, then a restart hook failed (``.previous`` says where
        to go back).
    :raises UsageError, RemoteCommandFailed: as :func:`switch` (then nothing was switched).
    """
    return run_switch_and_restart(target, settings, script_for_switch_and_restart(settings, release_id),
                                  timeout=timeout)


def run_switch_and_restart(target: Target, settings: Settings, script: str,
                           *, timeout: float | None = None) -> Switched:
    """Run a :func:`script_for_switch_and_restart` script; see :func:`switch_and_restart`."""
    result, marks = execute(target, settings, script, timeout=timeout)
    try:
        raise_for(target, settings, result, marks, "restart")
    except RemoteCommandFailed as error:
        if "live" in marks:
            raise RestartFailed(target.name, error.step, error.detail, _previous(marks, settings)) from error
        raise
    return Switched(_previous(marks, settings), recorded_suite(marks))


def script_for_switch_back(settings: Settings, previous: str | None, release_id: str) -> str:
    """Shell text of :func:`switch_back`."""
    body = prelude(settings) + _LIST_FN + _LINK_FN + _RECORDED_FN + _HOOK_FN + _ids(release_id)
    prev = check_release_id(previous) if previous else ""
    body += f"""\
prev_id={_q(prev)}
now=$(dt_live)
if [ -e "$D/current" ] || [ -L "$D/current" ]; then
  case $now in
    "$id"|"$prev_id") ;;
    *) dt_fail "switch back" "current points at ${{now:-something else}}, not $id; left as is";;
  esac
fi
"""
    if not previous:
        # Nothing to go back to: the stop hooks (if any) stop what the failed release started.
        stop = "".join(f'dt_hook stop "$R" {_q(hook)}\n' for hook in settings.stop_hooks)
        if stop:
            stop = ('if [ -d "$R" ]; then\n  dt_env "$id" "$R"\n  mkdir -p -- "$S" 2>/dev/null\n'
                    + "".join("  " + line + "\n" for line in stop.splitlines())
                    + "  printf '@@dt stopped\\n'\nfi\n")
        return body + stop + """\
if [ "$now" = "$id" ]; then rm -f -- "$D/current" || dt_fail "switch back" "cannot remove $D/current"; fi
printf '@@dt live\\t\\n'
"""
    return body + """\
P="$D/releases/$prev_id"
[ -d "$P" ] || dt_fail "switch back" "previous release $prev_id is gone"
[ "$(dt_state "$prev_id")" != preparing ] || dt_fail "switch back" "previous release $prev_id is incomplete"
dt_link "$P"
dt_recorded "$prev_id"
"""


def switch_back(target: Target, settings: Settings, previous: str | None, release_id: str) -> Switched:
    """Undo a :func:`switch` to ``release_id``: point ``current`` back at ``previous`` and run the
    restart hooks there, in one round trip.

    ``previous`` None (a first deploy) runs the stop hooks in the failed release's directory, removes
    ``current`` and restarts nothing. Only acts when
    ``current`` points at ``release_id``, ``previous`` or nothing: a host someone else changed is
    left alone.

    :returns: the suite recorded with ``previous``, and whether stop hooks ran.
    :raises RemoteCommandFailed: step ``switch back``: current points elsewhere, or previous is gone;
        step ``restart hook``: the release switched back to did not restart; ``stop hook``.
    """
    script = script_for_switch_back(settings, previous, release_id)
    if previous and settings.restart_hooks:
        script = chain(script, script_for_restart(settings))
    _result, marks = run_script(target, settings, script, "switch back")
    return Switched(previous, recorded_suite(marks), stopped="stopped" in marks)


# -- removal, cleanup, log, finish ---------------------------------------------------------------------


def script_for_remove(settings: Settings, release_id: str) -> str:
    """Shell text of :func:`remove_release`."""
    return prelude(settings) + _LIST_FN + _REMOVE_FN + _ids(release_id) + """\
[ "$id" = "$(dt_live)" ] && dt_refuse "release $id is live; switch to another release first"
dt_bad=0
if [ -d "$R" ] || [ -f "$M" ]; then dt_remove "$id"; fi
[ "$dt_bad" = 0 ] || dt_fail remove "cannot remove $R"
"""


def remove_release(target: Target, settings: Settings, release_id: str) -> bool:
    """Delete a release directory and its metadata (one round trip); True if there was one.

    :raises UsageError: the release is live (nothing removed).
    """
    _result, marks = run_script(target, settings, script_for_remove(settings, release_id), "remove")
    return "removed" in marks


def script_for_discard(settings: Settings, release_id: str, *, bad: bool) -> str:
    """Shell text that marks a failed release bad (``bad``: it went live) or removes it (never live)."""
    return script_for_mark_bad(settings, release_id) if bad else script_for_remove(settings, release_id)


@dataclass(frozen=True)
class FinishResult:
    """What :func:`finish` did on one host."""

    removed: tuple[str, ...]
    unlocked: bool  # no lock of this deploy is left on the host
    warnings: tuple[str, ...] = ()

    def describe(self) -> str:
        """``removed 20261101000000, 20261102000000; unlocked`` and the warnings, as they happened."""
        words = [f"removed {', '.join(self.removed)}"] if self.removed else []
        words.append("unlocked" if self.unlocked else "LOCK KEPT")
        return "; ".join(words + [f"warning: {w}" for w in self.warnings])


def script_for_finish(settings: Settings, owner: LockOwner, *, logs: bool = True, cleanup: bool = True) -> str:
    """Shell text of :func:`finish`; with ``logs``, the log line comes on its stdin."""
    body = prelude(settings) + _LIST_FN + _REMOVE_FN
    if logs:  # first: nothing before it may read stdin
        body += script_for_log_line(None, fatal=False)
    if cleanup:
        body += _cleanup_body(settings)
    unlock = script_for_release_lock(settings, owner)
    return body + unlock[len(prelude(settings)):]


def finish(target: Target, settings: Settings, owner: LockOwner, event: Mapping[str, Any] | None,
           *, cleanup: bool = True, first: Sequence[str] = ()) -> FinishResult:
    """End a deploy on a host in one round trip: clean up old releases, log ``event``, release our lock.

    A release that cannot be removed or a log line that cannot be written (disk full) is a
    warning in the result, not an error: the lock is released whatever happens.

    :param first: scripts to run before, in the same round trip (e.g. :func:`script_for_discard`);
        if one of them fails, nothing after it runs and the lock is kept.
    """
    script = chain(*first, script_for_finish(settings, owner, logs=event is not None, cleanup=cleanup))
    return run_finish(target, settings, script, event)


def run_finish(target: Target, settings: Settings, script: str, event: Mapping[str, Any] | None) -> FinishResult:
    """Run a :func:`script_for_finish` script (``event``, if any, on its stdin); see :func:`finish`."""
    stdin = None if event is None else (log_line(event) + "\n").encode()
    _result, marks = run_script(target, settings, script, "finish", stdin=stdin)
    warnings = list(marks.get("warn", []))
    if "lockgone" in marks:
        warnings.append("its lock was already gone (removed by an unlock)")
    if "lockother" in marks:
        warnings.append("the lock there now belongs to another deploy (left alone)")
    unlocked = bool({"released", "lockgone", "lockother"} & set(marks))
    return FinishResult(tuple(marks.get("removed", [])), unlocked, tuple(warnings))

