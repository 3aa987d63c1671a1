"""Shell text: the one library every remote script of deploytest is built with.

:func:`script` is the one way to build a script: it starts with the prelude (strict mode, ``D`` and ``S``),
assigns every value the script needs as a shell variable quoted by :func:`quote` (the only place a value
enters shell text), adds exactly the ``dt_*`` helper functions the body calls, with the helpers those call,
dependencies first, then the body. A body that calls a ``dt_*`` function that is neither a helper of
:data:`HELPERS` nor defined in the body itself is refused in Python, before any host sees it.

Names starting with ``dt_`` are reserved for functions: a script's variables are named otherwise.
"""

from __future__ import annotations

import re
import secrets
import shlex
from typing import TYPE_CHECKING, Mapping, Tuple

if TYPE_CHECKING:  # config reads checks, which quote with this module: no import at run time
    from .config import Settings


def quote(value: object) -> str:
    """``value`` as one shell word, whatever it holds (quotes, newlines, ``$(...)``, unicode)."""
    return shlex.quote(str(value))


class UnknownHelper(ValueError):
    """A script body calls a ``dt_*`` function that nothing defines (a bug in deploytest, not on a host)."""


PRELUDE = "set -u\nLC_ALL=C; export LC_ALL\n"

#: The helper functions, by name. Each one's own ``dt_*`` calls are found the same way as a body's.
HELPERS: dict[str, str] = {
    "dt_clean": r"""dt_clean() { printf '%s' "$1" | tr '\n\t' '| ' | cut -c1-600; }
""",
    "dt_fail": r"""dt_fail() { printf '@@dt fail\t%s\t%s\n' "$1" "$(dt_clean "$2")"; exit 97; }
""",
    "dt_refuse": r"""dt_refuse() { printf '@@dt refused\t%s\n' "$(dt_clean "$1")"; exit 96; }
""",
    # The host state format (see deploytest.records): KEY=VALUE lines, the value with backslash, newline,
    # tab and carriage return escaped as \\ \n \t \r (what printf %b decodes); the last KEY= line wins.
    # A value with nothing to escape (printable ASCII, no backslash: nearly every one) is written by
    # the shell alone; the others go through sed and awk. dt_get reads with the shell alone.
    "dt_put": r"""dt_put() {
  case $2 in
    *\\*|*[![:print:]]*) ;;
    *) printf '%s=%s\n' "$1" "$2"; return 0;;
  esac
  printf '%s=' "$1"
  printf '%s.\n' "$2" | sed -e 's/\\/\\\\/g' -e "s/$(printf '\t')/\\\\t/g" -e "s/$(printf '\r')/\\\\r/g" \
    | awk 'NR > 1 { printf "%s", "\\n" } { printf "%s", $0 } END { print "" }' | sed 's/[.]$//'
}
""",
    "dt_get": r"""dt_get() {
  get_v=''
  if [ -f "$1" ] && [ -r "$1" ]; then
    while IFS= read -r get_l || [ -n "$get_l" ]; do
      case $get_l in "$2"=*) get_v=${get_l#"$2"=};; esac
    done 2>/dev/null <"$1"
  fi
  printf '%b' "$get_v"
}
""",
    # Files written by deploytest before the KEY=VALUE format were one line of JSON (json.dumps' default
    # separators); they are still read, so an upgrade keeps its rollback targets and releasable locks.
    "dt_state": r"""dt_state() {
  m="$S/releases/$1"
  if [ -e "$m.bad" ]; then echo bad
  elif [ -e "$m.verified" ]; then echo verified
  elif [ -f "$m.meta" ]; then
    s=$(dt_get "$m.meta" state)
    case $s in complete|preparing) printf '%s\n' "$s";; *) echo unknown;; esac
  elif [ -f "$m.json" ]; then
    s=$(sed -n 's/.*"state": *"\([a-z]*\)".*/\1/p' -- "$m.json" | head -n 1)
    printf '%s\n' "${s:-unknown}"
  else echo unknown; fi
}
""",
    "dt_list": r"""dt_list() {
  [ -d "$D/releases" ] || return 0
  for p in "$D/releases"/*; do
    [ -d "$p" ] && [ ! -L "$p" ] || continue
    id=${p##*/}
    case $id in [!0-9A-Za-z]*|*[!0-9A-Za-z._-]*) continue;; esac
    printf '%s %s\n' "$id" "$(dt_state "$id")"
  done
}
""",
    "dt_live": r"""dt_live() {
  live_=''
  if [ -L "$D/current" ]; then
    l=$(readlink -- "$D/current"); l=${l%/}
    case $l in /*) ;; *) l="$D/$l";; esac
    case $l in "$D"/releases/?*) l=${l#"$D"/releases/}; live_=${l%%/*};; esac
    case $live_ in [!0-9A-Za-z]*|*[!0-9A-Za-z._-]*) live_='';; esac
  fi
  printf '%s\n' "$live_"
}
""",
    # Prints each line of file $2 as a control line "@@dt $1<TAB>line" (a record file has no raw tab).
    "dt_show": r"""dt_show() {
  [ -f "$2" ] || return 0
  while IFS= read -r show_ || [ -n "$show_" ]; do printf '@@dt %s\t%s\n' "$1" "$show_"; done < "$2"
}
""",
    "dt_set_state": r"""dt_set_state() {
  case $2 in bad|verified)
    # A marker beside the metadata: an empty file needs no free block, so even a full disk cannot keep
    # a release from being marked bad (or verified).
    { mkdir -p -- "$S/releases" && : > "$S/releases/$1.$2"; } 2>/dev/null || dt_fail "$3" "cannot mark $1 $2"
    [ "$2" = verified ] || rm -f -- "$S/releases/$1.verified"
    return 0;;
  esac
  m="$S/releases/$1.meta"
  if [ -f "$m" ]; then
    { grep -v '^state=' -- "$m"; dt_put state "$2"; } > "$m.tmp" && mv -f -- "$m.tmp" "$m" \
      || { rm -f -- "$m.tmp"; dt_fail "$3" "cannot write $m"; }
  else
    { mkdir -p -- "$S/releases" && { dt_put id "$1"; dt_put state "$2"; } > "$m"; } \
      || dt_fail "$3" "cannot write $m"
  fi
}
""",
    "dt_hook": r"""dt_hook() {
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
""",
    "dt_env": r"""dt_env() {
  DEPLOYTEST_RELEASE="$1"; DEPLOYTEST_RELEASE_DIR="$2"; DEPLOYTEST_DEPLOY_TO="$D"; DEPLOYTEST_SHARED="$D/shared"
  export DEPLOYTEST_RELEASE DEPLOYTEST_RELEASE_DIR DEPLOYTEST_DEPLOY_TO DEPLOYTEST_SHARED
}
""",
    "dt_link": r"""dt_link() {
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
""",
    "dt_share": r"""dt_share() {
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
""",
    "dt_recorded": r"""dt_recorded() {
  f="$S/releases/$1.suite.json"
  if [ -f "$f" ]; then printf '@@dt recorded\t'; head -n 1 -- "$f"; echo; fi
}
""",
    "dt_remove": r"""dt_remove() {
  if [ "$1" = "$(dt_live)" ]; then printf '@@dt warn\tnot removing live release %s\n' "$1"; return 0; fi
  p="$D/releases/$1"
  chmod -R u+w -- "$p" 2>/dev/null
  if out=$(rm -rf -- "$p" 2>&1) && rm -f -- "$S/releases/$1".meta "$S/releases/$1".json \
      "$S/releases/$1".suite.json "$S/releases/$1".bad "$S/releases/$1".verified; then
    printf '@@dt removed\t%s\n' "$1"
  else
    printf '@@dt warn\tcannot remove %s: %s\n' "$p" "$(dt_clean "$out")"; return 1
  fi
}
""",
    # Notes a completed step in this host's journal (best effort: it never fails a step).
    "dt_step": r"""dt_step() {
  [ -f "$S/journal" ] && dt_put step "$1" >> "$S/journal" 2>/dev/null
  return 0
}
""",
    # The lock file holds this token (a hex string), in either format.
    "dt_holds": r"""dt_holds() {
  [ -f "$S/lock" ] || return 1
  [ "$(dt_get "$S/lock" token)" = "$1" ] || grep -q "\"token\": *\"$1\"" -- "$S/lock" 2>/dev/null
}
""",
    # The journal is the one of the rollout with this token (a hex string), in either format.
    "dt_journal_of": r"""dt_journal_of() {
  [ -f "$S/journal" ] || return 1
  [ "$(dt_get "$S/journal" rollout)" = "$1" ] || grep -q "\"rollout\": *\"$1\"" -- "$S/journal" 2>/dev/null
}
""",
}

