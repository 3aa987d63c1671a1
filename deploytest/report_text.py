"""Verification results as terminal lines: one line per check, a summary, red/green transitions.

Colour is decided once, by :mod:`deploytest.console`; these functions only take its answer (``color``).
"""

from __future__ import annotations

from .checks.runner import CheckResult, HostReport, VerifyReport
from .console import paint
from .report import Transition, transitions

GREEN_MARK = "✔"
RED_MARK = "✘"


def _mark(ok: bool, color: bool) -> str:
    return paint(GREEN_MARK, "green", color) if ok else paint(RED_MARK, "red", color)


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
    # A check with nothing before it (a first deploy, a check added since) is counted as new, never
    # as "still" anything: nothing was seen before.
    counts = {
        "turned green": sum(1 for t in found if t.label == "red -> green"),
        "regressions": sum(1 for t in found if t.regression),
        "still red": sum(1 for t in found if t.label == "still red"),
        "still green": sum(1 for t in found if t.label == "still green"),
        "new and red": sum(1 for t in found if t.label == "new, red"),
        "new and green": sum(1 for t in found if t.label == "new, green"),
        "unknown": sum(1 for t in found if t.label == "unreachable"),
    }
    always = ("turned green", "regressions", "still red", "still green")
    lines.append("changes: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n or k in always))
    return "\n".join(lines)


def _explain_or(item: Transition) -> str:
    return explain(item.after_result) if item.after_result is not None else item.after_observed
