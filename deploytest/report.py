"""Showing verification results: text lines, red/green transitions against a baseline, JSON, JUnit XML.

Pure functions over :class:`~deploytest.checks.VerifyReport`; secrets were redacted when the
report was made. Colour is used only on a terminal and only when ``NO_COLOR`` is unset.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Mapping

from .checks import CheckResult, HostReport, VerifyReport

GREEN_MARK = "✔"
RED_MARK = "✘"
_GREEN = "\033[32m"
_RED = "\033[31m"
_RESET = "\033[0m"


def _mark(ok: bool, color: bool) -> str:
    mark = GREEN_MARK if ok else RED_MARK
    if not color:
        return mark
    return f"{_GREEN if ok else _RED}{mark}{_RESET}"


def explain(result: CheckResult) -> str:
    """``expected status 200, got 502 after 30.0s (body: "upstream down")`` for a red result."""
    verdict = result.verdict
    text = f"expected {verdict.expected}, got {verdict.observed} after {result.seconds:.1f}s"
    return text + (f" ({verdict.detail})" if verdict.detail else "")


def result_line(host: str, result: CheckResult, *, color: bool = False) -> str:
    """One line for one check on one host: ``✔ web1 port 8000`` or ``✘ web2 http ...: expected ...``."""
    if result.ok:
        after = (
            f" (green after {result.seconds:.1f}s, {result.attempts} attempts)" if result.attempts > 1 else ""
        )
        return f"{_mark(True, color)} {host} {result.name}{after}"
    return f"{_mark(False, color)} {host} {result.name}: {explain(result)}"


def host_error_line(report: HostReport, *, color: bool = False) -> str:
    """The line for a host that could not be verified."""
    return f"{_mark(False, color)} {report.host} unreachable: {report.error}"


def summary_line(report: VerifyReport) -> str:
    """One line: how many checks are green or red, on how many hosts, and how long it took."""
    counts = report.counts()
    hosts = f"{counts['hosts']} host{'s' if counts['hosts'] != 1 else ''}"
    unreachable = f"; {counts['unreachable']} unreachable" if counts["unreachable"] else ""
    if report.ok:
        return f"verify: all {counts['checks']} checks green on {hosts} ({report.seconds:.1f}s)"
    return (
        f"verify: {counts['red']} red, {counts['green']} green of {counts['checks']} checks on {hosts}"
        f"{unreachable} ({report.seconds:.1f}s)"
    )


def render(report: VerifyReport, *, color: bool = False) -> str:
    """The whole report as text: one line per host per check, then the summary line."""
    lines: list[str] = []
    for host in report.hosts:
        for result in host.results:
            lines.append(result_line(host.host, result, color=color))
        if host.error is not None:
            lines.append(host_error_line(host, color=color))
    lines.append(summary_line(report))
    return "\n".join(lines)


@dataclass(frozen=True)
class Transition:
    """One check on one host, baseline against after: ``before``/``after`` are green?, None if unknown."""

    host: str
    check: str
    before: bool | None
    after: bool | None
    before_observed: str
    after_observed: str
    after_result: CheckResult | None

    @property
    def label(self) -> str:
        """``red -> green``, ``green -> red``, ``still red``, ``still green``, ``new`` or ``unreachable``."""
        if self.after is None:
            return "unreachable"
        if self.before is None:
            return "new, green" if self.after else "new, red"
        if self.before == self.after:
            return "still green" if self.after else "still red"
        return "red -> green" if self.after else "green -> red"

    @property
    def regression(self) -> bool:
        """True when a check that was green in the baseline is red now."""
        return self.before is True and self.after is False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return {
            "host": self.host,
            "check": self.check,
            "before": _state(self.before),
            "after": _state(self.after),
            "change": self.label,
            "regression": self.regression,
            "before_observed": self.before_observed,
            "after_observed": self.after_observed,
        }


def _state(ok: bool | None) -> str:
    return "unknown" if ok is None else ("green" if ok else "red")


def transitions(baseline: VerifyReport | None, after: VerifyReport) -> list[Transition]:
    """Per host and check of ``after``, what changed since ``baseline``."""
    out: list[Transition] = []
    for host in after.hosts:
        before_host = baseline.host(host.host) if baseline is not None else None
        names = [r.name for r in host.results]
        if before_host is not None:
            names += [r.name for r in before_host.results if r.name not in names]
        for name in names:
            now = host.result(name)
            was = before_host.result(name) if before_host is not None and before_host.error is None else None
            out.append(
                Transition(
                    host=host.host,
                    check=name,
                    before=was.ok if was is not None else None,
                    after=now.ok if now is not None and host.error is None else None,
                    before_observed=was.verdict.observed if was is not None else "",
                    after_observed=now.verdict.observed if now is not None else (host.error or ""),
                    after_result=now,
                )
            )
        if not names and host.error is not None:
            out.append(Transition(host.host, "(host)", None, None, "", host.error, None))
    return out


def render_transitions(baseline: VerifyReport | None, after: VerifyReport, *, color: bool = False) -> str:
    """Per host and check, baseline against after: red -> green, regressions, still red, still green.

    Lines look like ``✔ web1 http http://...: red -> green (was 502, now 200)`` and
    ``✘ web2 port 8000: green -> red, REGRESSION (was listening on 0.0.0.0; now nothing on tcp port 8000)``;
    a last line counts each kind of change.
    """
    lines: list[str] = []
    found = transitions(baseline, after)
    for item in found:
        ok = item.after is True
        mark = _mark(ok, color)
        if item.label == "unreachable":
            lines.append(
                f"{mark} {item.host} {item.check}: unknown, host unreachable ({item.after_observed})"
            )
            continue
        if item.label == "red -> green":
            why = f"was {item.before_observed}, now {item.after_observed}"
        elif item.regression:
            why = f"was {item.before_observed}; now {_explain_or(item)}"
        elif item.after:
            why = item.after_observed
        else:
            why = _explain_or(item)
        label = item.label + (", REGRESSION" if item.regression else "")
        lines.append(f"{mark} {item.host} {item.check}: {label} ({why})")
    counts = {
        "turned green": sum(1 for t in found if t.label == "red -> green"),
        "regressions": sum(1 for t in found if t.regression),
        "still red": sum(1 for t in found if t.label in ("still red", "new, red")),
        "still green": sum(1 for t in found if t.label in ("still green", "new, green")),
        "unknown": sum(1 for t in found if t.label == "unreachable"),
    }
    lines.append("changes: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n or k != "unknown"))
    return "\n".join(lines)


def _explain_or(item: Transition) -> str:
    return explain(item.after_result) if item.after_result is not None else item.after_observed


def to_json(
    report: VerifyReport,
    *,
    baseline: VerifyReport | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document: the report, the baseline and transitions when given, plus ``extra`` fields.

    ``extra`` with ``hosts`` (a rollout's: its host names, its seconds) keeps them at the top and puts
    the checks' per-host results under ``result``.
    """
    document: dict[str, Any] = dict(extra or {})
    if "hosts" in document:
        document["result"] = report.to_dict()
    else:
        document.update(report.to_dict())
    if baseline is not None:
        document["baseline"] = baseline.to_dict()
        document["transitions"] = [t.to_dict() for t in transitions(baseline, report)]
    return document


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _x(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot hold."""
    return _NOT_XML.sub("?", text)


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".deploytest-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_json(
    path: str,
    report: VerifyReport,
    *,
    baseline: VerifyReport | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write :func:`to_json` to ``path`` (replaced atomically; parent directories created)."""
    _write_atomically(path, json.dumps(to_json(report, baseline=baseline, extra=extra), indent=2) + "\n")


def junit_xml(
    report: VerifyReport,
    *,
    baseline: VerifyReport | None = None,
    extra: Mapping[str, Any] | None = None,
    name: str = "deploytest verify",
) -> str:
    """JUnit XML: one ``<testsuite>`` per host, one ``<testcase>`` (``web2 :: http ...``) per check."""
    changes = {(t.host, t.check): t for t in transitions(baseline, report)} if baseline is not None else {}
    counts = report.counts()
    root = ET.Element(
        "testsuites",
        name=_x(name),
        tests=str(counts["checks"] + counts["unreachable"]),
        failures=str(counts["red"]),
        errors=str(counts["unreachable"]),
        time=f"{report.seconds:.3f}",
    )
    for host in report.hosts:
        red = sum(1 for r in host.results if not r.ok)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=_x(host.host),
            tests=str(len(host.results) + (1 if host.error else 0)),
            failures=str(red),
            errors="1" if host.error else "0",
            time=f"{host.seconds:.3f}",
            timestamp=report.started,
        )
        if extra:
            properties = ET.SubElement(suite, "properties")
            for key, value in extra.items():
                text = value if isinstance(value, str) else json.dumps(value)
                ET.SubElement(properties, "property", name=_x(str(key)), value=_x(text))
        for result in host.results:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=_x(f"deploytest.{host.host}"),
                name=_x(f"{host.host} :: {result.name}"),
                time=f"{result.seconds:.3f}",
            )
            if not result.ok:
                failure = ET.SubElement(case, "failure", message=_x(explain(result)), type=result.check.kind)
                failure.text = _x(result_line(host.host, result))
            change = changes.get((host.host, result.name))
            out = [f"attempts: {result.attempts}", f"observed: {result.verdict.observed}"]
            if change is not None:
                out.append(
                    f"baseline: {_state(change.before)} ({change.before_observed}); change: {change.label}"
                )
            ET.SubElement(case, "system-out").text = _x("\n".join(out))
        if host.error is not None:
            case = ET.SubElement(
                suite, "testcase", classname=_x(f"deploytest.{host.host}"), name=_x(f"{host.host} :: connect")
            )
            error = ET.SubElement(case, "error", message=_x(f"unreachable: {host.error}"), type="unreachable")
            error.text = _x(host_error_line(host))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(
    path: str,
    report: VerifyReport,
    *,
    baseline: VerifyReport | None = None,
    extra: Mapping[str, Any] | None = None,
    name: str = "deploytest verify",
) -> None:
    """Write :func:`junit_xml` to ``path`` (replaced atomically; parent directories created)."""
    _write_atomically(path, junit_xml(report, baseline=baseline, extra=extra, name=name))
