"""The audit log of a host: ``<deploy_to>/.deploytest/log.jsonl``, one JSON object per deploy, rollback,
verify and unlock (when, who, release, outcome)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Mapping

_SECRET_WORDS = ("password", "secret", "token", "passphrase")


def utc_now() -> str:
    """The current UTC time as ``2026-11-25T10:00:01Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def log_line(event: Mapping[str, Any]) -> str:
    """One JSON line for ``log.jsonl``: ``when`` added if missing, secret-looking keys dropped."""
    data = {k: v for k, v in event.items() if not any(w in k.lower() for w in _SECRET_WORDS)}
    data.setdefault("when", utc_now())
    return json.dumps(data, sort_keys=True, default=str)


def log_body(event: Mapping[str, Any] | None, *, fatal: bool = True) -> tuple[str, dict[str, object]]:
    """Shell body (and its value) that appends ``event`` to ``$S/log.jsonl``, for :func:`deploytest.shell.script`.

    :param event: None: the line is the first line of the script's stdin (see :func:`stdin_line`), for
        a script whose text is fixed before the run knows how it ends, like the plan's finish. The
        body then reads it at once: put it before anything else that might read stdin.
    :param fatal: a failed write ends the script; otherwise it prints a ``warn`` line and goes on.
    """
    failed = 'dt_fail log "cannot write $S/log.jsonl"' if fatal else \
        "printf '@@dt warn\\tcannot write %s\\n' \"$S/log.jsonl\""
    body = f'mkdir -p -- "$S" 2>/dev/null; printf \'%s\\n\' "$event_line" 2>/dev/null >> "$S/log.jsonl" || {failed}\n'
    if event is None:
        return "IFS= read -r event_line || [ -n \"$event_line\" ] || event_line='{}'\n" + body, {}
    return body, {"event_line": log_line(event)}


def stdin_line(event: Mapping[str, Any] | None) -> bytes | None:
    """The stdin of a script whose log body reads ``event`` from it (None: nothing to log)."""
    return None if event is None else (log_line(event) + "\n").encode()


def answered_log_body() -> tuple[str, dict[str, object]]:
    """Shell body that logs the line this machine answers with in the same session (see
    :class:`deploytest.hosts.Reply`), on a host deploytest has deployed to; an empty answer logs
    nothing (an attempt that was not the last)."""
    return ("IFS= read -r event_line || true\n"
            'if [ -n "$event_line" ] && [ -d "$S" ]; then\n'
            "  printf '%s\\n' \"$event_line\" 2>/dev/null >> \"$S/log.jsonl\" ||"
            " printf '@@dt warn\\tcannot write %s\\n' \"$S/log.jsonl\"\nfi\n"), {}
