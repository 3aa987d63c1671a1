"""Per-host release steps: switch and restart, switch back, mark, remove, finish.

Each step is one shell script run in ONE :meth:`Target.run` (one remote session), whatever the number of
files or releases; ``script_for_*`` gives that script as text without running it, for ``--dry-run``.
Every script is built by :func:`deploytest.shell.script`; prepare is in :mod:`deploytest.prepare`, the
preflight's reading of a host in :mod:`deploytest.inspection`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .audit import answered_log_body, log_body, stdin_line
from .config import Settings
from .errors import RemoteCommandFailed
from .hosts import Target
from .lock import LockOwner, release_lock_body
from .remote import execute, raise_for, run_script
from .shell import Body, chain, join, script
from .state import BAD, VERIFIED, check_release_id, live_id


class RestartFailed(RemoteCommandFailed):
    """A restart hook failed after the switch: the host is live on the new release.

    :ivar previous: the release that was live before the switch (None on a first deploy).
    """

    def __init__(self, host: str, step: str, detail: str, previous: str | None) -> None:
        super().__init__(host, step, detail)
        self.previous = previous


def ids(release_id: str, *, meta: bool = False) -> Body:
    """Shell body setting ``R`` (the release's directory) and, with ``meta``, ``M`` (its metadata) from
    the value ``id``."""
    text = 'R="$D/releases/$id"; M="$S/releases/$id.meta"\n' if meta else 'R="$D/releases/$id"\n'
    return text, {"id": check_release_id(release_id)}


# -- mark ----------------------------------------------------------------------------------------


def _mark(settings: Settings, release_id: str, state: str) -> str:
    return script(settings, *join(ids(release_id), (
        '[ -d "$R" ] || exit 0\ndt_set_state "$id" "$mark" "mark $mark"\n', {"mark": state})))


def script_for_mark_bad(settings: Settings, release_id: str) -> str:
    """Shell text of :func:`mark_bad` (needs no free space)."""
    return _mark(settings, release_id, BAD)


def script_for_mark_verified(settings: Settings, release_id: str) -> str:
    """Shell text that marks a release verified: it was live and passed its verification."""
    return _mark(settings, release_id, VERIFIED)


def mark_bad(target: Target, settings: Settings, release_id: str) -> None:
    """Mark a release bad: never live again, never a rollback target, removed by cleanup (one round trip).

    A release the host does not have is left alone.
    """
    run_script(target, settings, script_for_mark_bad(settings, release_id), "mark bad")


# -- switch and restart ------------------------------------------------------------------------------

_SWITCH = """\
[ -d "$R" ] && [ ! -L "$R" ] || dt_refuse "release $id does not exist"
st=$(dt_state "$id")
case $st in complete|verified) ;; *) dt_refuse "release $id is $st; it cannot go live";; esac
dt_link "$R"
dt_step switched
dt_recorded "$id"
"""


def script_for_switch(settings: Settings, release_id: str) -> str:
    """Shell text of :func:`switch`."""
    return script(settings, *join(ids(release_id), (_SWITCH, {})))


def recorded_suite(marks: Mapping[str, list[str]]) -> str | None:
    """The suite recorded with the release a switch went to (JSON text), if it has one."""
    text = marks.get("recorded", [""])[0].strip()
    return text or None


def script_for_record_suite(settings: Settings, release_id: str, suite: str) -> str:
    """Shell text that records ``suite`` (one line of JSON) as the suite ``release_id`` was verified with;
    a failure to write it is a warning."""
    line = json.dumps(json.loads(suite), sort_keys=True, separators=(",", ":"))  # one line, whatever came in
    return script(settings, *join(ids(release_id), ("""\
f="$S/releases/$id.suite.json"
if [ -d "$R" ]; then
  { printf '%s\\n' "$suite" > "$f.tmp" && mv -f -- "$f.tmp" "$f"; } 2>/dev/null \\
    || { rm -f -- "$f.tmp"; printf '@@dt warn\\tcannot record the suite of %s (disk full?)\\n' "$id"; }
