"""What the preflight reads on a host, in one session: its releases, what is live, its lock and
journal, free disk and writability (:func:`inspect`); with the lock taken in the same session
(:func:`inspect_and_lock`), and with the baseline's probes before it (:func:`probe_and_inspect`)."""

from __future__ import annotations

import dataclasses

from .checks.attempt import Probes, after_frames, probes_first
from .checks.base import ProbeOutput
from .config import Settings
from .errors import RemoteCommandFailed
from .hosts import Target
from .lock import LockInfo, LockOwner, lock_after_inspect_body
from .remote import parse_marks, raise_for, run_script
from .shell import join, script
from .state import HostState, parse_state

_INSPECT = r"""if [ -d "$D" ]; then printf '@@dt exists\t1\n'; else printf '@@dt exists\t0\n'; fi
d=$D; while [ ! -d "$d" ]; do d=${d%/*}; [ -n "$d" ] || d=/; done
if [ -w "$d" ]; then printf '@@dt writable\t1\n'; else printf '@@dt writable\t0\n'; fi
printf '@@dt free\t%s\n' "$(df -Pk -- "$d" 2>/dev/null | awk 'NR==2 {print int($4/1024)}')"
if [ -L "$D/current" ]; then printf '@@dt current\tlink\t%s\n' "$(readlink -- "$D/current")"
elif [ -e "$D/current" ]; then printf '@@dt current\tother\n'
else printf '@@dt current\tnone\n'; fi
dt_list | while read -r id st; do
  printf '@@dt release\t%s\t%s\n' "$id" "$st"
  if [ "$st" != unknown ]; then
    if [ -f "$S/releases/$id.meta" ]; then dt_show meta "$S/releases/$id.meta"
    else dt_show meta "$S/releases/$id.json"; fi
  fi
done
dt_show journal "$S/journal"
lv=$(dt_live)
if [ -n "$lv" ] && [ -f "$S/releases/$lv.suite.json" ]; then
  printf '@@dt livesuite\t'; head -n 1 -- "$S/releases/$lv.suite.json"; echo; fi
if [ -f "$S/lock" ]; then
  dt_show lock "$S/lock"
  m=$(stat -c %Y -- "$S/lock" 2>/dev/null || stat -f %m -- "$S/lock" 2>/dev/null)
  [ -n "$m" ] && printf '@@dt lockage\t%s\n' "$(( $(date +%s) - m ))"
fi
for f in "$S/releases"/*.suite.json; do
  [ -f "$f" ] && { f=${f##*/}; printf '@@dt suite\t%s\n' "${f%.suite.json}"; }
done
if [ -f "$S/log.jsonl" ]; then printf '@@dt last\t'; tail -n 1 -- "$S/log.jsonl"; echo; fi
"""


def script_for_inspect(settings: Settings) -> str:
    """Shell text printing a host's state as ``@@dt`` lines (read-only)."""
    return script(settings, _INSPECT)


def script_for_inspect_and_lock(settings: Settings, owner: LockOwner) -> str:
    """Shell text of :func:`inspect_and_lock`."""
    return script(settings, *join((_INSPECT, {}), lock_after_inspect_body(owner)))


def inspect(target: Target, settings: Settings, *, timeout: float | None = None) -> HostState:
    """Read a host's releases, live release, lock, free disk and writability (one round trip).

    :raises RemoteCommandFailed: the script could not run (e.g. sudo refused).
    :raises HostUnreachable: from the target.
    """
    result, marks = run_script(target, settings, script_for_inspect(settings), "inspect", timeout=timeout)
    _complete(target, marks)
    return dataclasses.replace(parse_state(target.name, settings, result.stdout), local=target.is_local)


def _complete(target: Target, marks: dict[str, list[str]]) -> None:
    """The inspection's answer came back whole: a host whose state is half read is never judged."""
    if not {"exists", "writable", "free", "current"} <= set(marks):
        raise RemoteCommandFailed(target.name, "inspect", "the host's state came back incomplete")


def inspect_and_lock(target: Target, settings: Settings, owner: LockOwner) -> tuple[HostState, str]:
    """:func:`inspect`, then take ``owner``'s lock and journal, in ONE round trip.

    :returns: the state as it was before the lock, and ``locked``, ``held``, ``deferred`` (a first
        deploy: the lock is taken after the preflight) or why the lock could not be written.
    """
    result, marks = run_script(target, settings, script_for_inspect_and_lock(settings, owner), "inspect")
    return _inspected_and_locked(target, settings, result.stdout, marks)


def script_for_probe_and_inspect(settings: Settings, owner: LockOwner | None, probes: Probes) -> str:
    """Shell text of :func:`probe_and_inspect`."""
    rest = script_for_inspect(settings) if owner is None else script_for_inspect_and_lock(settings, owner)
    return probes_first(probes, settings.current, rest)


def probe_and_inspect(target: Target, settings: Settings, owner: LockOwner | None,
                      probes: Probes) -> tuple[HostState, str, list[ProbeOutput] | None]:
    """``probes`` against what is live (the baseline's one look; nothing where nothing is live), then
    :func:`inspect_and_lock` (``owner`` None: :func:`inspect`), in ONE round trip. Not through sudo:
    the probes run as the login user, as they always do.

    :returns: as :func:`inspect_and_lock` (``""`` for an inspection alone), and the probes' outputs
        (None where nothing was live).
    """
    result = target.run(script_for_probe_and_inspect(settings, owner, probes), stdin=probes.stdin)
    rest = after_frames(result.stdout, probes)
    marks = parse_marks(rest)
    raise_for(target, settings, result, marks, "inspect")
    state, taken = _inspected_and_locked(target, settings, rest, marks)
    return state, taken if owner is not None else "", (probes.outputs(result.stdout, "no frame came back")
                                                       if rest != result.stdout else None)


def _inspected_and_locked(target: Target, settings: Settings, stdout: str,
                          marks: dict[str, list[str]]) -> tuple[HostState, str]:
    _complete(target, marks)
    state = dataclasses.replace(parse_state(target.name, settings, stdout), local=target.is_local)
    if "locked" in marks:
        return state, "locked"
    if "lockdeferred" in marks:
        return state, "deferred"
    if "held" in marks:
        return dataclasses.replace(state, lock=state.lock or LockInfo.parse("\n".join(marks["held"]))), "held"
    return state, marks.get("lockfail", ["the lock could not be taken"])[0]


def script_for_current(settings: Settings) -> str:
    """Shell text printing where ``current`` points ('' if nowhere); read-only, needs no sudo."""
    return script(settings, 'readlink -- "$D/current" 2>/dev/null || true\n')
