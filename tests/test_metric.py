"""The ``metric`` check without hosts: config, placeholders, the judge, the outcomes over attempts, and
measuring against a real local HTTP JSON endpoint through the runner."""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any, Dict, Iterator, List

import pytest

from deploytest import analysis
from deploytest.checks import make_check, parse_check
from deploytest.checks.base import ProbeOutput, Verdict
from deploytest.checks.metric_condition import parse_condition
from deploytest.checks.metric_sources import fill_promql, fill_url, prometheus_value
from deploytest.checks.runner import run_checks
from deploytest.config import VerifySettings
from deploytest.errors import ConfigError
from deploytest.hosts import LocalTarget


def metric(**params: Any) -> Any:
    return parse_check({"metric": params}, "config deploytest.checks[0]")


PROM = {"url": "http://127.0.0.1:9/", "query": 'sum(rate(errors{host="{host}"}[1m]))'}


def measured(value: Any, rest: Any = "absent") -> ProbeOutput:
    found: Dict[str, Any] = {"value": value, "query": "q"}
    if rest != "absent":
        found["rest"] = rest
    return ProbeOutput(0, stdout=json.dumps(found).encode())


@pytest.mark.parametrize("params, message", [
    ({"max": 1}, "exactly one of prometheus"),
    ({"prometheus": PROM, "http_json": {"url": "http://x/", "path": "a"}, "max": 1}, "exactly one of"),
    ({"prometheus": {"url": "http://x/"}, "max": 1}, "prometheus.query: missing"),
    ({"prometheus": {**PROM, "step": 1}, "max": 1}, "prometheus.step: unknown key"),
    ({"prometheus": {**PROM, "url": "ftp://x"}, "max": 1}, "expected an http:// or https:// URL"),
    ({"prometheus": PROM}, "at least one of min, max, condition or compare"),
    ({"prometheus": PROM, "max": "low"}, "metric.max: expected a number"),
    ({"prometheus": PROM, "condition": "__import__('os')"}, "metric.condition"),
    ({"prometheus": PROM, "condition": "result.real > 1"}, "Attribute is not allowed"),
    ({"prometheus": PROM, "compare": {"max_ratio": -1}}, "compare.max_ratio: expected a number >= 0"),
    ({"prometheus": PROM, "compare": {"ratio": 2}}, "compare.ratio: unknown key"),
    ({"prometheus": PROM, "max": 1, "inconclusive": "ignore"}, "inconclusive: expected one of pause, red, fail"),
    ({"prometheus": PROM, "max": 1, "count": 0}, "count: expected a whole number >= 1"),
    ({"prometheus": "http://x", "max": 1}, "metric.prometheus: expected a mapping"),
])
def test_config_is_refused_with_one_line_naming_the_key(params: Dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        metric(**params)
    assert message in caught.value.message
    assert caught.value.message.startswith("config deploytest.checks[0].metric")
    assert "\n" not in caught.value.message


def test_placeholders_are_encoded_for_urls_and_escaped_for_promql() -> None:
    assert fill_url("http://m/{host}/x?a={address}", "web 1/a", "10.0.0.1") == "http://m/web%201%2Fa/x?a=10.0.0.1"
    assert fill_promql('up{host="{host}"}', 'we"b\\1', "a") == 'up{host="we\\"b\\\\1"}'
    # PromQL's own braces are left alone: only the two placeholders are replaced
    assert fill_promql('sum(up{job="x"})', "h", "a") == 'sum(up{job="x"})'


def test_conditions_are_a_small_safe_language() -> None:
    from deploytest.checks.metric_condition import evaluate_condition

    assert evaluate_condition(parse_condition("result < 0.05 and result >= 0"), 0.01)
    assert not evaluate_condition(parse_condition("abs(result - 1) < 0.1"), 0.5)
    assert evaluate_condition(parse_condition("not result > 2"), 1)
    for bad in ("open('x')", "result.__class__", "[1]", "'a' < result", "x > 1", "lambda: 1"):
        with pytest.raises(ValueError):
            parse_condition(bad)


def test_prometheus_answers_are_read_as_one_number_or_none() -> None:
    vector = {"status": "success", "data": {"resultType": "vector",
                                             "result": [{"metric": {}, "value": [1.0, "0.25"]}]}}
    assert prometheus_value(vector) == 0.25
    assert prometheus_value({"status": "success", "data": {"resultType": "vector", "result": []}}) is None
    assert prometheus_value({"status": "success", "data": {"resultType": "scalar", "result": [1, "NaN"]}}) is None
    two = {"status": "success", "data": {"resultType": "vector", "result": [vector["data"]["result"][0]] * 2}}
    with pytest.raises(ValueError, match="2 series"):
        prometheus_value(two)
    with pytest.raises(ValueError, match="bad_data"):
        prometheus_value({"status": "error", "error": "bad_data"})


def test_the_judge_has_four_outcomes() -> None:
    check = metric(prometheus=PROM, max=0.05)
    assert check.judge(measured(0.01)).ok
    red = check.judge(measured(0.2))
    assert (red.ok, red.outcome) == (False, "red") and "above max 0.05" in red.observed
    assert check.judge(measured(None)).outcome == "inconclusive"
    error = check.judge(ProbeOutput(1, stderr=b"connection refused"))
    assert error.outcome == "error" and "connection refused" in error.observed


def test_compare_shows_both_numbers() -> None:
    check = metric(prometheus=PROM, compare={"max_ratio": 1.5})
    red = check.judge(measured(0.4, 0.2))
    assert not red.ok and "0.4 (unswitched hosts: 0.2)" in red.observed and "2x" in red.observed
    assert check.judge(measured(0.25, 0.2)).ok
    lonely = check.judge(measured(0.4, None))
    assert lonely.ok and "not compared" in lonely.detail
    increase = metric(prometheus=PROM, compare={"max_increase": 0.01})
    assert not increase.judge(measured(0.05, 0.01)).ok and increase.judge(measured(0.015, 0.01)).ok


def run_conclude(check: Any, outputs: List[ProbeOutput], last_at: int = 99) -> List[Any]:
    """What conclude says after each attempt (``last_at``: the attempt the deadline comes at)."""
    seen: List[Verdict] = []
    out = []
    for n, output in enumerate(outputs, 1):
        seen.append(check.evaluate(output))
        out.append(check.conclude(seen, last=n == last_at))
    return out


def test_errors_are_tolerated_up_to_max_errors_in_a_row() -> None:
    check = metric(prometheus=PROM, max=1, max_errors=2)
    fail = ProbeOutput(1, stderr=b"timed out")
    steps = run_conclude(check, [fail, fail, measured(0.1), fail, fail, fail])
    assert [final for _v, final in steps] == [False, False, False, False, False, True]
    assert steps[2][0].ok
    assert "3 failed queries in a row (max_errors 2)" in steps[-1][0].detail


def test_inconclusive_fail_is_final_red_and_pause_fails_without_a_terminal(monkeypatch: Any) -> None:
    verdict, final = run_conclude(metric(prometheus=PROM, max=1, inconclusive="fail"), [measured(None)])[0]
    assert final and not verdict.ok
    monkeypatch.setenv("CI", "true")
    steps = run_conclude(metric(prometheus=PROM, max=1), [measured(None), measured(None)], last_at=2)
    assert steps[0][1] is False  # re-measured while time is left
    verdict, final = steps[1]
    assert final and not verdict.ok and "no terminal to ask (CI)" in verdict.detail
    verdict, final = run_conclude(metric(prometheus=PROM, max=1), [measured(None)], last_at=1)[0]
    assert final and not verdict.ok and verdict.detail == "inconclusive at a single look"  # baseline: nobody asked


def test_count_needs_greens_in_a_row_except_in_a_one_shot_verification() -> None:
    check = metric(prometheus=PROM, max=1, count=3)
    steps = run_conclude(check, [measured(0.1), measured(0.1), measured(2), measured(0.1), measured(0.1),
                                 measured(0.1)])
    assert [v.ok for v, _f in steps] == [False, False, False, False, False, True]
    assert "green 2 of 3" in steps[1][0].detail
    assert run_conclude(check, [measured(0.1)], last_at=1)[0][0].ok  # the baseline: one look


def test_headers_are_secret_in_every_output() -> None:
    check = metric(prometheus={"url": "http://user:hunter2@127.0.0.1:9/", "query": "up"}, max=1,
                   headers={"Authorization": "Bearer s3cret-token"})
    assert check.to_dict()["params"]["headers"] == {"Authorization": "***"}
    assert set(check.secret_values()) == {"Bearer s3cret-token", "hunter2"}
    with pytest.raises(ConfigError) as caught:
        metric(prometheus=PROM, max=1, headers={"Authorization": ["Bearer s3cret-token"]})
    assert "s3cret" not in caught.value.message


@pytest.fixture
def json_endpoint() -> Iterator[Dict[str, Any]]:
    """A real HTTP server on 127.0.0.1 answering JSON per path; records the headers it got."""
    state: Dict[str, Any] = {"answers": {}, "headers": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            state["headers"].append(dict(self.headers))
            answer = state["answers"].get(self.path.split("?")[0])
            body = json.dumps(answer).encode()
            self.send_response(200 if answer is not None else 500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def test_http_json_metric_through_the_runner(json_endpoint: Dict[str, Any]) -> None:
    json_endpoint["answers"]["/stats/local"] = {"data": {"error_rate": 0.2}}
    check = make_check("metric", http_json={"url": json_endpoint["url"] + "/stats/{host}", "path": "data.error_rate"},
                       max=0.05, headers={"Authorization": "Bearer s3cret-token"}, name="error rate")
    started = time.monotonic()
    report = run_checks([LocalTarget()], [check], VerifySettings(timeout=1, interval=0.2))
    assert time.monotonic() - started < 5
    result = report.hosts[0].results[0]
    assert not result.ok and result.attempts >= 3  # red, re-measured until the deadline
    assert "0.2: above max 0.05" in result.verdict.observed
    assert json_endpoint["headers"][0]["Authorization"] == "Bearer s3cret-token"
    assert "s3cret" not in json.dumps(report.to_dict())
    assert report.hosts[0].sessions == 0  # nothing went to the host

    json_endpoint["answers"]["/stats/local"] = {"data": {"error_rate": "0.01"}}
    assert run_checks([LocalTarget()], [check], VerifySettings(timeout=1, interval=0.2)).ok


def test_header_tokens_can_come_from_the_environment(json_endpoint: Dict[str, Any], monkeypatch: Any) -> None:
    json_endpoint["answers"]["/v"] = {"v": "token is env-t0ken"}
    check = make_check("metric", http_json={"url": json_endpoint["url"] + "/v", "path": "v"}, max=1,
                       headers={"Authorization": "Bearer {env:METRIC_TOKEN}"})
    unset = run_checks([LocalTarget()], [check], VerifySettings(timeout=0, interval=0.1)).hosts[0].results[0]
    assert not unset.ok and "environment variable METRIC_TOKEN (in headers) is not set" in unset.verdict.observed
    monkeypatch.setenv("METRIC_TOKEN", "env-t0ken")
    result = run_checks([LocalTarget()], [check], VerifySettings(timeout=0, interval=0.1)).hosts[0].results[0]
    assert json_endpoint["headers"][-1]["Authorization"] == "Bearer env-t0ken"
    assert "env-t0ken" not in json.dumps(result.to_dict())  # the value is redacted wherever it shows up
    assert "could not convert string to float: 'token is ***'" in result.verdict.observed


def test_a_metric_runs_beside_the_probes_in_the_same_attempt(json_endpoint: Dict[str, Any]) -> None:
    json_endpoint["answers"]["/v"] = {"v": 1}
    checks = [make_check("metric", http_json={"url": json_endpoint["url"] + "/v", "path": "v"}, min=1),
              make_check("command", run="sleep 0.5; echo ok", stdout="ok")]
    started = time.monotonic()
    report = run_checks([LocalTarget()], checks, VerifySettings(timeout=5, interval=0.2))
    assert report.ok and report.hosts[0].sessions == 1
    assert time.monotonic() - started < 2.5  # measured during the probe session, not after it


def test_unreachable_source_is_an_error_then_red(json_endpoint: Dict[str, Any]) -> None:
    check = make_check("metric", http_json={"url": json_endpoint["url"] + "/missing", "path": "v"}, max=1,
                       max_errors=1)
    result = run_checks([LocalTarget()], [check], VerifySettings(timeout=10, interval=0.1)).hosts[0].results[0]
    assert not result.ok and result.attempts == 2  # given up after max_errors, not at the deadline
    assert "HTTP 500" in result.verdict.observed and "max_errors 1" in result.verdict.detail


def test_compare_measures_the_unswitched_hosts_at_the_same_time(json_endpoint: Dict[str, Any]) -> None:
    json_endpoint["answers"].update({"/lat/canary": {"p": 0.4}, "/lat/rest1": {"p": 0.2}, "/lat/rest2": {"p": 0.2}})
    check = make_check("metric", http_json={"url": json_endpoint["url"] + "/lat/{host}", "path": "p"},
                       compare={"max_ratio": 1.5})
    settings = VerifySettings(timeout=0, interval=0.1)
    with analysis.comparing([LocalTarget("rest1"), LocalTarget("rest2"), LocalTarget("canary")]):
        result = run_checks([LocalTarget("canary")], [check], settings).hosts[0].results[0]
    assert not result.ok and "0.4 (unswitched hosts: 0.2)" in result.verdict.observed
    alone = run_checks([LocalTarget("canary")], [check], settings).hosts[0].results[0]
    assert alone.ok and "not compared" in alone.verdict.detail


PAUSE_SCRIPT = """
import json, sys
from deploytest.checks import make_check
from deploytest.checks.runner import run_checks
from deploytest.config import VerifySettings
from deploytest.hosts import LocalTarget
check = make_check("metric", http_json={"url": sys.argv[1], "path": "missing"}, max=1, name="quiet metric")
result = run_checks([LocalTarget()], [check], VerifySettings(timeout=0.5, interval=0.2)).hosts[0].results[0]
print("RESULT", json.dumps([result.ok, result.verdict.detail]), flush=True)
"""


@pytest.mark.parametrize("answer, ok", [("y", True), ("n", False)])
def test_inconclusive_pause_asks_at_a_terminal(json_endpoint: Dict[str, Any], answer: str, ok: bool) -> None:
    import os
    import pty
    import subprocess
    import sys

    json_endpoint["answers"]["/q"] = {"other": 1}
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    proc = subprocess.Popen([sys.executable, "-c", PAUSE_SCRIPT, json_endpoint["url"] + "/q"],
                            stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 20
    answered = False
    while b"RESULT" not in seen or not seen.rstrip().endswith(b"]"):
        assert time.monotonic() < deadline, seen
        try:
            seen += os.read(master, 4096)
        except OSError:
            break
        if not answered and b"[y/N]" in seen:
            assert b"quiet metric: inconclusive (no value (empty result or NaN))" in seen
            os.write(master, answer.encode() + b"\n")
            answered = True
    proc.wait(10)
    os.close(master)
    assert answered, seen
    verdict = json.loads(seen.split(b"RESULT", 1)[1].strip().splitlines()[0])
    assert verdict[0] is ok
    assert ("accepted at the terminal" if ok else "refused at the terminal") in verdict[1]
