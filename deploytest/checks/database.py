"""Database checks: PostgreSQL (psql), MySQL/MariaDB (mysql) and SQLite (sqlite3), run from the host.

Credentials come from the host (``password_file``) or from ``env``; ``env`` values travel on the
script's standard input, never in its text, and are redacted from everything reported.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from ..errors import ConfigError
from ..shell import quote
from .base import Check, ProbeOutput, Verdict, quoted, snippet
from .schema import Field

_PASSWORD_VARIABLE = {"postgres": "PGPASSWORD", "mysql": "MYSQL_PWD"}


class DatabaseCheck(Check):
    """A database answers a query; optionally its result equals or contains a value."""

    kind = "database"
    primary = "engine"
    secret_fields = frozenset({"env"})
    fields: ClassVar[dict[str, Field]] = {
        "engine": Field("str", required=True, choices=("postgres", "mysql", "sqlite")),
        "host": Field("name"),
        "port": Field("port"),
        "user": Field("name"),
        "database": Field("name"),
        "path": Field("path"),
        "query": Field("text", default="SELECT 1"),
        "equals": Field("scalar"),
        "contains": Field("text"),
        "password_file": Field("path"),
        "env": Field("env_map"),
    }

    def __init__(
        self,
        params: Mapping[str, Any],
        *,
        name: str | None = None,
        timeout: float | None = None,
        where: str | None = None,
    ) -> None:
        super().__init__(params, name=name, timeout=timeout, where=where)
        for value in (self.params.get("env") or {}).values():
            self._secret_var(str(value))

    @classmethod
    def refine(cls, params: Mapping[str, Any], where: str) -> None:
        if params["engine"] == "sqlite" and not params.get("path"):
            raise ConfigError(f"{where}.path: missing (required for engine sqlite). Nothing was changed.")
        if params["engine"] != "sqlite" and params.get("path"):
            raise ConfigError(
                f"{where}.path: only for engine sqlite (use host, port, database). Nothing was changed."
            )

    def subject(self) -> str:
        engine = str(self.params["engine"])
        if engine == "sqlite":
            return f"sqlite {self.params.get('path') or '?'}"
        where = self.params.get("database") or ""
        host = self.params.get("host")
        if host:
            where = f"{where}@{host}" + (f":{self.params['port']}" if self.params.get("port") else "")
        return f"{engine} {where}".rstrip()

    def expectation(self) -> str:
        if self.params.get("equals") is not None:
            return f"query result {quoted(str(self.params['equals']))}"
        if self.params.get("contains") is not None:
            return f"query result containing {quoted(str(self.params['contains']))}"
        return "query answered"

    def probe(self) -> str:
        engine = str(self.params["engine"])
        query = quote(self.params["query"])
        lines: list[str] = []
        for name, value in (self.params.get("env") or {}).items():
            lines.append(f'{name}="${self._secret_var(str(value))}"; export {name}')
        password_file = self.params.get("password_file")
        if password_file and engine in _PASSWORD_VARIABLE:
            variable = _PASSWORD_VARIABLE[engine]
            lines.append(f"pf={quote(password_file)}")
            lines.append('[ -r "$pf" ] || { echo "cannot read password_file $pf" >&2; exit 2; }')
            lines.append(f'{variable}=$(cat -- "$pf"); export {variable}')
        opt = {k: self.params.get(k) for k in ("host", "port", "user", "database")}
        if engine == "postgres":
            args = ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-w"]
            for key, flag in (("host", "-h"), ("port", "-p"), ("user", "-U"), ("database", "-d")):
                if opt[key] is not None:
                    args += [flag, str(opt[key])]
            lines.append(
                "command -v psql >/dev/null 2>&1 || { echo 'psql not found on the host' >&2; exit 127; }"
            )
            lines.append(f"psql {' '.join(quote(a) for a in args)} -c {query}")
        elif engine == "mysql":
            args = ["--batch", "--skip-column-names"]
            for key, flag in (("host", "--host="), ("port", "--port="), ("user", "--user=")):
                if opt[key] is not None:
                    args.append(f"{flag}{opt[key]}")
            if opt["database"] is not None:
                args.append(f"--database={opt['database']}")
            lines.append(
                "command -v mysql >/dev/null 2>&1 || { echo 'mysql not found on the host' >&2; exit 127; }"
            )
            lines.append(f"mysql {' '.join(quote(a) for a in args)} -e {query}")
        else:
            path = quote(self.params.get("path") or "")
            lines.append(
                "command -v sqlite3 >/dev/null 2>&1"
                " || { echo 'sqlite3 not found on the host' >&2; exit 127; }"
            )
            lines.append(f'[ -f {path} ] || {{ echo "no database file at "{path} >&2; exit 2; }}')
            lines.append(f"sqlite3 -batch -noheader -readonly {path} {query}")
        return "\n".join(lines)

    def judge(self, output: ProbeOutput) -> Verdict:
        expected = self.expectation()
        if output.exit_code != 0:
            return Verdict(
                False, expected, f"query failed (exit {output.exit_code})", snippet(output.error_text, 160)
            )
        result = output.text.strip()
        shown = quoted(result) if result else "an empty result"
        equals = self.params.get("equals")
        if equals is not None and result != str(equals).strip():
            return Verdict(False, expected, shown)
        contains = self.params.get("contains")
        if contains is not None and str(contains) not in result:
            return Verdict(False, expected, shown)
        return Verdict(True, expected, shown)