_CALL = re.compile(r"(?<![\w$])dt_[a-z0-9_]+")
_DEFINED = re.compile(r"^\s*(dt_[a-z0-9_]+)\s*\(\)", re.MULTILINE)
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_USES_S = re.compile(r"\$\{?S\b")


def _needs(text: str) -> list[str]:
    """The ``dt_*`` names ``text`` uses and does not define itself, in order of first use."""
    own = set(_DEFINED.findall(text))
    return list(dict.fromkeys(n for n in _CALL.findall(text) if n not in own))


def helpers_for(body: str) -> list[str]:
    """The helper names ``body`` needs, transitively, each after the helpers it calls.

    :raises UnknownHelper: the body (or a helper) calls a ``dt_*`` function nothing defines.
    """
    ordered: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in ordered or name in path:
            return
        if name not in HELPERS:
            where = f"helper {path[-1]}" if path else "the script body"
            raise UnknownHelper(f"{where} calls {name}, which no shell helper defines")
        for dependency in _needs(HELPERS[name]):
            visit(dependency, (*path, name))
        ordered.append(name)

    for name in _needs(body):
        visit(name, ())
    return ordered


def script(settings: Settings, body: str, values: Mapping[str, object] | None = None) -> str:
    """A whole remote script: prelude, ``D`` (and ``S`` when used), ``values`` as quoted variables, helpers, ``body``.

    :param body: shell text; it reads values only through the variables named in ``values``.
    :param values: ``{name: value}``; each value becomes ``name=<quoted value>``.
    :raises UnknownHelper: ``body`` calls a ``dt_*`` function that nothing defines.
    :raises ValueError: a value's name is not a plain lower-case shell name (or is reserved).
    """
    helpers = "".join(HELPERS[n] for n in helpers_for(body))
    assigned = [f"D={quote(settings.deploy_to)}\n"]
    if _USES_S.search(helpers + body):
        assigned.append('S="$D/.deploytest"\n')
    for name, value in (values or {}).items():
        if not _NAME.fullmatch(name) or name.startswith("dt_"):
            raise ValueError(f"{name!r} cannot name a script value")
        assigned.append(f"{name}={quote(value)}\n")
    return PRELUDE + "".join(assigned) + helpers + body


