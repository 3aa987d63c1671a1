"""The one way deploytest runs its own scripts on a host.

:func:`run_script` runs a script of :mod:`deploytest.shell` in one :meth:`Target.run` (one remote
session), through ``sudo`` when the config says so, with failures reported by the script as ``@@dt fail``
lines turned into :class:`RemoteCommandFailed`.
"""

from __future__ import annotations

from .config import Settings
from .errors import RemoteCommandFailed, UsageError
from .hosts import RunResult, Target
from .shell import quote

MARK = "@@dt"
"""Prefix of the control lines deploytest's scripts print on stdout."""


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
    ``sudo -S`` (which reads it byte by byte, so the rest of stdin reaches the script untouched), with
    ``-k`` so that sudo always reads it: credentials sudo cached since ``sudo -n true`` failed (another
    session whose parent pid matched) would leave the password line in the script's input.
    Whatever happens, stdin is read to its end, so an upload never stalls on a refused sudo.
    """
    inner = quote(script)
    return (
        "IFS= read -r dt_pw || dt_pw=''\n"
        f"if sudo -n true 2>/dev/null; then sudo -n -- /bin/sh -c {inner}; rc=$?\n"
        'elif [ -z "$dt_pw" ]; then echo "sudo: a password is required (set sudo.password)" >&2; rc=95\n'
        f"else {{ printf '%s\\n' \"$dt_pw\"; cat; }} | sudo -S -k -p '' -- /bin/sh -c {inner}; rc=$?; fi\n"
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
