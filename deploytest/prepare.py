"""Prepare a release on a host: create ``releases/<id>`` from the package, link the shared paths, build.

One shell script of :func:`deploytest.shell.script`, run in ONE remote session with the archive (if any)
on its stdin; :func:`script_for_prepare` gives it as text for ``--dry-run``.
"""

from __future__ import annotations

import posixpath
import re

from . import records
from .audit import utc_now
from .config import Settings
from .config_values import clean_relative_path
from .errors import RemoteCommandFailed
from .hosts import Target
from .lock import LockOwner, name_release_body
from .remote import run_script
from .shell import Body, join, script
from .source import GIT, Package
from .state import COMPLETE, PREPARING, check_release_id
from .steps import hooks_body, ids

_EXTENSION = re.compile(r"[^/]\.[A-Za-z0-9]+$")

_START = """\
out=$(mkdir -p -- "$D/releases" "$D/shared" "$S/releases" 2>&1) \\
  || { cat >/dev/null; dt_fail prepare "$out"; }
if [ -e "$R" ] || [ -L "$R" ] || [ -e "$M" ] || [ -e "$S/releases/$id.json" ]; then
  cat >/dev/null; dt_refuse "release $id already exists"
fi
prepared_ok=0
dt_undo() {
  [ "$prepared_ok" = 1 ] && return 0
  cd /; chmod -R u+w -- "$R" 2>/dev/null; rm -rf -- "$R"; rm -f -- "$M" "$M.tmp"
}
trap dt_undo EXIT
trap 'exit 98' HUP INT TERM
{ printf '%s' "$meta" > "$M.tmp" && mv -f -- "$M.tmp" "$M"; } 2>/dev/null \\
  || { cat >/dev/null; dt_fail prepare "cannot write $M (disk full or read-only?)"; }
out=$(mkdir -- "$R" 2>&1) || { cat >/dev/null; dt_fail prepare "$out"; }
"""

_GIT = """\
G="$S/repo"
if [ -d "$G/objects" ]; then
  out=$(git --git-dir="$G" remote set-url origin "$url" 2>&1 \\
    && git --git-dir="$G" fetch --quiet --prune origin 2>&1) \\
    || dt_fail "git fetch" "$out"
else
  rm -rf -- "$G"
  out=$(git clone --quiet --mirror -- "$url" "$G" 2>&1) || dt_fail "git clone" "$out"
fi
rev=$(git --git-dir="$G" rev-parse --verify --quiet "$ref^{commit}") \\
  || dt_fail "git checkout" "ref $ref not found"
case $rev in ''|*[!0-9a-f]*) dt_fail "git checkout" "unexpected revision $rev";; esac
out=$(git --git-dir="$G" --work-tree="$R" checkout --quiet --force "$rev" -- . 2>&1) \\
  || dt_fail "git checkout" "$out"
label=$(printf '%s' "$rev" | cut -c1-12)
{ cat -- "$M"; dt_put label "$label"; dt_put revision "$rev"; } > "$M.tmp" && mv -f -- "$M.tmp" "$M" \\
  || dt_fail prepare "cannot write $M"
"""

_UNPACK = """\
out=$(tar -x -z -o -f - -C "$R" 2>&1) \\
  || { cat >/dev/null; dt_fail upload "$(printf '%s' "$out" | tail -n 3)"; }
"""


def script_for_prepare(settings: Settings, release_id: str, package: Package, who: str,
                       *, build: bool = False, owner: LockOwner | None = None) -> str:
    """Shell text of :func:`prepare` (the archive, if any, is its stdin)."""
    rid = check_release_id(release_id)
    git = package.git if package.kind == GIT else None
    meta: dict[str, str] = {"id": rid, "kind": package.kind, "state": PREPARING, "when": utc_now(), "who": who}
    if not git:
        meta["label"] = package.label  # a git release's label and revision are its commit, added on the host
    parts: list[Body] = [ids(rid, meta=True)]
    if owner is not None:  # the journal names the release before it is made
        parts.append(name_release_body(owner))
    parts.append((_START, {"meta": records.format_record(meta), "label": package.label}))
    parts.append((_GIT, {"url": git.url, "ref": git.ref}) if git else (_UNPACK, {}))
    if settings.shared:
        lines = ['Rreal=$(cd -P -- "$R" && pwd)\n']
        values: dict[str, object] = {}
        for n, path in enumerate(settings.shared, 1):
            clean = clean_relative_path(path, "shared")
            values[f"shared_{n}"] = clean
            lines.append(f'dt_share "$shared_{n}" {_shared_kind(clean)}\n')
        parts.append(("".join(lines), values))
    if build:
        if settings.build_hooks:
            parts.append(('dt_env "$id" "$R"\n', {}))
            parts.append(hooks_body("build", settings.build_hooks, "$R"))
        # Still connected? If the deploy that asked vanished (killed, network gone), this write raises
        # SIGPIPE and the release is undone instead of being marked complete behind its back.
        parts.append(("trap 'exit 98' PIPE\nprintf '@@dt built\\n' || exit 98\n"
                      f'dt_set_state "$id" {COMPLETE} prepare\ndt_step prepared\n', {}))
    parts.append(("prepared_ok=1\nprintf '@@dt label\\t%s\\n' \"$label\"\n", {}))
    return script(settings, *join(*parts))


def _shared_kind(path: str) -> str:
    # A shared path that exists nowhere yet is created as an empty file when it looks like one
    # (config/app.env, .env, settings.yml), otherwise as a directory (data, log).
    name = posixpath.basename(path)
    return "file" if name.startswith(".") or _EXTENSION.search(name) else "dir"


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
    text = script_for_prepare(settings, release_id, package, who, build=build, owner=owner)
    return run_prepare(target, settings, text, release_id, package, timeout=timeout)


def run_prepare(target: Target, settings: Settings, text: str, release_id: str, package: Package,
                *, timeout: float | None = None) -> str:
    """Run a :func:`script_for_prepare` script with the package on its stdin; see :func:`prepare`."""
    try:
        _result, marks = run_script(target, settings, text, "prepare", stdin=package.data, timeout=timeout)
    except RemoteCommandFailed as error:
        if "No space left" in error.detail:
            raise RemoteCommandFailed(
                target.name, error.step,
                f"no space left on device under {settings.deploy_to} ({package.size_mb} MB archive);"
                f" the partial release {release_id} was removed and current was not changed",
            ) from error
        raise
    return marks.get("label", [package.label])[0]
