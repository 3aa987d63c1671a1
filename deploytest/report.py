"""Showing verification results: text lines, red/green transitions against a baseline, JSON, JUnit XML.

Pure functions over :class:`~deploytest.checks.VerifyReport`; secrets were redacted when the
report was made. Colour is used only on a terminal and only when ``NO_COLOR`` is unset.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from .checks.runner import CheckResult, HostReport, VerifyReport

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


def _by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    """Results by check name; the first of a name, as :meth:`HostReport.result` finds it."""
    out: dict[str, CheckResult] = {}
    for result in results:
        out.setdefault(result.name, result)
    return out


def transitions(baseline: VerifyReport | None, after: VerifyReport) -> list[Transition]:
    """Per host and check of ``after``, what changed since ``baseline``."""
    out: list[Transition] = []
    before_hosts = {h.host: h for h in baseline.hosts} if baseline is not None else {}
    for host in after.hosts:
        before_host = before_hosts.get(host.host)
        now_by = _by_name(host.results)
        was_by = _by_name(before_host.results) if before_host is not None and before_host.error is None else {}
        names = list(now_by)
        if before_host is not None:
            names += [name for name in _by_name(before_host.results) if name not in now_by]
        for name in names:
            now = now_by.get(name)
            was = was_by.get(name)
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


# -- the run report: one set of facts for JSON and JUnit ----------------------------------------------

#: The JSON report's format name and version (``deploytest/schemas/report.schema.json``). The version
#: changes only when a key is removed or changes meaning; new keys may appear within a version.
REPORT_FORMAT = "deploytest-report"
REPORT_VERSION = 1

#: Outcomes of a task, as the JSON and JUnit reports name them.
OUTCOME_FOR_CODE = {0: "done", 1: "failed", 2: "refused", 3: "needs a human"}


@dataclass(frozen=True)
class HostFacts:
    """What one host of a run went through: the release live before and after, and its status.

    ``live_after`` is None when nothing is live, or when the host's state is unknown (``status``
    ``unknown``); ``live_before`` is None when nothing was live or it was not read (a refusal before
    any host was contacted, or ``verify``, which does not read the deploy state).
    """

    host: str
    status: str
    live_before: str | None = None
    live_after: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class RunReport:
    """Everything the JSON and JUnit reports of one task say: pure data, no host needed.

    :ivar result: the verification that judged the run (the new release's, or a rollback's).
    :ivar baseline: the checks against what was live before the run (deploy-and-verify).
    :ivar rollback: the verification of the hosts a failed rollout put back.
    """

    task: str
    outcome: str
    exit_code: int
    hosts: list[HostFacts] = field(default_factory=list)
    result: VerifyReport | None = None
    baseline: VerifyReport | None = None
    rollback: VerifyReport | None = None
    release: str | None = None
    label: str | None = None
    source: str | None = None
    error: str | None = None
    next_step: str = ""
    started: str = ""
    seconds: float = 0.0

    def host(self, name: str) -> HostFacts | None:
        """The facts of host ``name``, if it was part of the run."""
        return self._index["facts"].get(name)

    def checked(self, name: str, which: str = "result") -> HostReport | None:
        """Host ``name``'s report in the ``result``, ``baseline`` or ``rollback`` verification."""
        return self._index[which].get(name)

    @functools.cached_property
    def _index(self) -> dict[str, dict[str, Any]]:
        # by host name, once: a 10,000-host run is looked up host by host
        index: dict[str, dict[str, Any]] = {"facts": {h.host: h for h in self.hosts}}
        for which in ("result", "baseline", "rollback"):
            report: VerifyReport | None = getattr(self, which)
            index[which] = {h.host: h for h in report.hosts} if report is not None else {}
        return index

    @property
    def names(self) -> list[str]:
        """Every host of the run: those given, then any only a verification names."""
        names = {h.host: None for h in self.hosts}
        for report in (self.result, self.baseline, self.rollback):
            names.update({h.host: None for h in report.hosts} if report is not None else {})
        return list(names)


