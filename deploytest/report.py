"""The facts of a run, one set for every output: red/green transitions against a baseline, what each
host went through, and the run's outcome. Pure data over :class:`~deploytest.checks.runner.VerifyReport`;
secrets were redacted when the report was made.

The terminal text is :mod:`deploytest.report_text`, the JSON document :mod:`deploytest.report_json`, the
JUnit XML :mod:`deploytest.report_junit`; all read the same facts.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from .checks.runner import CheckResult, HostReport, VerifyReport


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
            "before": state(self.before),
            "after": state(self.after),
            "change": self.label,
            "regression": self.regression,
            "before_observed": self.before_observed,
            "after_observed": self.after_observed,
        }


def state(ok: bool | None) -> str:
    """``green``, ``red``, or ``unknown`` when a check was not judged."""
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


def transitions_by_check(run: RunReport) -> dict[tuple[str, str], Transition]:
    """Each ``(host, check)`` of the result, against the baseline (none without a baseline)."""
    if run.baseline is None or run.result is None:
        return {}
    return {(t.host, t.check): t for t in transitions(run.baseline, run.result)}


def as_run(report: VerifyReport, baseline: VerifyReport | None, extra: Mapping[str, Any] | None) -> RunReport:
    """The run report of a verification, against ``baseline``; ``extra`` may name the ``task`` and add
    ``release`` and ``outcome``."""
    extra = dict(extra or {})
    run = verify_run(report, str(extra.get("task") or "verify"))
    return dataclasses.replace(
        run, baseline=baseline,
        outcome=str(extra.get("outcome") or run.outcome),
        release=str(extra["release"]) if extra.get("release") else None,
    )


def write_atomically(path: str, text: str) -> None:
    """Write a report file: replaced atomically, parent directories created, readable by all."""
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
