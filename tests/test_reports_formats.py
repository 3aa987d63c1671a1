"""The JSON and JUnit reports as their consumers read them: pure, no host.

JUnit: Jenkins' junit plugin (classname split at the last dot, output trimmed to 500 characters at
each end of a passing case and 50,000 of a failing one), GitLab's parser (cases keyed by classname +
name, the failure's element text shown, 30 MB and 500,000 cases at most) and the Ant junit-10.xsd.
JSON: the versioned schema shipped in the package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest
from reports_check import check_json, check_junit

from deploytest import report as rpt
from deploytest import report_json, report_junit
from deploytest.checks import make_check
from deploytest.checks.base import Verdict
from deploytest.checks.runner import CheckResult, HostReport, VerifyReport

#: Parameters of a real check of each kind the reports below show.
PARAMS: Dict[str, Dict[str, Any]] = {
    "http": {"url": "http://127.0.0.1:8000/health"},
    "port": {"port": 8000},
    "file": {"path": "/srv/app/current/VERSION"},
    "command": {"run": "app --version"},
    "process": {"pattern": "app"},
}


def check(name: str, ok: bool, *, kind: str = "http", observed: str = "200", detail: str = "",
          expected: str = "status 200") -> CheckResult:
    verdict = Verdict(ok, expected, observed, detail)
    return CheckResult(make_check(kind, name=name, **PARAMS[kind]), verdict, attempts=3, seconds=1.5)


def verification(hosts: Dict[str, List[CheckResult]], errors: Dict[str, str] | None = None) -> VerifyReport:
    return VerifyReport([HostReport(h, results, (errors or {}).get(h), seconds=1.0) for h, results in hosts.items()],
                        started="2026-12-02T03:00:00+00:00", seconds=2.0)


BASELINE = verification({
    "web1.example.com": [check("health", True), check("port 8000", True, kind="port", observed="listening")],
    "web2.example.com": [check("health", True), check("port 8000", True, kind="port", observed="listening")],
})
AFTER = verification({
    "web1.example.com": [check("health", True), check("port 8000", True, kind="port", observed="listening")],
    "web2.example.com": [check("health", False, observed="500", detail='body: "database unreachable"'),
                         check("port 8000", True, kind="port", observed="listening")],
})


def rolled_back() -> rpt.RunReport:
    return rpt.RunReport(
        task="deploy-and-verify", outcome="rolled back", exit_code=1,
        hosts=[rpt.HostFacts("web1.example.com", "rolled back", "20261201", "20261201"),
               rpt.HostFacts("web2.example.com", "rolled back", "20261201", "20261201",
                             "verify: health: expected status 200, got 500")],
        result=AFTER, baseline=BASELINE, release="20261202", label="v1.2", source="/build/app-1.2.tar.gz",
        error="deploy of 20261202 failed; 2 switched host(s) rolled back", started="2026-12-02T03:00:00+00:00",
        seconds=12.5)


def write(tmp_path: Path, run: rpt.RunReport) -> tuple[Path, Path]:
    xml, doc = tmp_path / "r.xml", tmp_path / "r.json"
    report_junit.write_run_junit(str(xml), run)
    report_json.write_document(str(doc), run)
    return xml, doc


def test_junit_of_a_rolled_back_rollout_reads_as_jenkins_and_gitlab_show_it(tmp_path: Path) -> None:
    xml, doc = write(tmp_path, rolled_back())
    parsed = check_junit(xml)
    suites = {s.name: s for s in parsed}
    assert list(suites) == ["web1.example.com", "web2.example.com"]
    web2 = suites["web2.example.com"]
    assert web2._elem.get("hostname") == "web2.example.com"
    cases = {c.name: c for c in web2}
    # Jenkins splits at the last dot: package "deploytest", class the whole host name
    assert {c.classname for c in web2} == {"deploytest.web2_example_com"}
    health = cases["web2.example.com :: health"]
    failure = health.result[0]
    assert failure.type == "http" and failure.message.startswith("expected status 200, got 500")
    body = failure.text
    assert "expected: status 200" in body and "observed: 500" in body and "database unreachable" in body
    assert "baseline: green (200); change: green -> red" in body
    rollout = cases["web2.example.com :: deploy-and-verify"].result[0]
    assert "rolled back: live before 20261201, after 20261201" in rollout.text
    assert not cases["web2.example.com :: port 8000"].result
    assert (int(parsed.failures), int(parsed.errors)) == (3, 0)  # health, and each host's rollback

    document = check_json(doc)
    assert document["version"] == 1 and document["exit_code"] == 1 and document["label"] == "v1.2"
    by_host = {h["host"]: h for h in document["hosts"]}
    entry = by_host["web2.example.com"]["checks"][0]
    assert (entry["before"], entry["after"], entry["change"], entry["regression"]) == ("green", "red",
                                                                                      "green -> red", True)
    assert by_host["web1.example.com"]["live_after"] == "20261201"
    assert document["summary"]["regressions"] == 1


def test_case_names_are_unique_per_host_and_output_is_trimmed_as_jenkins_keeps_it(tmp_path: Path) -> None:
    long = "x" * 3000
    after = verification({"db.internal": [check("same", True, observed=long), check("same", True),
                                          check("same", False, observed="y" * 200_000)]})
    xml, _ = write(tmp_path, rpt.verify_run(after))
    cases = list(next(iter(check_junit(xml))))
    assert [c.name for c in cases] == ["db.internal :: same", "db.internal :: same (2)", "db.internal :: same (3)"]
    passing_out = cases[0]._elem.find("system-out").text
    assert len(passing_out) < 1200 and "characters trimmed" in passing_out
    failing = cases[2].result[0].text
    assert 100_000 <= len(failing) < 100_200 and "characters trimmed" in failing


def test_a_huge_run_becomes_a_summary_gitlab_accepts(tmp_path: Path) -> None:
    kinds = ["http", "port", "file", "command", "process"]
    green, red = (verification({"t": [check(f"{kinds[j % 5]} {j}", ok or j != 3, kind=kinds[j % 5], observed="o" * 40)
                                      for j in range(30)]}).hosts[0].results for ok in (True, False))
    hosts = {f"web{i}.example.com": red if i == 7 else green for i in range(10_000)}
    run = rpt.verify_run(VerifyReport([HostReport(name, list(results), seconds=1.0)
                                       for name, results in hosts.items()], started="2026-12-02T03:00:00+00:00"))
    text = report_junit.run_junit(run)
    assert len(text.encode()) < 30 * 1024 * 1024
    assert text.count("<testcase ") == 10_000 * 5 < 500_000  # one case per host and check kind
    assert 'name="web7.example.com :: command checks (6)"' in text
    assert "1 of 6 command checks red: command 3" in text
    small = rpt.verify_run(VerifyReport([HostReport(name, list(results)) for name, results in list(hosts.items())[:8]]))
    path = tmp_path / "summary.xml"
    path.write_text(report_junit.run_junit(small, max_cases=10))
    parsed = check_junit(path)
    assert sum(1 for s in parsed for _ in s) == 8 * 5


def test_verify_json_keeps_the_keys_pipelines_read(tmp_path: Path) -> None:
    path = tmp_path / "verify.json"
    report_json.write_json(str(path), AFTER)
    document = check_json(path)
    assert (document["task"], document["outcome"], document["exit_code"], document["ok"]) == ("verify", "red", 1,
                                                                                            False)
    assert [h["ok"] for h in document["hosts"]] == [True, False]
    assert document["hosts"][1]["checks"][0]["observed"] == "500"


def test_an_unreachable_host_is_an_error_case_and_exit_3(tmp_path: Path) -> None:
    after = verification({"web1": [check("health", True)], "web2": []}, errors={"web2": "connection refused"})
    xml, doc = write(tmp_path, rpt.verify_run(after))
    parsed = check_junit(xml)
    assert int(parsed.errors) == 1
    document = check_json(doc)
    assert document["exit_code"] == 3 and document["hosts"][1]["status"] == "unreachable"


@pytest.mark.parametrize("hosts", [[], ["web1", "web2"]])
def test_a_refusal_says_what_was_refused(tmp_path: Path, hosts: List[str]) -> None:
    run = rpt.refused_run("deploy-and-verify", "preflight failed; nothing was changed on any host:\n  web2: lock held",
                          hosts, refused=["web2"], next_step="fab -H web2 status")
    xml, doc = write(tmp_path, run)
    parsed = check_junit(xml)
    assert int(parsed.errors) == (1 if hosts else 1)
    text = xml.read_text()
    assert "lock held" in text and "next: fab -H web2 status" in text
    document = check_json(doc)
    assert document["exit_code"] == 2 and document["outcome"] == "refused"
    assert document["error"]["message"].startswith("preflight failed")
    assert [h["status"] for h in document["hosts"]] == (["unchanged", "refused"] if hosts else [])


def test_the_schema_is_shipped_and_says_its_version() -> None:
    schema = report_json.report_schema()
    assert schema["properties"]["version"] == {"const": report_json.REPORT_VERSION}
    assert json.dumps(schema)  # plain JSON
