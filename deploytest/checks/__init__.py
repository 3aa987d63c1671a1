"""The check catalog: what a ``checks:`` entry may say, parsed into checks; pure, no host needed.

A check is a probe (shell text) plus a judge (pure Python); see :mod:`deploytest.checks.base`.
The engine that runs them on hosts, one script per host per attempt, is
:mod:`deploytest.checks.runner`; it imports the catalog, never the reverse.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import ConfigError
from .accounts import GroupCheck, UserCheck
from .base import COMMON_FIELDS, Check
from .command import CommandCheck
from .database import DatabaseCheck
from .files import DiskCheck, FileCheck
from .http import HttpCheck
from .metric import MetricCheck
from .network import PortCheck, TcpCheck
from .package import PackageCheck
from .process import ProcessCheck
from .service import ServiceCheck

CATALOG: dict[str, type[Check]] = {
    cls.kind: cls
    for cls in (
        CommandCheck,
        FileCheck,
        HttpCheck,
        PortCheck,
        TcpCheck,
        ServiceCheck,
        ProcessCheck,
        PackageCheck,
        UserCheck,
        GroupCheck,
        DatabaseCheck,
        DiskCheck,
        MetricCheck,
    )
}

__all__ = ["CATALOG", "make_check", "parse_check", "parse_checks"]


def parse_check(raw: object, where: str = "check") -> Check:
    """One check from its config form, ``{http: {url: ..., status: 200, name: ..., timeout: ...}}``.

    A scalar is shorthand for the kind's main key: ``{port: 8000}``, ``{file: /etc/app.conf}``.
    ``name`` and ``timeout`` may sit inside the kind's mapping or beside the kind key.

    :param where: the key path used in error messages.
    :raises ConfigError: one line naming the key and what was expected.
    """
    if not isinstance(raw, Mapping):
        kinds = ", ".join(sorted(CATALOG))
        raise ConfigError(
            f"{where}: expected a mapping like {{http: {{url: ...}}}} (one of: {kinds}), got {raw!r}"[:200]
            + ". Nothing was changed."
        )
    outer = dict(raw)
    common_outer = {k: outer.pop(k) for k in list(outer) if k in COMMON_FIELDS}
    kinds_given = [k for k in outer if k in CATALOG]
    unknown = [k for k in outer if k not in CATALOG]
    if unknown:
        kinds = ", ".join(sorted(CATALOG))
        raise ConfigError(
            f"{where}.{unknown[0]}: unknown check type (expected one of: {kinds}). Nothing was changed."
        )
    if len(kinds_given) != 1:
        raise ConfigError(
            f"{where}: expected exactly one check type, got {len(kinds_given)}"
            f" ({', '.join(kinds_given) or 'none'}). Nothing was changed."
        )
    kind = kinds_given[0]
    cls = CATALOG[kind]
    body = outer[kind]
    where_kind = f"{where}.{kind}"
    if body is None or not isinstance(body, Mapping):
        if isinstance(body, (str, int)) and not isinstance(body, bool):
            body = {cls.primary: body}
        else:
            raise ConfigError(
                f"{where_kind}: expected a mapping of {kind} keys, got {body!r}"[:200]
                + ". Nothing was changed."
            )
    body = dict(body)
    # For service, user, group and package, `name` inside is what is checked; the display name
    # then goes beside the kind: `- {service: {name: hello}, name: "hello service"}`.
    common = {k: body.pop(k) for k in list(body) if k in COMMON_FIELDS and k not in cls.fields}
    common.update(common_outer)
    return cls(body, name=common.get("name"), timeout=common.get("timeout"), where=where_kind)


def make_check(kind: str, **params: Any) -> Check:
    """A check built from Python, validated like config: ``make_check("http", url=..., status=200)``."""
    params = {k: v for k, v in params.items() if v is not None}
    return parse_check({kind: params}, f"{kind} check")


def parse_checks(raw: list[Any] | None) -> list[Check]:
    """The ``deploytest.checks`` list, validated; names are unique so reports can be compared.

    :raises ConfigError: one line naming the key, e.g. ``config deploytest.checks[2].http.status``.
    """
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(
            f"config deploytest.checks: expected a list of checks, got {raw!r}"[:200]
            + ". Nothing was changed."
        )
    checks: list[Check] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(raw):
        check = parse_check(item, f"config deploytest.checks[{index}]")
        if check.name in seen:
            raise ConfigError(
                f"config deploytest.checks[{index}]: same name as checks[{seen[check.name]}]"
                f" ({check.name!r}); give one of them a distinct name. Nothing was changed."
            )
        seen[check.name] = index
        checks.append(check)
    return checks
