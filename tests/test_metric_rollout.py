"""Metric analysis end to end: ``fab deploy-and-verify`` over real sshd hosts, judged by a real Prometheus
that scrapes the example app's /metrics on each host while traffic flows."""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import pytest
from onhost import DEPLOY_TO, PORT, live, locked
from project import Project, hello_config
from prometheus_server import Prometheus, Traffic, start

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

ERROR_RATE = ('sum(rate(hello_http_errors_total{host="{host}"}[5s]))'
              ' / sum(rate(hello_http_requests_total{host="{host}"}[5s]))')
# by address: {address} is the host's HostName from ssh_config, as Prometheus' instance label has it
LATENCY = ('sum(rate(hello_http_request_duration_seconds_sum{instance="{address}:8000"}[3s]))'
           ' / sum(rate(hello_http_request_duration_seconds_count{instance="{address}:8000"}[3s]))')


@pytest.fixture
def fleet(make_hosts: Callable[..., Any], tmp_path: Path) -> Iterator[Dict[str, Any]]:
    """Three hosts running nothing yet, a Prometheus scraping their app port, and traffic to each app."""
    bed = make_hosts(3)
    prometheus = start(tmp_path / "prometheus", {h.name: f"{h.address}:{PORT}" for h in bed.hosts})
    traffic = Traffic([f"http://{h.address}:{PORT}/" for h in bed.hosts])
    try:
        yield {"bed": bed, "prometheus": prometheus, "hosts": bed.names, "tmp": tmp_path}
    finally:
        traffic.close()
        prometheus.close()


def project_for(fleet: Dict[str, Any], *checks: Dict[str, Any], timeout: float = 15) -> Project:
    config = hello_config(DEPLOY_TO, PORT, rollout={"batches": [1, "100%"], "max_fail": 0, "parallel": 10})
    config["hooks"]["restart"] = [f"sh bin/restart {PORT} 0.0.0.0"]  # Prometheus scrapes it from outside
    config["checks"] = config["checks"][:2] + list(checks)  # health, port and the metric checks
    config["verify"] = {"timeout": timeout, "interval": 1}
    return Project(fleet["tmp"] / "project", config, env=fleet["bed"].env(), ssh_config=fleet["bed"].ssh_config)


def release_with(project: Project, **files: str) -> None:
    for name in ("ERROR_RATE", "SLOW"):
        path = project.root / "app" / name
        if name in files:
            path.write_text(files[name] + "\n")
        elif path.exists():
            path.unlink()


def checks_of(report: Dict[str, Any], phase: str = "result") -> Dict[str, Dict[str, Any]]:
    """``host/check name`` -> that check's result in the report's ``phase``."""
    return {f"{h['host']}/{c['name']}": c for h in (report.get(phase) or {}).get("hosts", []) for c in h["checks"]}


def test_rising_error_rate_is_rolled_back_by_the_metric_check_alone(fleet: Dict[str, Any]) -> None:
    prometheus: Prometheus = fleet["prometheus"]
    metric = {"metric": {"prometheus": {"url": prometheus.url, "query": ERROR_RATE}, "max": 0.05, "count": 4,
                         "name": "error rate"}}
    info = urllib.parse.quote('hello_info{host="', safe="") + "{host}" + urllib.parse.quote('"}', safe="")
    version = {"metric": {"http_json": {"url": prometheus.url + "/api/v1/query?query=" + info,
                                        "path": "data.result.0.value.1"}, "min": 1, "name": "app info"}}
    project = project_for(fleet, metric, version)
    started = time.monotonic()
    first = project.fab("deploy-and-verify", "--json", str(fleet["tmp"] / "first.json"), hosts=fleet["hosts"])
    assert first.returncode == 0, first.stdout + first.stderr
    first_seconds = time.monotonic() - started
    before = {h.name: live(h) for h in fleet["bed"].hosts}
    results = checks_of(json.loads((fleet["tmp"] / "first.json").read_text()))
    assert len(results) == 3 * 4 and all(r["ok"] for r in results.values()), results
    assert results["web1/app info"]["observed"] == "1"  # the http_json check read Prometheus' JSON

    release_with(project, ERROR_RATE="0.5")
    project.set_version("2.0")
    started = time.monotonic()
    report_path = fleet["tmp"] / "second.json"
    junit = fleet["tmp"] / "second.xml"
    second = project.fab("deploy-and-verify", "--json", str(report_path), "--junit", str(junit),
                         hosts=fleet["hosts"])
    second_seconds = time.monotonic() - started
    out = second.stdout + second.stderr
    assert second.returncode == 1, out
    assert "error rate" in out and "rolled back" in out
    for host in fleet["bed"].hosts:
        assert live(host) == before[host.name] and not locked(host)
    report = json.loads(report_path.read_text())
    after = checks_of(report)
    canary = fleet["hosts"][0]
    assert set(after) == {f"{canary}/{n}" for n in ("health", "port 8000", "error rate", "app info")}
    assert after[f"{canary}/health"]["ok"] and after[f"{canary}/port 8000"]["ok"]  # only the metric is red
    assert not after[f"{canary}/error rate"]["ok"]
    assert "above max 0.05" in after[f"{canary}/error rate"]["observed"]
    assert after[f"{canary}/error rate"]["expected"] == "<= 0.05 (4 times in a row)"
    assert after[f"{canary}/error rate"]["kind"] == "metric"
    assert checks_of(report, "baseline")[f"{canary}/error rate"]["ok"]  # one look at the live release
    assert "error rate" in junit.read_text()
    assert checks_of(report, "rollback")[f"{canary}/error rate"]["kind"] == "metric"  # the way back, judged too

    verify_path = fleet["tmp"] / "verify.json"
    verified = project.fab("verify", "--json", str(verify_path), hosts=fleet["hosts"])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    now = checks_of(json.loads(verify_path.read_text()))
    assert {k for k in now if k.endswith("/error rate")} == {f"{h}/error rate" for h in fleet["hosts"]}
    print(f"metric rollout: first deploy {first_seconds:.1f}s, rolled back in {second_seconds:.1f}s")


