"""What the preflight reads on a host, in one session: its releases, what is live, its lock and
journal, free disk and writability (:func:`inspect`); with the lock taken in the same session
(:func:`inspect_and_lock`), and with the baseline's probes before it (:func:`probe_and_inspect`)."""

from __future__ import annotations

import dataclasses
from typing import Callable

from .checks.attempt import Probes, after_frames, probes_first
from .checks.base import ProbeOutput
from .config import Settings
from .errors import RemoteCommandFailed
from .hosts import Reply, Target
from .lock import LockInfo, LockOwner, lock_after_inspect_body
from .remote import parse_marks, raise_for, run_script
from .shell import join, quote, script
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


def script_for_lock_then_probe(settings: Settings, owner: LockOwner, probes: Probes) -> str:
    """Shell text of :func:`lock_then_probe`: the inspection and lock (on no input: the probes' secrets
    wait for them), the line :func:`locked_line` once they are done, then the probes where something is
    live and the lock script ran. It ends once its input does (the answer to that line has come, so the
    session is never gone when it is sent), with the lock script's exit status."""
    return (f"(\n{script_for_inspect_and_lock(settings, owner)}\n) </dev/null; dt_rc=$?\n"
            f"echo {quote(locked_line(probes))}\n"
            f'if [ "$dt_rc" = 0 ] && [ -L {quote(settings.current)} ]; then (\n{probes.sent}\n); fi\n'
            'while read -r _; do :; done\n'
            'exit "$dt_rc"\n')


def locked_line(probes: Probes) -> str:
    """The line between a :func:`lock_then_probe` session's inspection and its probes' frames."""
    return f"DT{probes.nonce} inspected"


def lock_then_probe(target: Target, settings: Settings, owner: LockOwner, probes: Probes,
                    locked: Callable[[str], None]) -> tuple[HostState, str, list[ProbeOutput] | None]:
    """:func:`inspect_and_lock`, then ``probes`` against what is live, in ONE round trip: the first
    host's preflight, whose lock decides whether the others are locked too. ``locked`` hears the lock's
    outcome (as :func:`inspect_and_lock` names it, or "" when none came) as soon as the host has it,
    while the probes still run, so the other hosts need not wait for them. The probes look once the
    lock is taken, where :func:`probe_and_inspect` looks before: either way, before anything changes.

    :returns: as :func:`probe_and_inspect`.
    """
    line = locked_line(probes)
    heard = [False]

    def answer(out: str) -> bytes:
        heard[0] = True
        locked(_outcome(parse_marks(("\n" + out).partition(f"\n{line}\n")[0])))
        return b""

    try:
        result = target.run(script_for_lock_then_probe(settings, owner, probes), stdin=probes.stdin,
                            reply=Reply(line, answer))
    finally:
        if not heard[0]:
            locked("")
    inspected, _, after = ("\n" + result.stdout).partition(f"\n{line}\n")
    marks = parse_marks(inspected)
    raise_for(target, settings, result, marks, "inspect")
    state, taken = _inspected_and_locked(target, settings, inspected.removeprefix("\n"), marks)
    return state, taken, probes.outputs(after, "no frame came back") if f"\n{probes.end}\n" in "\n" + after else None


def _outcome(marks: dict[str, list[str]]) -> str:
    for mark, taken in (("locked", "locked"), ("lockdeferred", "deferred"), ("held", "held")):
        if mark in marks:
            return taken
    return marks.get("lockfail", [""])[0]


def _inspected_and_locked(target: Target, settings: Settings, stdout: str,
                          marks: dict[str, list[str]]) -> tuple[HostState, str]:
    _complete(target, marks)
    state = dataclasses.replace(parse_state(target.name, settings, stdout), local=target.is_local)
    taken = _outcome(marks)
    if taken == "held":
        return dataclasses.replace(state, lock=state.lock or LockInfo.parse("\n".join(marks["held"]))), "held"
    return state, taken or "the lock could not be taken"


def script_for_current(settings: Settings) -> str:
    """Shell text printing where ``current`` points ('' if nowhere); read-only, needs no sudo."""
    return script(settings, 'readlink -- "$D/current" 2>/dev/null || true\n')
