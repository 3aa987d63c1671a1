"""Version constraints for package checks, each judged by its package manager's own ordering.

dpkg, rpm and apk order versions as :mod:`deploytest.checks.version_order` says; pip follows PEP 440
through :mod:`packaging`.

A constraint is one or more comma-separated ``<op><version>`` items (``>=1.2, <2``); ``op`` is one of
``== = != >= <= > <`` (pip adds ``~=`` and ``===``). A bare version means ``==``. For dpkg, rpm and apk,
``==1.2`` also matches a more precise version that starts with it at a ``.``, ``-`` or ``+``
(``1.2.3``, ``1.2-1``, ``1.2+b1``), never at a ``~`` (``1.2~rc1`` is before ``1.2``). For pip, ``==``
is PEP 440's (``==1.2`` is ``1.2.0``; write ``==1.2.*`` for any 1.2); ordered comparisons follow the
PEP 440 order of the two versions, so ``1.2rc1 < 1.2`` and ``2.0.dev1 < 2.0``.
"""

from __future__ import annotations

import re
from typing import Callable

from packaging.specifiers import InvalidSpecifier, Specifier
from packaging.version import InvalidVersion, Version

from .version_order import VersionError, apk_compare, dpkg_compare, rpm_compare

_ITEM = re.compile(r"^\s*(===|~=|==|!=|>=|<=|>|<|=)?\s*(\S+)\s*$")

_COMPARE: dict[str, Callable[[str, str], int]] = {"dpkg": dpkg_compare, "rpm": rpm_compare, "apk": apk_compare}


def _items(spec: str) -> list[tuple[str, str]]:
    items = []
    for part in spec.split(","):
        match = _ITEM.match(part)
        if match is None:
            raise VersionError(f"{part.strip()!r} is not a version constraint like >=1.2")
        items.append((match.group(1) or "==", match.group(2)))
    return items


def parse_spec(spec: str, manager: str) -> list[tuple[str, str]]:
    """The ``(op, version)`` items of ``spec``, each version valid for ``manager``.

    :param manager: dpkg, rpm, apk or pip; ``auto`` accepts a version any of dpkg, rpm and apk can parse.
    :raises VersionError: a constraint or version the manager's rules cannot parse.
    """
    if manager == "pip":
        out = []
        for op, version in _items(spec):
            op = "==" if op == "=" else op
            try:
                Specifier(op + version)
            except InvalidSpecifier:
                raise VersionError(f"{op}{version!r} is not a PEP 440 version specifier") from None
            out.append((op, version))
        return out
    items = _items(spec)
    managers = ("dpkg", "rpm", "apk") if manager == "auto" else (manager,)
    for op, version in items:
        if op in ("~=", "==="):
            raise VersionError(f"{op} is a pip (PEP 440) operator; {manager} takes == != >= <= > <")
        problems = []
        for name in managers:
            try:
                _COMPARE[name](version, version)
            except VersionError as exc:
                problems.append(str(exc))
            else:
                break
        else:
            raise VersionError(problems[0])
    return items


def _prefix_of(wanted: str, installed: str) -> bool:
    return installed.startswith(wanted) and installed[len(wanted) : len(wanted) + 1] in (".", "-", "+")


def _pip_satisfies(installed: str, op: str, wanted: str) -> bool:
    have = Version(installed)
    if op in ("==", "!=", "~=", "===") or wanted.endswith(".*"):
        return Specifier(op + wanted).contains(have, prereleases=True)
    want = Version(wanted)
    return {">=": have >= want, "<=": have <= want, ">": have > want, "<": have < want}[op]


def satisfies(installed: str, spec: str, manager: str = "dpkg") -> bool:
    """Whether the ``installed`` version meets every item of ``spec`` under ``manager``'s ordering.

    :raises VersionError: ``installed`` or ``spec`` is not valid for ``manager``.
    """
    items = parse_spec(spec, manager)
    if manager == "pip":
        try:
            Version(installed)
        except InvalidVersion:
            raise VersionError(f"{installed!r} is not a PEP 440 version") from None
        return all(_pip_satisfies(installed, op, wanted) for op, wanted in items)
    compare = _COMPARE[manager]
    compare(installed, installed)  # raises for a version the manager cannot parse
    for op, wanted in items:
        result = compare(installed, wanted)
        if op in ("==", "=", "!="):
            equal = result == 0 or _prefix_of(wanted, installed)
            ok = equal if op != "!=" else not equal
        else:
            ok = {">=": result >= 0, "<=": result <= 0, ">": result > 0, "<": result < 0}[op]
        if not ok:
            return False
    return True
