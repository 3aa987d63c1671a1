"""One shell script per host and attempt: every probe in its own time-limited ``/bin/sh``, framed.

The script starts the probes side by side, each writing to its own files in a private temporary
directory (never to the session), waits for them, then prints frames::

    DT<nonce> <index> <exit> <timed-out> <stopped>    one per probe
    DT<nonce> sizes                                   then ``wc -c`` of every output file kept
    DT<nonce> data <encoding>                         then those files, one after another, as one
                                                      base64 (or hex) stream, cut apart by the sizes
    DT<nonce> end

Encoded lines hold no spaces, so no probe output, however hostile, can forge or break a frame. One
stream for every output costs one encoder for the attempt, not one per output.
A probe runs with the session's own umask and no limit of deploytest's: only its capture is bounded.
Its stdout and stderr go through pipes to writers limited (``ulimit -f``) to just over its cap, so "cut"
is known exactly; what comes after is read and dropped, so the probe's exit status stays its own, up to
:data:`DRAIN_BYTES`, past which its output is closed and it is judged "stopped".

A probe of deploytest's own text whose judge reads only what is kept (``ProbeJob.direct``: the file,
port, http and process probes; see :meth:`~deploytest.checks.base.Check.direct_output`) writes
straight to its files instead, with no pipes and no readers: two processes and a few forks fewer each.
The same ``ulimit -f`` is then its own: should it write past its cap, the kept bytes are the same, and
the writer is stopped there rather than drained. A user's command never runs so: what it starts must
not inherit the limit, and its exit status is judged.
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
# (_dt_watch) stops a reader still there a second or two after its probe ended (its pid is in
# $1.o.k / $1.e.k, emptied when it is done; $1.o.stop tells the reader it was stopped), once it is
# asleep on its pipe: a reader that waits for the CPU (a busy host) has data yet to write, and is left
# to finish; one asleep has written all it read, so stopping it loses nothing a leftover did not add.
# A direct probe writes to $1.o and $1.e itself, limited to $8 blocks (see the module's docstring).
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
  if [ -n "$7" ]; then (umask "$4"; _dt_cap "$8"; exec timeout -k 2 "$6" /bin/sh -c "$3" "dt-$5") & _dt_p=$!
  else
    (umask "$4"; _dt_cap "$8"; exec /bin/sh -c "$3" "dt-$5") & _dt_p=$!
    /bin/sh -c 'sleep "$2"; : >"$1.t"; pkill -TERM -P "$3"; kill -TERM "$3"; sleep 2
      pkill -KILL -P "$3"; kill -KILL "$3"' dt-limit "$1" "$6" "$_dt_p" >/dev/null 2>&1 3>&- & _dt_k=$!
  fi
  wait "$_dt_p"; echo "$?" >"$1.r"
  if [ -n "$_dt_k" ]; then kill "$_dt_k"; fi
}
_dt_cap() {
  if [ -n "$1" ]; then ulimit -f "$1" 2>/dev/null; fi
  return 0
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
        if read -r _dt_c <"$_dt_f.k" 2>/dev/null && [ -n "$_dt_c" ] && _dt_waiting "$_dt_c"; then
          : >"$_dt_f.stop"; pkill -KILL -P "$_dt_c"; kill -KILL "$_dt_c"; fi
      done
    done
  done
}
_dt_waiting() {  # $1 and its children all sleep (S): the reader waits on an emptied pipe, not for the CPU
  _dt_s=; { read -r _ _ _dt_s _ <"/proc/$1/stat"; } 2>/dev/null || return 0  # no /proc: by time alone
  [ "$_dt_s" = S ] || return 1
  _dt_ks=; { read -r _dt_ks <"/proc/$1/task/$1/children"; } 2>/dev/null
  for _dt_kp in $_dt_ks; do
    _dt_s=S; { read -r _ _ _dt_s _ <"/proc/$_dt_kp/stat"; } 2>/dev/null
    [ "$_dt_s" = S ] || return 1
  done
  return 0
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
  if [ "$5" = d ]; then  # its own text bounds its output: straight to its files, no readers
    _dt_probe "$_dt_d/$1" "$4" "$3" "$_dt_um" "$_dt_n" "$2" "$_dt_to" "$4" >"$_dt_d/$1.o" 2>"$_dt_d/$1.e"
  else
    _dt_capture "$_dt_d/$1" "$4" "$3" "$_dt_um" "$_dt_n" "$2" "$_dt_to"
  fi
  _dt_rc=-1; if [ -s "$_dt_d/$1.r" ]; then read -r _dt_rc <"$_dt_d/$1.r"; fi
  _dt_t=0
  if [ -e "$_dt_d/$1.t" ]; then _dt_t=1
  elif [ -n "$_dt_to" ] && { [ "$_dt_rc" -eq 124 ] || [ "$_dt_rc" -eq 137 ]; }; then _dt_t=1; fi
  _dt_s=0  # "stopped": a stream ran past the drain bound
  for _dt_f in "$_dt_d/$1.o.n" "$_dt_d/$1.e.n"; do
    if [ -s "$_dt_f" ] && [ "$(cat "$_dt_f")" -ge __DRAIN__ ]; then _dt_s=1; fi; done
  echo "$_dt_rc $_dt_t $_dt_s" >"$_dt_d/$1.x"
}
_dt_emit() {
  _dt_x=-1; _dt_t=0; _dt_s=0
  if [ -s "$_dt_d/$1.x" ]; then read -r _dt_x _dt_t _dt_s <"$_dt_d/$1.x"; fi
  echo "DT$_dt_n $1 $_dt_x $_dt_t $_dt_s"
}
_dt_data() {  # $@: the output files, in the order of their sizes; what was kept, a little past the cap
  echo "DT$_dt_n sizes"; wc -c -- "$@" 2>/dev/null
  echo "DT$_dt_n data $_dt_enc"
  if [ "$_dt_enc" = b ]; then cat -- "$@" 2>/dev/null | base64; else od -An -v -tx1 -- "$@" 2>/dev/null; fi
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
    #: Written straight to its files, stopped at its cap (see the module's docstring).
    direct: bool = False


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
        run = f"_dt_run {job.index} {seconds} {quote(job.text)} {job.cap // 512 + 1} {'d' if job.direct else 'c'}"
        if job.secrets:
            run = f"(export {' '.join(job.secrets)}; {run})"
        lines.append(f'{run} & set -- "$@" "$!"')
    lines.append('wait "$@"  # the probes (not the watcher)')
    for job in jobs:
        lines.append(f"_dt_emit {job.index}")
    files = " ".join(f"{job.index}.o {job.index}.e" for job in jobs)
    lines.append(f'(cd "$_dt_d" && _dt_data {files}); echo "DT$_dt_n end"')
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
    """Probe outputs by index from the script's standard output; a missing frame is left out.

    The outputs are cut from the data stream by the sizes listed before it; a stream that does not
    add up to those sizes (cut short) gives no output at all, never one probe's bytes as another's.
    """
    by_index = {job.index: job for job in jobs}
    marker = f"DT{nonce}"
    heads: dict[int, tuple[int, bool, bool]] = {}
    sizes: list[tuple[tuple[int, str], int]] = []
    data: list[str] | None = None
    encoding = ""
    section = ""
    for line in stdout.splitlines():
        fields = line.split(" ")
        if fields[0] == marker:
            section = ""
            if fields[1:] == ["sizes"] and not sizes and data is None:
                section = "sizes"
            elif len(fields) == 3 and fields[1] == "data" and data is None:
                section, encoding, data = "data", fields[2], []
            elif len(fields) == 5 and fields[1].isdigit() and re.fullmatch(r"-?\d+", fields[2]):
                heads.setdefault(int(fields[1]), (int(fields[2]), fields[3] == "1", fields[4] == "1"))
        elif section == "sizes":
            match = _SIZE.match(line)
            if match:
                sizes.append(((int(match.group(2)), match.group(3)), int(match.group(1))))
        elif section == "data" and data is not None:
            data.append(line)
    if data is None:
        return {}
    blob = _decode(encoding, data)
    if len(blob) != sum(size for _, size in sizes):
        return {}
    kept: dict[tuple[int, str], bytes] = {}
    at = 0
    for key, size in sizes:
        kept[key] = blob[at:at + size]
        at += size
    out: dict[int, ProbeOutput] = {}
    for index, (exit_code, timed_out, stopped) in heads.items():
        job = by_index.get(index)
        if job is None:
            continue
        stdout_bytes = kept.get((index, "o"), b"")
        stderr_bytes = kept.get((index, "e"), b"")
        out[index] = ProbeOutput(
            exit_code=exit_code,
            stdout=stdout_bytes[: job.cap],
            stderr=stderr_bytes[: job.cap],
            timed_out=timed_out,
            truncated=len(stdout_bytes) > job.cap or len(stderr_bytes) > job.cap,
            stopped=stopped,
            seconds_limit=float(max(1, math.ceil(job.seconds))),
        )
    return out