def report_schema() -> dict[str, Any]:
    """The JSON Schema of the JSON report (``deploytest/schemas/report.schema.json``)."""
    from importlib.resources import files

    text = files("deploytest").joinpath("schemas", "report.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second (the reports' ``started``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def verify_run(report: VerifyReport, task: str = "verify") -> RunReport:
    """The run report of a plain verification: exit 0 green, 1 any red, 3 a host could not be checked."""
    unreachable = [h.host for h in report.hosts if h.error]
    code = 3 if unreachable else (0 if report.ok else 1)
    outcome = "unknown" if unreachable else ("green" if report.ok else "red")
    hosts = [HostFacts(h.host, "unreachable" if h.error else ("green" if h.ok else "red"),
                       reason=h.error or "") for h in report.hosts]
    error = f"lost {', '.join(unreachable)} while verifying" if unreachable else None
    return RunReport(task, outcome, code, hosts, result=report, error=error,
                     started=report.started, seconds=round(report.seconds, 3))


def refused_run(task: str, message: str, hosts: Sequence[str] = (), *, refused: Sequence[str] = (),
                next_step: str = "", exit_code: int = 2, seconds: float = 0.0) -> RunReport:
    """The run report of a task that stopped before changing anything (or before it could start)."""
    facts = [HostFacts(h, "refused", reason=_line_about(h, message)) if h in refused else HostFacts(h, "unchanged")
             for h in hosts]
    return RunReport(task, OUTCOME_FOR_CODE.get(exit_code, "refused"), exit_code, facts, error=message,
                     next_step=next_step, started=now_iso(), seconds=seconds)


def _line_about(host: str, message: str) -> str:
    """What ``message`` says about ``host`` (its ``host: why`` line), else the message's first line."""
    for line in message.splitlines():
        if line.strip().startswith(f"{host}: "):
            return line.strip()[len(host) + 2:]
    return message.splitlines()[0] if message else "refused"


def _check_entry(result: CheckResult, change: Transition | None, checked: bool) -> dict[str, Any]:
    """One check of one host: its state before (the baseline) and after, and what each observed."""
    return {
        "name": result.name,
        "kind": result.check.kind,
        "ok": result.ok,
        "before": _state(change.before) if change is not None else "not checked",
        "after": ("green" if result.ok else "red") if checked else "unknown",
        "change": change.label if change is not None else ("green" if result.ok else "red"),
        "regression": change.regression if change is not None else False,
        "expected": result.verdict.expected,
        "observed": result.verdict.observed,
        "observed_before": change.before_observed if change is not None else None,
        "detail": result.verdict.detail,
        "attempts": result.attempts,
        "seconds": round(result.seconds, 3),
    }


def _host_checks(run: RunReport, name: str,
                 changes: Mapping[tuple[str, str], Transition]) -> tuple[list[dict[str, Any]], str | None]:
    """The host's checks with their transitions, and the error that kept it from being checked."""
    after = run.checked(name)
    before = run.checked(name, "baseline")
    if after is None:
        # never verified in this run: the baseline alone, nothing known after
        entries = []
        for result in before.results if before is not None and before.error is None else []:
            entries.append({
                "name": result.name, "kind": result.check.kind, "ok": None, "before": _state(result.ok),
                "after": "not checked", "change": "not checked", "regression": False,
                "expected": result.verdict.expected, "observed": None,
                "observed_before": result.verdict.observed, "detail": "", "attempts": 0, "seconds": 0.0,
            })
        return entries, None
    entries = [_check_entry(r, changes.get((name, r.name)), after.error is None) for r in after.results]
    return entries, after.error


_NOT_OK = {"unknown", "unreachable", "refused", "red", "failed", "stopped", "removed"}


def _changes(run: RunReport) -> dict[tuple[str, str], Transition]:
    """Each ``(host, check)`` of the result, against the baseline (none without a baseline)."""
    if run.baseline is None or run.result is None:
        return {}
    return {(t.host, t.check): t for t in transitions(run.baseline, run.result)}


def to_document(run: RunReport) -> dict[str, Any]:
    """The JSON report of a run (version :data:`REPORT_VERSION`; see ``report.schema.json``)."""
    counts = {"hosts": 0, "checks": 0, "green": 0, "red": 0, "unreachable": 0, "turned_green": 0,
              "regressions": 0}
    hosts = []
    changes = _changes(run)
    for name in run.names:
        facts = run.host(name) or HostFacts(name, "checked")
        checks, error = _host_checks(run, name, changes)
        rolled = run.checked(name, "rollback")
        ok = facts.status not in _NOT_OK and error is None and all(c["ok"] is not False for c in checks)
        counts["hosts"] += 1
        counts["unreachable"] += 1 if error else 0
        for check in checks:
            if check["ok"] is None:
                continue
            counts["checks"] += 1
            counts["green" if check["ok"] else "red"] += 1
            counts["turned_green"] += 1 if check["change"] == "red -> green" else 0
            counts["regressions"] += 1 if check["regression"] else 0
        hosts.append({
            "host": name,
            "ok": ok,
            "status": facts.status,
            "live_before": facts.live_before,
            "live_after": facts.live_after,
            "reason": facts.reason or None,
            "error": error,
            "checks": checks,
            "rollback_checks": [_check_entry(r, None, rolled.error is None) for r in rolled.results]
            if rolled is not None else [],
        })
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "task": run.task,
        "outcome": run.outcome,
        "exit_code": run.exit_code,
        "ok": run.exit_code == 0,
        "error": {"message": run.error, "next_step": run.next_step or None} if run.error else None,
        "release": run.release,
        "label": run.label,
        "source": run.source,
        "started": run.started,
        "seconds": run.seconds,
        "summary": counts,
        "failed": {h.host: h.reason for h in run.hosts if h.reason},
        "hosts": hosts,
        "baseline": run.baseline.to_dict() if run.baseline is not None else None,
        "result": run.result.to_dict() if run.result is not None else None,
        "rollback": run.rollback.to_dict() if run.rollback is not None else None,
    }


