"""The JUnit XML report of a run, as Jenkins, GitLab and the Ant junit-10.xsd read it."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any, Mapping

from .checks.runner import CheckResult, VerifyReport
from .report import HostFacts, RunReport, Transition, as_run, now_iso, state, transitions_by_check, write_atomically
from .report_text import explain

# What the consumers do with it (Jenkins' junit plugin, GitLab's JUnit parser, the Ant junit-10.xsd):
# - Jenkins splits ``classname`` at its last dot into package and class: ours is ``deploytest.<host>``
#   with the host's dots as ``_``, so the class is the whole host name.
# - GitLab keys cases by classname + name and keeps the first of duplicates: names are unique per host.
# - GitLab shows a failure's element text, not its ``message``: the text says expected and observed.
# - Jenkins keeps 500 characters at each end of a passing case's output and 50,000 of a failing one's:
#   we trim the same way, saying how much was left out.
# - GitLab rejects a report over 30 MB or 500,000 cases: past :data:`JUNIT_MAX_CASES` cases or
#   :data:`JUNIT_MAX_BYTES` bytes, the report is a summary of one case per host and check kind.

#: Characters kept at each end of a passing case's output, and of a failing case's.
KEEP_PASSING = 500
KEEP_FAILING = 50_000
#: Past these, a JUnit report becomes a summary (one case per host and check kind).
JUNIT_MAX_CASES = 50_000
JUNIT_MAX_BYTES = 20 * 1024 * 1024


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _x(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot hold."""
    return _NOT_XML.sub("?", text)


def classname(host: str) -> str:
    """``deploytest.web1_example_com``: survives Jenkins' split at the last dot."""
    return "deploytest." + re.sub(r"[^A-Za-z0-9_-]", "_", host)


def trimmed(text: str, keep: int) -> str:
    """``text`` with only ``keep`` characters at each end, as Jenkins keeps a case's output."""
    if len(text) <= 2 * keep + 80:
        return text
    left_out = len(text) - 2 * keep
    return f"{text[:keep]}\n...[{left_out} characters trimmed]...\n{text[-keep:]}"


def _seconds(value: float) -> str:
    return f"{max(value, 0.0):.3f}"


class _Suite:
    """One host's ``<testsuite>``, counting as it fills: case names kept unique (GitLab keeps the first)."""

    def __init__(self, root: ET.Element, host: str, index: int, started: str) -> None:
        self.element = ET.SubElement(root, "testsuite", name=_x(host), hostname=_x(host), id=str(index),
                                     package="deploytest", tests="0", failures="0", errors="0", skipped="0",
                                     time="0.000", timestamp=started or now_iso())
        self.host = host
        self.names: set[str] = set()
        self.tests = self.failures = self.errors = 0
        self.seconds = 0.0

    def properties(self, values: Mapping[str, Any]) -> None:
        properties = ET.SubElement(self.element, "properties")
        for key, value in values.items():
            if value is None or value == "":
                continue
            text = value if isinstance(value, str) else json.dumps(value)
            ET.SubElement(properties, "property", name=_x(str(key)), value=_x(text))

    def case(self, name: str, seconds: float = 0.0, *, failure: tuple[str, str, str] | None = None,
             error: tuple[str, str, str] | None = None, output: str = "") -> None:
        full = f"{self.host} :: {name}"
        unique, number = full, 2
        while unique in self.names:
            unique, number = f"{full} ({number})", number + 1
        self.names.add(unique)
        case = ET.SubElement(self.element, "testcase", name=_x(unique), classname=_x(classname(self.host)),
                             time=_seconds(seconds))
        self.tests += 1
        self.seconds += max(seconds, 0.0)
        bad = failure or error
        if bad is not None:
            kind, message, body = bad
            tag = "failure" if failure is not None else "error"
            element = ET.SubElement(case, tag, message=_x(trimmed(message, 500)), type=_x(kind))
            element.text = _x(trimmed(body, KEEP_FAILING))
            if failure is not None:
                self.failures += 1
            else:
                self.errors += 1
        if output:
            keep = KEEP_PASSING if bad is None else KEEP_FAILING
            ET.SubElement(case, "system-out").text = _x(trimmed(output, keep))

    def close(self) -> None:
        self.element.set("tests", str(self.tests))
        self.element.set("failures", str(self.failures))
        self.element.set("errors", str(self.errors))
        self.element.set("time", _seconds(self.seconds))


def _failure_body(host: str, result: CheckResult, change: Transition | None) -> str:
    verdict = result.verdict
    lines = [f"{host} {result.name}", f"expected: {verdict.expected}", f"observed: {verdict.observed}"]
    if verdict.detail:
        lines.append(f"detail: {verdict.detail}")
    lines.append(f"after {result.seconds:.1f}s, {result.attempts} attempt{'s' if result.attempts != 1 else ''}")
    if change is not None:
        lines.append(f"baseline: {state(change.before)} ({change.before_observed or '-'}); change: {change.label}")
    return "\n".join(lines)


_HOST_BAD = {"rolled back": "failure", "stopped": "failure", "removed": "failure", "red": "failure",
             "failed": "failure", "set aside": "failure", "refused": "error", "unknown": "error",
             "unreachable": "error"}


