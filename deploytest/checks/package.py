"""Installed packages (dpkg, rpm, apk, pip) and their versions."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from ..errors import ConfigError
from ..shell import quote
from .base import Check, ProbeOutput, Verdict, key_values, snippet
from .schema import Field
from .version_order import VersionError
from .versions import parse_spec, satisfies


class PackageCheck(Check):
    """An installed package (dpkg, rpm, apk, or pip for a given python) and its version."""

    kind = "package"
    primary = "name"
    fields: ClassVar[dict[str, Field]] = {
        "name": Field("name", required=True),
        "version": Field("version"),
        "installed": Field("bool", default=True),
        "manager": Field("str", default="auto", choices=("auto", "dpkg", "rpm", "apk", "pip")),
        "python": Field("str", default="python3"),
    }

    _PIP = (
        "import sys\ntry:\n from importlib.metadata import version\nexcept ImportError:\n"
        " sys.exit(3)\ntry:\n v = version(sys.argv[1])\nexcept Exception:\n print('status=not-installed')\n"
        "else:\n print('status=install ok installed'); print('version=' + v)\n"
    )

    @classmethod
    def refine(cls, params: Mapping[str, Any], where: str) -> None:
        """Refuse a version constraint that the manager's own rules cannot parse."""
        version = params.get("version")
        if version:
            try:
                parse_spec(str(version), str(params["manager"]))
            except VersionError as exc:
                raise ConfigError(f"{where}.version: {exc}. Nothing was changed.") from None

    def subject(self) -> str:
        return str(self.params["name"])

    def expectation(self) -> str:
        if not self.params["installed"]:
            return "not installed"
        version = self.params.get("version")
        return f"installed, version {version.strip()}" if version else "installed"

    def probe(self) -> str:
        name = quote(self.params["name"])
        return "\n".join(
            [
                f"n={name}; m={quote(self.params['manager'])}",
                'if [ "$m" = auto ]; then',
                "  if command -v dpkg-query >/dev/null 2>&1; then m=dpkg",
                "  elif command -v rpm >/dev/null 2>&1; then m=rpm",
                "  elif command -v apk >/dev/null 2>&1; then m=apk; else m=none; fi",
                "fi",
                'echo "manager=$m"',
                'case "$m" in',
                "  dpkg) dpkg-query -W -f='status=${Status}\\nversion=${Version}\\n' \"$n\" 2>/dev/null"
                " || echo status=not-installed ;;",
                "  rpm) rpm -q --qf 'status=install ok installed\\n"
                "version=%|EPOCH?{%{EPOCH}:}|%{VERSION}-%{RELEASE}\\n' \"$n\" 2>/dev/null"
                " || echo status=not-installed ;;",
                '  apk) if apk info -e "$n" >/dev/null 2>&1; then echo "status=install ok installed";'
                ' v=$(apk info "$n" 2>/dev/null | head -n 1); v=${v%% *}; echo "version=${v#"$n"-}";'
                " else echo status=not-installed; fi ;;",
                f'  pip) {quote(self.params["python"])} -c {quote(self._PIP)} "$n" ;;',
                "esac",
            ]
        )

    def judge(self, output: ProbeOutput) -> Verdict:
        facts = key_values(output.text)
        manager = facts.get("manager", "unknown")
        status = facts.get("status", "")
        if manager == "none":
            return Verdict(False, self.expectation(), "no package manager found (dpkg, rpm, apk)")
        if not status:
            return Verdict(False, self.expectation(), f"no answer from {manager}", snippet(output.error_text))
        installed = status.split()[-1] == "installed" and status != "not-installed"
        version = facts.get("version", "")
        if not self.params["installed"]:
            return Verdict(
                not installed,
                "not installed",
                f"installed {version} ({manager})" if installed else "not installed",
            )
        if not installed:
            return Verdict(False, self.expectation(), f"not installed ({manager})")
        wanted = self.params.get("version")
        if wanted:
            try:
                ok = satisfies(version, wanted, manager)
            except VersionError as exc:
                return Verdict(False, self.expectation(), f"version {version} ({manager})", f"{exc}")
            if not ok:
                return Verdict(False, self.expectation(), f"version {version} ({manager})")
        return Verdict(True, self.expectation(), f"version {version} ({manager})")
