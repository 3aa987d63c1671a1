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


def log_body(event: Mapping[str, Any], *, fatal: bool = True) -> tuple[str, dict[str, object]]:
    """Shell body (and its value) that appends ``event`` to ``$S/log.jsonl``, for :func:`deploytest.shell.script`.

    :param fatal: a failed write ends the script; otherwise it prints a ``warn`` line and goes on.
    """
    failed = 'dt_fail log "cannot write $S/log.jsonl"' if fatal else \
        "printf '@@dt warn\\tcannot write %s\\n' \"$S/log.jsonl\""
    body = f'mkdir -p -- "$S" 2>/dev/null; printf \'%s\\n\' "$event_line" 2>/dev/null >> "$S/log.jsonl" || {failed}\n'
    return body, {"event_line": log_line(event)}