def test_inconclusive_query_fails_in_ci(fleet: Dict[str, Any]) -> None:
    prometheus: Prometheus = fleet["prometheus"]
    metric = {"metric": {"prometheus": {"url": prometheus.url, "query": 'sum(no_such_metric{host="{host}"})'},
                         "max": 1, "name": "missing metric"}}  # inconclusive: pause (the default)
    project = project_for(fleet, metric, timeout=3)
    project.env["CI"] = "true"
    report_path = fleet["tmp"] / "report.json"
    proc = project.fab("deploy-and-verify", "--json", str(report_path), hosts=fleet["hosts"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = checks_of(json.loads(report_path.read_text()))[f"{fleet['hosts'][0]}/missing metric"]
    assert not result["ok"] and result["observed"] == "no value (empty result or NaN)"
    assert "no terminal to ask (CI)" in result["detail"]


def test_a_bad_query_is_an_error_that_says_why(fleet: Dict[str, Any]) -> None:
    from deploytest.checks import make_check
    from deploytest.checks.runner import run_checks
    from deploytest.config import VerifySettings
    from deploytest.hosts import LocalTarget

    check = make_check("metric", prometheus={"url": fleet["prometheus"].url, "query": "sum(rate(x[1m]"}, max=1,
                       max_errors=1)
    result = run_checks([LocalTarget()], [check], VerifySettings(timeout=5, interval=0.1)).hosts[0].results[0]
    assert not result.ok and result.attempts == 2
    assert "query failed: HTTP 400: " in result.verdict.observed and "parse error" in result.verdict.observed


def test_canary_twice_as_slow_as_the_rest_is_rolled_back_by_compare(fleet: Dict[str, Any]) -> None:
    prometheus: Prometheus = fleet["prometheus"]
    latency = {"metric": {"prometheus": {"url": prometheus.url, "query": LATENCY},
                          "compare": {"max_ratio": 1.5}, "count": 5, "name": "latency"}}  # the window is new
    project = project_for(fleet, latency)
    release_with(project, SLOW="0.05")
    first = project.fab("deploy-and-verify", hosts=fleet["hosts"])
    assert first.returncode == 0, first.stdout + first.stderr
    before = {h.name: live(h) for h in fleet["bed"].hosts}
    prometheus.wait_for('hello_http_request_duration_seconds_count > 20', 3)

    release_with(project, SLOW="0.1")
    project.set_version("2.0")
    report_path = fleet["tmp"] / "report.json"
    proc = project.fab("deploy-and-verify", "--json", str(report_path), hosts=fleet["hosts"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for host in fleet["bed"].hosts:
        assert live(host) == before[host.name]
    canary, *rest = fleet["hosts"]
    result = checks_of(json.loads(report_path.read_text()))[f"{canary}/latency"]
    assert not result["ok"] and "unswitched hosts:" in result["observed"] and "max_ratio 1.5" in result["observed"]
    mine, theirs = result["observed"].split(" (unswitched hosts: ")
    assert float(mine) > 1.5 * float(theirs.split(")")[0])  # both numbers shown