fi
""", {"suite": line})))


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


def hooks_body(kind: str, hooks: Sequence[str], where: str, indent: str = "") -> Body:
    """Shell body running ``hooks`` one after another in directory ``where``; each hook is a value."""
    values = {f"{kind}_hook_{n}": hook for n, hook in enumerate(hooks, 1)}
    return "".join(f'{indent}dt_hook {kind} "{where}" "${name}"\n' for name in values), dict(values)


def _restart_body(settings: Settings) -> Body:
    return join(("""\
[ -L "$D/current" ] || dt_fail restart "nothing is live ($D/current is missing)"
rel=$(cd -P -- "$D/current" 2>/dev/null && pwd) || dt_fail restart "$D/current points at a missing directory"
dt_env "${rel##*/}" "$rel"
mkdir -p -- "$S" 2>/dev/null
""", {}), hooks_body("restart", settings.restart_hooks, "$rel"),
        ("dt_step restarted 2>/dev/null\nprintf '@@dt restarted\\t%s\\n' \"${rel##*/}\"\n", {}))


def script_for_restart(settings: Settings) -> str:
    """Shell text of a restart: the restart hooks in the live release's directory."""
    return script(settings, *_restart_body(settings))


def script_for_switch_and_restart(settings: Settings, release_id: str) -> str:
    """Shell text of :func:`switch_and_restart`."""
    return script(settings, *join(ids(release_id), (_SWITCH, {}), _restart_body(settings)))


def switch_and_restart(target: Target, settings: Settings, release_id: str,
                       *, timeout: float | None = None) -> Switched:
    """:func:`switch` then restart, in one round trip.

    :returns: the release that was live before, and the suite recorded with ``release_id``.
    :raises RestartFailed: the switch happened, then a restart hook failed (``.previous`` says where
        to go back).
    :raises UsageError, RemoteCommandFailed: as :func:`switch` (then nothing was switched).
    """
    return run_switch_and_restart(target, settings, script_for_switch_and_restart(settings, release_id),
                                  timeout=timeout)


def run_switch_and_restart(target: Target, settings: Settings, text: str,
                           *, timeout: float | None = None) -> Switched:
    """Run a :func:`script_for_switch_and_restart` script; see :func:`switch_and_restart`."""
    result, marks = execute(target, settings, text, timeout=timeout)
    try:
        raise_for(target, settings, result, marks, "restart")
    except RemoteCommandFailed as error:
        if "live" in marks:
            raise RestartFailed(target.name, error.step, error.detail, _previous(marks, settings)) from error
        raise
    return Switched(_previous(marks, settings), recorded_suite(marks))


def script_for_switch_back(settings: Settings, previous: str | None, release_id: str) -> str:
    """Shell text of :func:`switch_back`."""
    prev = check_release_id(previous) if previous else ""
    check = ("""\
now=$(dt_live)
if [ -e "$D/current" ] || [ -L "$D/current" ]; then
  case $now in
    "$id"|"$prev_id") ;;
    *) dt_fail "switch back" "current points at ${now:-something else}, not $id; left as is";;
  esac
fi
""", {"prev_id": prev})
    if previous:
        return script(settings, *join(("", {"id": check_release_id(release_id)}), check, ("""\
P="$D/releases/$prev_id"
[ -d "$P" ] || dt_fail "switch back" "previous release $prev_id is gone"
[ "$(dt_state "$prev_id")" != preparing ] || dt_fail "switch back" "previous release $prev_id is incomplete"
dt_link "$P"
dt_recorded "$prev_id"
""", {})))
    # Nothing to go back to: the stop hooks (if any) stop what the failed release started.
    stop: Body = ("", {})
    if settings.stop_hooks:
        stop = join(('if [ -d "$R" ]; then\n  dt_env "$id" "$R"\n  mkdir -p -- "$S" 2>/dev/null\n', {}),
                    hooks_body("stop", settings.stop_hooks, "$R", "  "), ("  printf '@@dt stopped\\n'\nfi\n", {}))
    release: Body = ids(release_id) if settings.stop_hooks else ("", {"id": check_release_id(release_id)})
    return script(settings, *join(release, check, stop, ("""\
if [ "$now" = "$id" ]; then rm -f -- "$D/current" || dt_fail "switch back" "cannot remove $D/current"; fi
printf '@@dt live\\t\\n'
""", {})))


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
    text = script_for_switch_back(settings, previous, release_id)
    if previous and settings.restart_hooks:
        text = chain(text, script_for_restart(settings))
    _result, marks = run_script(target, settings, text, "switch back")
    return Switched(previous, recorded_suite(marks), stopped="stopped" in marks)


