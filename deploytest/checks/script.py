"""One shell script per host and attempt: every probe in its own time-limited ``/bin/sh``, framed.

The script runs the probes side by side, each with its output capped on the host, then prints one
line per probe: ``DT<nonce> <index> <exit> <timed-out> <out-bytes> <err-bytes> <encoding> <out> <err>``,
where out and err are base64 (or hex when the host has no ``base64``). Probe output never reaches
the session directly, so no output, however hostile, can forge or break a frame.
"""

from __future__ import annotations

import base64
import math
import secrets
from dataclasses import dataclass
from typing import Mapping, Sequence

from .base import ProbeOutput, q

#: Exit status of the script when the host has no usable temporary directory.
NO_TMPDIR = 97

_PRELUDE = r"""
umask 077
DT_ROOT=$$; export DT_ROOT
_dt_d=$(mktemp -d "${TMPDIR:-/tmp}/deploytest.XXXXXX" 2>/dev/null) || {
  _dt_d="${TMPDIR:-/tmp}/deploytest.$$.$_dt_n"; mkdir -m 700 "$_dt_d" 2>/dev/null || exit 97; }
trap 'rm -rf "$_dt_d"' EXIT
trap 'exit 98' HUP INT TERM
if timeout -k 1 5 true >/dev/null 2>&1; then _dt_to=1; else _dt_to=; fi
if command -v base64 >/dev/null 2>&1; then _dt_enc=b; else _dt_enc=h; fi
# Unbuffered when possible, so what a probe printed is on disk even if a daemon it started keeps
# the pipe open (the frame is then emitted without waiting for the end of the pipe).
if command -v stdbuf >/dev/null 2>&1; then _dt_sb="stdbuf -o0"; else _dt_sb=; fi
_dt_cap() { $_dt_sb head -c "$2" >"$1"; cat >/dev/null; }
_dt_probe() {
  if [ -n "$_dt_to" ]; then
    timeout -k 2 "$2" /bin/sh -c "$4" "dt-$_dt_n" </dev/null
    _dt_rc=$?; [ "$_dt_rc" -eq 124 ] || [ "$_dt_rc" -eq 137 ] && : >"$_dt_d/$1.t"
    return "$_dt_rc"
  fi
  /bin/sh -c "$4" "dt-$_dt_n" </dev/null & _dt_p=$!
  ( sleep "$2"; : >"$_dt_d/$1.t"; pkill -TERM -P "$_dt_p"; kill -TERM "$_dt_p"; sleep 2
    pkill -KILL -P "$_dt_p"; kill -KILL "$_dt_p" ) >/dev/null 2>&1 3>&- &
  _dt_k=$!; wait "$_dt_p"; _dt_rc=$?; kill "$_dt_k" 2>/dev/null; return "$_dt_rc"
}
_dt_run() {
  exec </dev/null >/dev/null 2>&1  # never hold the session's output open
  { { _dt_probe "$@" 2>&1 1>&3 3>&-; echo $? >"$_dt_d/$1.x"; } | _dt_cap "$_dt_d/$1.e" "$3"; } 3>&1 \
    | _dt_cap "$_dt_d/$1.o" "$3"
  : >"$_dt_d/$1.done"
}
_dt_enc_file() {
  if [ "$_dt_enc" = b ]; then head -c "$2" "$1" 2>/dev/null | base64 | tr -d '\n'
  else head -c "$2" "$1" 2>/dev/null | od -An -v -tx1 | tr -d ' \n'; fi
}
_dt_emit() {
  _dt_w=0
  while [ ! -e "$_dt_d/$1.done" ]; do
    if [ -e "$_dt_d/$1.x" ]; then _dt_w=$((_dt_w + 1)); [ "$_dt_w" -gt 40 ] && break; fi
    sleep 0.05 2>/dev/null || sleep 1
  done
  _dt_x=$(cat "$_dt_d/$1.x" 2>/dev/null); _dt_t=0; [ -e "$_dt_d/$1.t" ] && _dt_t=1
  _dt_os=$(wc -c <"$_dt_d/$1.o" 2>/dev/null); _dt_es=$(wc -c <"$_dt_d/$1.e" 2>/dev/null)
  printf 'DT%s %s %s %s %s %s %s ' "$_dt_n" "$1" "${_dt_x:--1}" "$_dt_t" \
    $((_dt_os + 0)) $((_dt_es + 0)) "$_dt_enc"
  _dt_enc_file "$_dt_d/$1.o" "$2"; printf ' '; _dt_enc_file "$_dt_d/$1.e" "$2"; printf '\n'
}
"""


@dataclass(frozen=True)
class ProbeJob:
    """One probe to run: its index in the script, time limit (seconds) and output cap (bytes)."""

    index: int
    text: str
    seconds: float
    cap: int


def build_script(jobs: Sequence[ProbeJob], secret_env: Mapping[str, str], nonce: str) -> str:
    """The whole script for one attempt on one host.

    :param secret_env: variables read from standard input (one value a line), never written here.
    :param nonce: random text that marks this script's frames.
    """
    lines = [f"_dt_n={q(nonce)}"]
    for name in secret_env:
        lines.append(f"IFS= read -r {name} || true; export {name}")
    lines.append(_PRELUDE)
    for job in jobs:
        seconds = max(1, math.ceil(job.seconds))
        lines.append(f"_dt_run {job.index} {seconds} {job.cap + 1} {q(job.text)} &")
    for job in jobs:
        lines.append(f"_dt_emit {job.index} {job.cap}")
    return "\n".join(lines) + "\n"


def secret_stdin(secret_env: Mapping[str, str]) -> bytes | None:
    """The standard input that carries the secret values, in the order the script reads them."""
    if not secret_env:
        return None
    return "".join(f"{value}\n" for value in secret_env.values()).encode()


def new_nonce() -> str:
    """Random frame marker for one script."""
    return secrets.token_hex(8)


def _decode(encoding: str, text: str) -> bytes:
    if not text:
        return b""
    try:
        return base64.b64decode(text, validate=True) if encoding == "b" else bytes.fromhex(text)
    except ValueError:
        return b""


def parse_frames(stdout: str, nonce: str, jobs: Sequence[ProbeJob]) -> dict[int, ProbeOutput]:
    """Probe outputs by index from the script's standard output; a missing frame is left out."""
    limits = {job.index: job for job in jobs}
    marker = f"DT{nonce}"
    out: dict[int, ProbeOutput] = {}
    for line in stdout.splitlines():
        fields = line.split(" ")
        if len(fields) != 9 or fields[0] != marker:
            continue
        _, index_text, code, timed_out, out_size, err_size, encoding, out_text, err_text = fields
        try:
            index = int(index_text)
            exit_code = int(code)
            sizes = int(out_size), int(err_size)
        except ValueError:
            continue
        job = limits.get(index)
        if job is None or index in out:
            continue
        stdout_bytes = _decode(encoding, out_text)[: job.cap]
        stderr_bytes = _decode(encoding, err_text)[: job.cap]
        out[index] = ProbeOutput(
            exit_code=exit_code,
            stdout=stdout_bytes,
            stderr=stderr_bytes,
            timed_out=timed_out == "1",
            truncated=sizes[0] > job.cap or sizes[1] > job.cap,
            seconds_limit=float(max(1, math.ceil(job.seconds))),
        )
    return out
