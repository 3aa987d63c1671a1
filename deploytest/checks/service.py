"""Services on the host: running (and enabled) under systemd, OpenRC or SysV init."""

from __future__ import annotations

from typing import ClassVar

from ..shell import quote
from .base import Check, ProbeOutput, Verdict, key_values, snippet
from .schema import Field


class ServiceCheck(Check):
    """A service under systemd, supervisor or SysV init: running and/or enabled."""

    kind = "service"
    primary = "name"
    fields: ClassVar[dict[str, Field]] = {
        "name": Field("name", required=True),
        "running": Field("bool", default=True),
        "enabled": Field("bool"),
        "manager": Field("str", default="auto", choices=("auto", "systemd", "supervisor", "sysv")),
        "supervisor_conf": Field("path"),
    }

    def subject(self) -> str:
        return str(self.params["name"])

    def expectation(self) -> str:
        parts = ["running" if self.params["running"] else "stopped"]
        if self.params.get("enabled") is not None:
            parts.append("enabled" if self.params["enabled"] else "disabled")
        return ", ".join(parts)

    def probe(self) -> str:
        conf = self.params.get("supervisor_conf") or ""
        return "\n".join(
            [
                f"n={quote(self.params['name'])}; m={quote(self.params['manager'])}; c={quote(conf)}",
                '_sv() { if [ -n "$c" ]; then supervisorctl -c "$c" "$@"; else supervisorctl "$@"; fi; }',
                "_sd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }",
                'if [ "$m" = auto ]; then',
                "  m=none",
                '  if [ -n "$c" ]; then m=supervisor',
                '  elif _sd && [ "$(systemctl show -p LoadState --value -- "$n" 2>/dev/null)" = loaded ];'
                " then m=systemd",
                "  elif command -v supervisorctl >/dev/null 2>&1; then",
                '    set -- $(_sv status "$n" 2>/dev/null | head -n 1)',
                '    case "${1:-}" in "$n"|*":$n") m=supervisor ;; esac',
                "  fi",
                '  if [ "$m" = none ] && [ -x "/etc/init.d/$n" ]; then m=sysv; fi',
                '  if [ "$m" = none ] && _sd; then m=systemd; fi',
                "fi",
                'echo "manager=$m"',
                'case "$m" in',
                '  systemd) echo "active=$(systemctl is-active -- "$n" 2>/dev/null)";'
                ' echo "enabled=$(systemctl is-enabled -- "$n" 2>/dev/null)" ;;',
                '  supervisor) echo "status=$(_sv status "$n" 2>&1 | head -n 1)";'
                " a=$(_sv avail 2>/dev/null | awk -v n=\"$n\" '$1 == n {print $4}');"
                ' echo "enabled=${a:-unknown}" ;;',
                '  sysv) if [ -x "/etc/init.d/$n" ]; then'
                ' "/etc/init.d/$n" status >/dev/null 2>&1; echo "rc=$?";'
                " else echo rc=4; fi;"
                ' if ls /etc/rc[2345].d/S[0-9][0-9]"$n" >/dev/null 2>&1; then echo enabled=enabled;'
                " else echo enabled=disabled; fi ;;",
                "esac",
            ]
        )

    def judge(self, output: ProbeOutput) -> Verdict:
        facts = key_values(output.text)
        manager = facts.get("manager", "")
        enabled_state = facts.get("enabled", "")
        if manager == "systemd":
            state = facts.get("active", "") or "unknown"
            running = state == "active"
            enabled = enabled_state in ("enabled", "enabled-runtime", "static", "alias", "indirect")
            observed = f"{state} (systemd)"
        elif manager == "supervisor":
            words = facts.get("status", "").split()
            name = str(self.params["name"])
            # A program in a group is "group:name"; a bare name also finds it as a homogeneous group.
            known = len(words) > 1 and (words[0] == name or (":" not in name and words[0].split(":")[-1] == name))
            state = words[1] if known else "unknown"
            running = state == "RUNNING"
            enabled = enabled_state == "auto"
            observed = f"{state} (supervisor)"
            if state == "unknown" and facts.get("status"):
                observed = f"unknown to supervisor ({snippet(facts['status'], 60)})"
        elif manager == "sysv":
            rc = facts.get("rc", "")
            running = rc == "0"
            enabled = enabled_state == "enabled"
            observed = {"0": "running", "3": "stopped", "4": "unknown service"}.get(
                rc, f"status exit {rc}"
            ) + " (sysv)"
        else:
            return Verdict(
                False, self.expectation(), "no service manager knows it (systemd, supervisor, sysv)"
            )
        if running != self.params["running"]:
            return Verdict(False, self.expectation(), observed)
        wanted_enabled = self.params.get("enabled")
        if wanted_enabled is not None and enabled != wanted_enabled:
            return Verdict(False, self.expectation(), f"{observed}, {enabled_state or 'unknown'} at boot")
        return Verdict(True, self.expectation(), observed)