# -- removal, cleanup, log, finish ---------------------------------------------------------------------


def script_for_remove(settings: Settings, release_id: str) -> str:
    """Shell text of :func:`remove_release`."""
    return script(settings, *join(ids(release_id, meta=True), ("""\
[ "$id" = "$(dt_live)" ] && dt_refuse "release $id is live; switch to another release first"
if [ -d "$R" ] || [ -f "$M" ] || [ -f "$S/releases/$id.json" ]; then
  dt_remove "$id" || dt_fail remove "cannot remove $R"
fi
""", {})))


def remove_release(target: Target, settings: Settings, release_id: str) -> bool:
    """Delete a release directory and its metadata (one round trip); True if there was one.

    :raises UsageError: the release is live (nothing removed).
    """
    _result, marks = run_script(target, settings, script_for_remove(settings, release_id), "remove")
    return "removed" in marks


def script_for_discard(settings: Settings, release_id: str, *, bad: bool) -> str:
    """Shell text that marks a failed release bad (``bad``: it went live) or removes it (never live)."""
    return script_for_mark_bad(settings, release_id) if bad else script_for_remove(settings, release_id)


# The rule of cleanup_plan, over "id state" lines sorted by id; string comparisons throughout.
CLEANUP_AWK = r"""{ id[NR] = $1; st[NR] = $2 }
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


def _cleanup_body(settings: Settings) -> Body:
    return ('for id in $(dt_list | sort | awk -v live="$(dt_live)" -v keep="$keep" "$cleanup_awk");'
            ' do dt_remove "$id"; done\n', {"keep": int(settings.keep_releases), "cleanup_awk": CLEANUP_AWK})


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
    """Shell text of :func:`finish`; with ``logs``, the log line is the first line of its stdin."""
    parts: list[Body] = [log_body(None, fatal=False)] if logs else []  # first: nothing before it reads stdin
    if cleanup:
        parts.append(_cleanup_body(settings))
    return script(settings, *join(*parts, release_lock_body(owner)))


def finish(target: Target, settings: Settings, owner: LockOwner, event: Mapping[str, Any] | None,
           *, cleanup: bool = True, first: Sequence[str] = ()) -> FinishResult:
    """End a deploy on a host in one round trip: clean up old releases, log ``event``, release our lock.

    A release that cannot be removed or a log line that cannot be written (disk full) is a
    warning in the result, not an error: the lock is released whatever happens.

    :param first: scripts to run before, in the same round trip (e.g. :func:`script_for_discard`);
        if one of them fails, nothing after it runs and the lock is kept.
    """
    text = chain(*first, script_for_finish(settings, owner, logs=event is not None, cleanup=cleanup))
    return run_finish(target, settings, text, event)


def run_finish(target: Target, settings: Settings, text: str, event: Mapping[str, Any] | None) -> FinishResult:
    """Run a :func:`script_for_finish` script, ``event`` on its stdin; see :func:`finish`."""
    _result, marks = run_script(target, settings, text, "finish", stdin=stdin_line(event))
    warnings = list(marks.get("warn", []))
    if "lockgone" in marks:
        warnings.append("its lock was already gone (removed by an unlock)")
    if "lockother" in marks:
        warnings.append("the lock there now belongs to another deploy (left alone)")
    unlocked = bool({"released", "lockgone", "lockother"} & set(marks))
    return FinishResult(tuple(marks.get("removed", [])), unlocked, tuple(warnings))


def script_for_answered_log(settings: Settings) -> str:
    """Shell text that logs the line a running verify answers with (empty: nothing), where deployed."""
    return script(settings, *answered_log_body())


def script_for_log(settings: Settings, event: Mapping[str, Any]) -> str:
    """Shell text that logs ``event`` on a host deploytest has deployed to (best effort; none: nothing)."""
    text, values = log_body(event, fatal=False)
    return script(settings, 'if [ -d "$S" ]; then\n' + text + "fi\n", values)