def _detailed(suite: _Suite, run: RunReport, host: str, changes: Mapping[tuple[str, str], Transition]) -> None:
    report = run.checked(host)
    for result in report.results if report is not None else []:
        change = changes.get((host, result.name))
        out = [f"{'green' if result.ok else 'red'}: expected {result.verdict.expected}",
               f"observed: {result.verdict.observed}", f"attempts: {result.attempts}"]
        if change is not None:
            out.append(f"baseline: {state(change.before)} ({change.before_observed}); change: {change.label}")
        failure = None if result.ok else (result.check.kind, explain(result), _failure_body(host, result, change))
        suite.case(result.name, result.seconds, failure=failure, output="\n".join(out))


def _summarised(suite: _Suite, run: RunReport, host: str) -> None:
    report = run.checked(host)
    kinds: dict[str, list[CheckResult]] = {}
    for result in report.results if report is not None else []:
        kinds.setdefault(result.check.kind, []).append(result)
    for kind, results in kinds.items():
        red = [r for r in results if not r.ok]
        seconds = max(r.seconds for r in results)
        name = f"{kind} checks ({len(results)})"
        if red:
            body = "\n\n".join(_failure_body(host, r, None) for r in red)
            message = f"{len(red)} of {len(results)} {kind} checks red: " + ", ".join(r.name for r in red)
            suite.case(name, seconds, failure=(kind, message, body))
        else:
            suite.case(name, seconds)


def _host_case(suite: _Suite, run: RunReport, facts: HostFacts | None, host_error: str | None) -> None:
    """The case that says what the run did to the host (and why it was not checked, if so)."""
    if host_error is not None:
        suite.case("connect", 0.0, error=("unreachable", f"unreachable: {host_error}",
                                          f"{suite.host} unreachable: {host_error}"))
    if facts is None or run.task == "verify":
        return
    before, after = facts.live_before or "-", facts.live_after or "-"
    if facts.status == "unknown":
        after = "unknown"
    text = f"{facts.status}: live before {before}, after {after}" + (f" ({facts.reason})" if facts.reason else "")
    tag = _HOST_BAD.get(facts.status)
    if tag is None:
        suite.case(run.task, output=text + (f"\n{run.error}" if run.error else ""))
        return
    bad = (facts.status, text, text + (f"\n{run.error}" if run.error else "")
           + (f"\nnext: {run.next_step}" if run.next_step else ""))
    if tag == "failure":
        suite.case(run.task, failure=bad)
    else:
        suite.case(run.task, error=bad)


def run_junit(run: RunReport, *, max_cases: int = JUNIT_MAX_CASES, max_bytes: int = JUNIT_MAX_BYTES) -> str:
    """JUnit XML of a run: one ``<testsuite>`` per host, a ``<testcase>`` per check (``web2 :: health``)
    and one for what the run did to the host (``web2 :: deploy-and-verify``); a summary (one case per
    host and check kind) past ``max_cases`` cases or ``max_bytes`` bytes."""
    cases = sum(len(h.results) for h in run.result.hosts) if run.result is not None else 0
    text = _junit(run, summary=cases > max_cases)
    if len(text.encode()) > max_bytes and cases <= max_cases:
        text = _junit(run, summary=True)
    return text


def _junit(run: RunReport, *, summary: bool) -> str:
    changes = transitions_by_check(run)
    root = ET.Element("testsuites", name=_x(f"deploytest {run.task}"))
    suites: list[_Suite] = []
    for index, host in enumerate(run.names):
        suite = _Suite(root, host, index, run.started)
        facts = run.host(host)
        suite.properties({"task": run.task, "outcome": run.outcome, "exit_code": run.exit_code,
                          "release": run.release, "label": run.label, "source": run.source,
                          "status": facts.status if facts else None,
                          "live_before": facts.live_before if facts else None,
                          "live_after": facts.live_after if facts else None,
                          "summary": "one case per check kind" if summary else None})
        report = run.checked(host)
        if summary:
            _summarised(suite, run, host)
        else:
            _detailed(suite, run, host, changes)
        _host_case(suite, run, facts, report.error if report is not None else None)
        suite.close()
        suites.append(suite)
    if run.error and run.exit_code and not any(s.failures or s.errors for s in suites):
        # nothing host by host says why the run failed (refused before any host, say): one case does
        suite = _Suite(root, "deploytest", len(suites), run.started)
        message = run.error + (f"\nnext: {run.next_step}" if run.next_step else "")
        suite.case(run.task, error=(run.outcome, run.error.splitlines()[0], message))
        suite.close()
        suites.append(suite)
    root.set("tests", str(sum(s.tests for s in suites)))
    root.set("failures", str(sum(s.failures for s in suites)))
    root.set("errors", str(sum(s.errors for s in suites)))
    root.set("time", _seconds(run.seconds))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_run_junit(path: str, run: RunReport) -> None:
    """Write :func:`run_junit` to ``path`` (replaced atomically; parent directories created)."""
    write_atomically(path, run_junit(run))


def junit_xml(
    report: VerifyReport,
    *,
    baseline: VerifyReport | None = None,
    extra: Mapping[str, Any] | None = None,
    name: str = "deploytest verify",
) -> str:
    """JUnit XML of a verification: one ``<testsuite>`` per host, one ``<testcase>`` per check."""
    task = name.removeprefix("deploytest ") or "verify"
    return run_junit(as_run(report, baseline, {"task": task, **(extra or {})}))


def write_junit(
    path: str,
    report: VerifyReport,
    *,
    baseline: VerifyReport | None = None,
    extra: Mapping[str, Any] | None = None,
    name: str = "deploytest verify",
) -> None:
    """Write :func:`junit_xml` to ``path`` (replaced atomically; parent directories created)."""
    write_atomically(path, junit_xml(report, baseline=baseline, extra=extra, name=name))
