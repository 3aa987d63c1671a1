"""One shell script per host and attempt: every probe in its own time-limited ``/bin/sh``, framed.

The script starts the probes side by side, each writing to its own files in a private temporary
directory (never to the session), waits for them, then prints frames::

    DT<nonce> <index> <exit> <timed-out> <encoding> <stopped>   one per probe
    DT<nonce> <index> o                               then its stdout, base64 (or hex) lines
    DT<nonce> <index> e                               then its stderr, likewise
    DT<nonce> sizes                                   then ``wc -c`` of every output file
    DT<nonce> end

Encoded lines hold no spaces, so no probe output, however hostile, can forge or break a frame.
A probe runs with the session's own umask and no limit of deploytest's: only its capture is bounded.
Its stdout and stderr go through pipes to writers limited (``ulimit -f``) to just over its cap, so "cut"
is known exactly; what comes after is read and dropped, so the probe's exit status stays its own, up to
:data:`DRAIN_BYTES`, past which its output is closed and it is judged "stopped".
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import secrets
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..shell import quote
from .base import DRAIN_BYTES, ProbeOutput

#: Exit status of the script when the host has no usable temporary directory.
NO_TMPDIR = 97

# One probe with its capture (shell functions, run in the probe's own background shell, so a probe
# costs a handful of processes): $1 the output files' prefix, $2 the 512-byte blocks to keep, $3 the
# probe text, $4 the user's umask, $5 the nonce (for the probe's $0), $6 the time limit, $7 "1" when
# timeout(1) works. Stdout and stderr each go through a pipe to a cat(1) that may write $2 blocks
# (cat writes what it reads at once, so stopping it loses nothing); when cat stops there, what comes
# after is read and counted, not kept ($1.o.n), so the probe is neither blocked nor stopped and its
# exit status is its own; past the drain bound the pipe closes (SIGPIPE). The probe's exit status goes
# to $1.r. What the probe leaves running may hold its output open: one watcher for the whole script
# (_dt_watch) stops a reader still reading a second or two after its probe ended (its pid is in
# $1.o.k / $1.e.k, emptied when it is done; $1.o.stop tells the reader it was stopped).
_CAPTURE = r"""
_dt_keep() {
  exec 4<&0  # the pipe, for the reader (a job started with & reads /dev/null)
  (if ulimit -f "$2" 2>/dev/null; then exec cat <&4 4<&- >"$1"; fi
   head -c "$(($2 * 512))" <&4 4<&- >"$1"; exit 1) & echo "$!" >"$1.k"  # no ulimit: head, then drain
  if ! wait "$!" && [ ! -e "$1.stop" ]; then
    { head -c __DRAIN__ <&4 | wc -c >"$1.n"; } & echo "$!" >"$1.k"; wait "$!"
  fi
  : >"$1.k"
}
_dt_probe() {
  _dt_k=
  if [ -n "$7" ]; then (umask "$4"; exec timeout -k 2 "$6" /bin/sh -c "$3" "dt-$5") & _dt_p=$!
  else
    (umask "$4"; exec /bin/sh -c "$3" "dt-$5") & _dt_p=$!
    /bin/sh -c 'sleep "$2"; : >"$1.t"; pkill -TERM -P "$3"; kill -TERM "$3"; sleep 2
      pkill -KILL -P "$3"; kill -KILL "$3"' dt-limit "$1" "$6" "$_dt_p" >/dev/null 2>&1 3>&- & _dt_k=$!
  fi
  wait "$_dt_p"; echo "$?" >"$1.r"
  if [ -n "$_dt_k" ]; then kill "$_dt_k"; fi
}
_dt_capture() {
  { { _dt_probe "$@" 2>&1 1>&3 3>&-; } | _dt_keep "$1.e" "$2" 3>&-; } 3>&1 | _dt_keep "$1.o" "$2"
}
_dt_watch() {  # $1: the seconds it may run
  _dt_i=0
  while [ "$_dt_i" -lt "$1" ] && [ -d "$_dt_d" ] && sleep 1; do
    _dt_i=$((_dt_i + 1))
    for _dt_r in "$_dt_d"/*.r; do
      [ -e "$_dt_r" ] || continue
      if [ ! -e "$_dt_r.w" ]; then : >"$_dt_r.w"; continue; fi
      for _dt_f in "${_dt_r%.r}.o" "${_dt_r%.r}.e"; do
        if read -r _dt_c <"$_dt_f.k" 2>/dev/null && [ -n "$_dt_c" ]; then
          : >"$_dt_f.stop"; pkill -KILL -P "$_dt_c"; kill -KILL "$_dt_c"; fi
      done
    done
  done
}
""".replace("__DRAIN__", str(DRAIN_BYTES))


_PRELUDE = r"""
_dt_um=$(umask)  # the user's umask, given back to every probe
umask 077
DT_ROOT=$$; export DT_ROOT
_dt_d=$(mktemp -d "${TMPDIR:-/tmp}/deploytest.XXXXXX" 2>/dev/null) || {
  _dt_d="${TMPDIR:-/tmp}/deploytest.$$.$_dt_n"; mkdir -m 700 "$_dt_d" 2>/dev/null || exit 97; }
_dt_w=''
trap 'if [ -n "$_dt_w" ]; then kill "$_dt_w" 2>/dev/null; fi; rm -rf "$_dt_d"' EXIT
trap 'exit 98' HUP INT TERM
if timeout -k 1 5 true >/dev/null 2>&1; then _dt_to=1; else _dt_to=; fi
if command -v base64 >/dev/null 2>&1; then _dt_enc=b; else _dt_enc=h; fi
""" + _CAPTURE + r"""
_dt_watch "$_dt_wl" </dev/null >/dev/null 2>&1 & _dt_w=$!
_dt_run() {
  exec </dev/null 2>/dev/null  # never the session's input or output
  _dt_capture "$_dt_d/$1" "$4" "$3" "$_dt_um" "$_dt_n" "$2" "$_dt_to"
  _dt_rc=-1; if [ -s "$_dt_d/$1.r" ]; then read -r _dt_rc <"$_dt_d/$1.r"; fi
  _dt_t=0
  if [ -e "$_dt_d/$1.t" ]; then _dt_t=1
  elif [ -n "$_dt_to" ] && { [ "$_dt_rc" -eq 124 ] || [ "$_dt_rc" -eq 137 ]; }; then _dt_t=1; fi
  _dt_s=0  # "stopped": a stream ran past the drain bound
  for _dt_f in "$_dt_d/$1.o.n" "$_dt_d/$1.e.n"; do
    if [ -s "$_dt_f" ] && [ "$(cat "$_dt_f")" -ge __DRAIN__ ]; then _dt_s=1; fi; done
  echo "$_dt_rc $_dt_t $_dt_s" >"$_dt_d/$1.x"
}
_dt_body() {  # what was kept, a little past the cap (the reader cuts it and knows it was cut)
  if [ -s "$1" ]; then
    if [ "$_dt_enc" = b ]; then base64 "$1"; else od -An -v -tx1 "$1"; fi
  fi
}
_dt_emit() {
  _dt_x=-1; _dt_t=0; _dt_s=0
  if [ -s "$_dt_d/$1.x" ]; then read -r _dt_x _dt_t _dt_s <"$_dt_d/$1.x"; fi
  echo "DT$_dt_n $1 $_dt_x $_dt_t $_dt_enc $_dt_s"
  echo "DT$_dt_n $1 o"; _dt_body "$_dt_d/$1.o"
  echo "DT$_dt_n $1 e"; _dt_body "$_dt_d/$1.e"
}
""".replace("__DRAIN__", str(DRAIN_BYTES))

@dataclass(frozen=True)
class ProbeJob:
    """One probe to run: its index in the script, time limit (seconds), output cap (bytes) and the
    secret variables only it may see."""

    index: int
    text: str
    seconds: float
    cap: int
    secrets: tuple[str, ...] = ()


def build_script(jobs: Sequence[ProbeJob], secret_env: Mapping[str, str], nonce: str) -> str:
    """The whole script for one attempt on one host.

    :param secret_env: variables read from standard input (one value a line), never written here.
    :param nonce: random text that marks this script's frames.
    """
    lines = [f"_dt_n={quote(nonce)}"]
    for name in secret_env:  # read, not exported: each is exported to the one probe that uses it
        lines.append(f"IFS= read -r {name} || true")
    # the watcher outlives no probe: the longest limit, the kill's grace and a little more
    lines.append(f"_dt_wl={max((math.ceil(job.seconds) for job in jobs), default=1) + 5}")
    lines.append(_PRELUDE)
    lines.append("set --  # the probes' pids, to wait for")
    for job in jobs:
        seconds = max(1, math.ceil(job.seconds))
        run = f"_dt_run {job.index} {seconds} {quote(job.text)} {job.cap // 512 + 1}"
        if job.secrets:
            run = f"(export {' '.join(job.secrets)}; {run})"
        lines.append(f'{run} & set -- "$@" "$!"')
    lines.append('wait "$@"  # the probes (not the watcher)')
    for job in jobs:
        lines.append(f"_dt_emit {job.index}")
    files = " ".join(f"{job.index}.o {job.index}.e" for job in jobs)
    lines.append(f'echo "DT$_dt_n sizes"; (cd "$_dt_d" && wc -c {files} 2>/dev/null); echo "DT$_dt_n end"')
    return "\n".join(lines) + "\n"


def secret_stdin(secret_env: Mapping[str, str]) -> bytes | None:
    """The standard input that carries the secret values, in the order the script reads them."""
    if not secret_env:
        return None
    return "".join(f"{value}\n" for value in secret_env.values()).encode()


def new_nonce() -> str:
    """Random frame marker for one script."""
    return secrets.token_hex(8)


def _decode(encoding: str, lines: list[str]) -> bytes:
    text = "".join("".join(line.split()) for line in lines)
    try:
        return base64.b64decode(text, validate=True) if encoding == "b" else bytes.fromhex(text)
    except (ValueError, binascii.Error):
        return b""


_SIZE = re.compile(r"^\s*(\d+)\s+(\d+)\.([oe])$")


def parse_frames(stdout: str, nonce: str, jobs: Sequence[ProbeJob]) -> dict[int, ProbeOutput]:
    """Probe outputs by index from the script's standard output; a missing frame is left out."""
    by_index = {job.index: job for job in jobs}
    marker = f"DT{nonce}"
    heads: dict[int, tuple[int, bool, str, bool]] = {}
    bodies: dict[tuple[int, str], list[str]] = {}
    sizes: dict[tuple[int, str], int] = {}
    section: tuple[int, str] | None = None
    in_sizes = False
    for line in stdout.splitlines():
        fields = line.split(" ")
        if fields[0] == marker:
            section, in_sizes = None, False
            if fields[1:] == ["sizes"]:
                in_sizes = True
            elif len(fields) == 6 and fields[1].isdigit() and re.fullmatch(r"-?\d+", fields[2]):
                heads.setdefault(int(fields[1]), (int(fields[2]), fields[3] == "1", fields[4], fields[5] == "1"))
            elif len(fields) == 3 and fields[1].isdigit() and fields[2] in ("o", "e"):
                section = (int(fields[1]), fields[2])
                if section in bodies:
                    section = None  # a second frame for the same output is not ours
                else:
                    bodies[section] = []
        elif in_sizes:
            match = _SIZE.match(line)
            if match:
                sizes[(int(match.group(2)), match.group(3))] = int(match.group(1))
        elif section is not None:
            bodies[section].append(line)
    out: dict[int, ProbeOutput] = {}
    for index, (exit_code, timed_out, encoding, stopped) in heads.items():
        job = by_index.get(index)
        if job is None:
            continue
        stdout_bytes = _decode(encoding, bodies.get((index, "o"), []))[: job.cap]
        stderr_bytes = _decode(encoding, bodies.get((index, "e"), []))[: job.cap]
        truncated = sizes.get((index, "o"), 0) > job.cap or sizes.get((index, "e"), 0) > job.cap
        out[index] = ProbeOutput(
            exit_code=exit_code,
            stdout=stdout_bytes,
            stderr=stderr_bytes,
            timed_out=timed_out,
            truncated=truncated,
            stopped=stopped,
            seconds_limit=float(max(1, math.ceil(job.seconds))),
        )
    return out
