"""The JSON report of a run: a versioned document (``deploytest/schemas/report.schema.json``)."""

from __future__ import annotations

import json
from typing import Any, Mapping

from .checks.runner import CheckResult, VerifyReport
from .report import HostFacts, RunReport, Transition, as_run, state, transitions_by_check, write_atomically

#: The JSON report's format name and version (``deploytest/schemas/report.schema.json``). The version
#: changes only when a key is removed or changes meaning; new keys may appear within a version.
REPORT_FORMAT = "deploytest-report"
REPORT_VERSION = 1


def report_schema() -> dict[str, Any]:
    """The JSON Schema of the JSON report (``deploytest/schemas/report.schema.json``)."""
    from importlib.resources import files

    text = files("deploytest").joinpath("schemas", "report.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _check_entry(result: CheckResult, change: Transition | None, checked: bool) -> dict[str, Any]:
    """One check of one host: its state before (the baseline) and after, and what each observed."""
    return {
        "name": result.name,
        "kind": result.check.kind,
        "ok": result.ok,
        "before": state(change.before) if change is not None else "not checked",
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
                "name": result.name, "kind": result.check.kind, "ok": None, "before": state(result.ok),
                "after": "not checked", "change": "not checked", "regression": False,
                "expected": result.verdict.expected, "observed": None,
                "observed_before": result.verdict.observed, "detail": "", "attempts": 0, "seconds": 0.0,
            })
        return entries, None
    entries = [_check_entry(r, changes.get((name, r.name)), after.error is None) for r in after.results]
    return entries, after.error


_NOT_OK = {"unknown", "unreachable", "refused", "red", "failed", "stopped", "removed"}


def to_document(run: RunReport) -> dict[str, Any]:
    """The JSON report of a run (version :data:`REPORT_VERSION`; see ``report.schema.json``)."""
    counts = {"hosts": 0, "checks": 0, "green": 0, "red": 0, "unreachable": 0, "turned_green": 0,
              "regressions": 0}
    hosts = []
    changes = transitions_by_check(run)
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
    return to_document(as_run(report, baseline, extra))


def write_document(path: str, run: RunReport) -> None:
    """Write the run's JSON report to ``path`` (replaced atomically; parent directories created)."""
    write_atomically(path, json.dumps(to_document(run), indent=2) + "\n")


def write_json(
    path: str,
    report: VerifyReport,
    *,
    baseline: VerifyReport | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write :func:`to_json` to ``path`` (replaced atomically; parent directories created)."""
    write_document(path, as_run(report, baseline, extra))