Body = Tuple[str, Mapping[str, object]]
"""A part of a script: shell text and the values it reads (see :func:`script`)."""


def join(*bodies: Body) -> Body:
    """Bodies one after another in one script, their values merged (a name must mean one value)."""
    values: dict[str, object] = {}
    for _, more in bodies:
        for name, value in more.items():
            if values.get(name, value) != value:
                raise ValueError(f"script value {name!r} given twice with different values")
            values[name] = value
    return "".join(text for text, _ in bodies), values


def chain(*scripts: str) -> str:
    """Scripts run one after another in ONE round trip, each in a subshell of its own (its ``exit``
    ends only itself); the first that fails ends the whole, with its exit status and its marks."""
    return "".join(f"(\n{one}\n) || exit $?\n" for one in scripts)


def from_descriptor(text: str) -> str:
    """``text`` run by a fresh ``/bin/sh`` that reads it from a descriptor (a here-document), so the
    processes of the script, and every subshell it forks, show ``/bin/sh /dev/fd/3`` in ``ps``, not
    the whole script. For the probes' harness (:mod:`deploytest.checks.script`): a ``process`` check
    lists every command line on the host, and with the script in the command line of each subshell
    the harness forks, that list grew by the script's size per subshell (hundreds of kilobytes for
    six checks; past its 1 MiB cap with 40). Standard input is left to the script. Where ``/dev/fd``
    is missing the script runs in this shell, as it would with ``sh -c``. Not for the steps: a
    here-document may need a temporary file (bash before 5.1), and a step must run on a full disk.
    """
    end = "DT_END_" + secrets.token_hex(8)
    while end in text:  # never, short of a forged script; then another end line
        end = "DT_END_" + secrets.token_hex(8)
    body = text if text.endswith("\n") else text + "\n"
    return (
        f"exec 3<<'{end}'\nexec 3<&-\n{body}{end}\n"
        "if [ -r /dev/fd/3 ]; then exec /bin/sh /dev/fd/3; fi\n"
        'eval "$(cat <&3)"\n'
    )