def to_json(
    report: VerifyReport,
    *,
    baseline: VerifyReport | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report of a verification (``extra`` may name the ``task`` and add ``release``/``outcome``)."""
    return to_document(_as_run(report, baseline, extra))


def _as_run(report: VerifyReport, baseline: VerifyReport | None, extra: Mapping[str, Any] | None) -> RunReport:
    extra = dict(extra or {})
    run = verify_run(report, str(extra.get("task") or "verify"))
    return dataclasses.replace(
        run, baseline=baseline,
        outcome=str(extra.get("outcome") or run.outcome),
        release=str(extra["release"]) if extra.get("release") else None,
    )


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
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_document(path: str, run: RunReport) -> None:
    """Write the run's JSON report to ``path`` (replaced atomically; parent directories created)."""
    _write_atomically(path, json.dumps(to_document(run), indent=2) + "\n")


def write_json(
    path: str,
    report: VerifyReport,
    *,
    baseline: VerifyReport | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write :func:`to_json` to ``path`` (replaced atomically; parent directories created)."""
    write_document(path, _as_run(report, baseline, extra))


# -- JUnit ---------------------------------------------------------------------------------------------
#
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
        lines.append(f"baseline: {_state(change.before)} ({change.before_observed or '-'}); change: {change.label}")
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
            out.append(f"baseline: {_state(change.before)} ({change.before_observed}); change: {change.label}")
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
    changes = _changes(run)
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
    _write_atomically(path, run_junit(run))


def junit_xml(
    report: VerifyReport,
    *,
    baseline: VerifyReport | None = None,
    extra: Mapping[str, Any] | None = None,
    name: str = "deploytest verify",
) -> str:
    """JUnit XML of a verification: one ``<testsuite>`` per host, one ``<testcase>`` per check."""
    task = name.removeprefix("deploytest ") or "verify"
    return run_junit(_as_run(report, baseline, {"task": task, **(extra or {})}))


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
