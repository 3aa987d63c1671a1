"""Notifications and gates end to end: ``fab deploy-and-verify`` over real sshd hosts, with a real local
HTTP receiver for webhooks, the confirm URL and a metric that turns red while a batch soaks."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest
from onhost import live, locked, releases_on
from project import hello_bed

from deploytest.config import load
from deploytest.errors import ConfigError

pytestmark = pytest.mark.testbed


@pytest.fixture
def receiver() -> Iterator[Dict[str, Any]]:
    """A real HTTP server on 127.0.0.1: records POSTed JSON events; GET /confirm/yes 200, /confirm/no 403;
    GET /value/<n>/<host> answers {"v": 0} for its first n requests per host, then {"v": 1}."""
    state: Dict[str, Any] = {"events": [], "gets": {}, "lock": threading.Lock()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state["lock"]:
                state["events"].append({"path": self.path, **body})
            self.answer(200, {})

        def do_GET(self) -> None:  # noqa: N802
            with state["lock"]:
                seen = state["gets"][self.path] = state["gets"].get(self.path, 0) + 1
            if self.path.startswith("/confirm/"):
                self.answer(200 if self.path == "/confirm/yes" else 403, {})
            else:
                self.answer(200, {"v": 0 if seen <= int(self.path.split("/")[2]) else 1})

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent() -> Iterator[str]:
    """A URL whose server accepts connections and never answers (a hung webhook)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    sock.close()


@pytest.fixture
def fleet(make_hosts: Callable[..., Any], tmp_path: Path) -> Dict[str, Any]:
    return hello_bed(make_hosts, tmp_path, 3, rollout={"batches": [1, "100%"], "max_fail": 0, "parallel": 10})


def test_config_of_gates_and_notify_is_validated() -> None:
    base = {"deploy_to": "/srv/x"}
    for extra, message in [
        ({"notify": [{"webhook": "ftp://x"}]}, "notify[0].webhook: expected an http:// or https:// URL"),
        ({"notify": [{"webhook": "http://x", "on": ["deployed"]}]}, "notify[0].on: expected a list of events"),
        ({"notify": [{"webhook": "http://x", "retry": 3}]}, "notify[0].retry: unknown key"),
        ({"rollout": {"confirm": "always"}}, "rollout.confirm: expected after_canary"),
        ({"rollout": {"soak": -1}}, "rollout.soak: expected a number of seconds >= 0"),
        ({"rollout": {"confirm_url": "http://x"}}, "confirm_url: given without confirm: after_canary"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load({**base, **extra})
    settings = load({**base, "notify": [{"webhook": "http://h/x", "on": "done"}],
                     "rollout": {"soak": 5, "confirm": "after_canary", "confirm_url": "http://c/"}})
    assert settings.notify[0].on == ("done",) and settings.rollout.soak == 5.0
    assert settings.rollout.confirm_timeout == 600.0


def events(receiver: Dict[str, Any], path: str = "/hook") -> List[str]:
    return [e["event"] for e in receiver["events"] if e["path"] == path]


def test_webhooks_get_the_events_in_order_and_a_hung_one_costs_at_most_its_timeout(
        fleet: Dict[str, Any], receiver: Dict[str, Any], silent: str) -> None:
    project, hosts = fleet["project"], fleet["hosts"]
    started = time.monotonic()
    plain = project.fab("deploy-and-verify", hosts=hosts)
    plain_seconds = time.monotonic() - started
    assert plain.returncode == 0, plain.stdout + plain.stderr

    project.config["notify"] = [{"webhook": receiver["url"] + "/hook"},
                                {"webhook": silent, "on": ["started", "done"], "timeout": 2}]
    project.set_version("1.1")
    dry = project.fab("deploy-and-verify", "--dry-run", hosts=hosts)
    assert f"notify    {receiver['url']}/hook on started, rolled_back, needs_human, done (time-out 5s)" in dry.stdout
    assert events(receiver) == []  # a dry run tells nobody
    started = time.monotonic()
    good = project.fab("deploy-and-verify", hosts=hosts)
    hung_seconds = time.monotonic() - started
    assert good.returncode == 0, good.stdout + good.stderr
    assert events(receiver) == ["started", "done"]
    started_event, done = receiver["events"]
    assert started_event["hosts"] == hosts and started_event["batches"] == [[hosts[0]], hosts[1:]]
    assert done["outcome"] == "verified" and done["release"] == live(fleet["bed"].hosts[0])
    assert done["exit_code"] == 0 and {h["host"] for h in done["hosts"]} == set(hosts)  # the report's shape
    assert "notify: started -> " in good.stderr and "(the rollout is not affected)" in good.stderr
    # the hung webhook ran beside the rollout: the run waited at most its 2s time-out (plus 1s) at the end
    assert hung_seconds < plain_seconds + 3 + 3, (plain_seconds, hung_seconds)  # 2s + 1s, and slack for load
    print(f"notify: plain deploy {plain_seconds:.1f}s, with a hung webhook {hung_seconds:.1f}s")

    project.set_version("2.0", broken=True, verify_timeout=2)
    bad = project.fab("deploy-and-verify", hosts=hosts)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert events(receiver) == ["started", "done", "started", "rolled_back"]
    assert receiver["events"][-1]["outcome"] == "rolled back"


def test_confirm_gate_refused_rolls_back_the_canary(fleet: Dict[str, Any], receiver: Dict[str, Any]) -> None:
    project, hosts, bed = fleet["project"], fleet["hosts"], fleet["bed"]
    first = project.fab("deploy-and-verify", hosts=hosts)
    assert first.returncode == 0, first.stdout + first.stderr
    before = {h.name: (live(h), releases_on(h)) for h in bed.hosts}
    project.config["rollout"] = {"batches": [1, "100%"], "confirm": "after_canary",
                                 "confirm_url": receiver["url"] + "/confirm/no", "confirm_timeout": 3}
    project.set_version("1.1")
    started = time.monotonic()
    proc = project.fab("deploy-and-verify", hosts=hosts)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert time.monotonic() - started < 60
    assert "not confirmed after the canary" in out and "HTTP 403" in out
    assert receiver["gets"]["/confirm/no"] >= 2  # polled until the time-out
    for host in bed.hosts:
        assert live(host) == before[host.name][0] and not locked(host)
    for host in bed.hosts[1:]:
        assert releases_on(host) == before[host.name][1]  # never switched

    project.config["rollout"]["confirm_url"] = receiver["url"] + "/confirm/yes"
    project.write(project.config)
    proc = project.fab("deploy-and-verify", "--dry-run", hosts=hosts)
    assert "confirm   after the canary: poll " in proc.stdout, proc.stdout
    proc = project.fab("deploy-and-verify", hosts=hosts)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "confirmed: " in proc.stdout


def test_a_batch_that_turns_red_while_soaking_is_rolled_back(fleet: Dict[str, Any], receiver: Dict[str, Any]) -> None:
    project, hosts, bed = fleet["project"], fleet["hosts"], fleet["bed"]
    first = project.fab("deploy-and-verify", hosts=hosts)
    assert first.returncode == 0, first.stdout + first.stderr
    before = {h.name: live(h) for h in bed.hosts}
    # green for its first three looks on each host, red after: the canary's verify looks once, the soak more
    project.config["checks"].append({"metric": {"http_json": {"url": receiver["url"] + "/value/3/{host}", "path": "v"},
                                                "max": 0.5, "name": "late failure"}})
    project.config["rollout"] = {"batches": [1, "100%"], "soak": 10}
    project.config["verify"] = {"timeout": 5, "interval": 0.5}
    project.set_version("1.1")
    dry = project.fab("deploy-and-verify", "--dry-run", hosts=hosts)
    assert "soak      re-verify each batch for 10s" in dry.stdout and "metric    late failure" in dry.stdout
    proc = project.fab("deploy-and-verify", hosts=hosts)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "red while soaking" in out and "late failure" in out
    assert receiver["gets"].get(f"/value/3/{hosts[1]}", 0) <= 1  # the next batch never went live
    for host in bed.hosts:
        assert live(host) == before[host.name] and not locked(host)


def test_background_analysis_rolls_back_everything_switched(fleet: Dict[str, Any], receiver: Dict[str, Any]) -> None:
    project, hosts, bed = fleet["project"], fleet["hosts"], fleet["bed"]
    first = project.fab("deploy-and-verify", hosts=hosts)
    assert first.returncode == 0, first.stdout + first.stderr
    before = {h.name: live(h) for h in bed.hosts}
    # two green looks per host (the baseline's and its batch's verify), red after: only the background sees it
    project.config["checks"].append({"metric": {"http_json": {"url": receiver["url"] + "/value/2/{host}", "path": "v"},
                                                "max": 0.5, "name": "late failure"}})
    project.config["rollout"] = {"batches": [1], "analysis": "background"}
    project.config["verify"] = {"timeout": 5, "interval": 0.5}
    project.set_version("1.1")
    proc = project.fab("deploy-and-verify", hosts=hosts)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "background analysis after" in out and "late failure" in out
    assert receiver["gets"][f"/value/2/{hosts[0]}"] >= 3  # the canary was looked at again, in the background
    for host in bed.hosts:
        assert live(host) == before[host.name] and not locked(host)


def test_inconclusive_metric_pauses_for_the_person_at_the_terminal(make_hosts: Callable[..., Any], tmp_path: Path,
                                                                   receiver: Dict[str, Any]) -> None:
    import os
    import pty
    import subprocess

    one = hello_bed(make_hosts, tmp_path, 1)
    project = one["project"]
    project.config["checks"].append({"metric": {"http_json": {"url": receiver["url"] + "/value/9/{host}",
                                                              "path": "absent"}, "max": 1, "name": "quiet"}})
    project.config["verify"] = {"timeout": 2, "interval": 0.5}
    project.write(project.config)
    master, slave = pty.openpty()
    env = {k: v for k, v in project.env.items() if k != "CI"}
    proc = subprocess.Popen(project.command("deploy-and-verify", hosts=one["hosts"]), cwd=project.root, env=env,
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 120
    answered = False
    while proc.poll() is None or not seen.endswith(b"\n"):
        assert time.monotonic() < deadline, seen.decode(errors="replace")
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
        if not answered and b"Go on as if green? [y/N]" in seen:
            os.write(master, b"y\n")
            answered = True
    proc.wait(30)
    os.close(master)
    out = seen.decode(errors="replace")
    assert answered, out
    assert proc.returncode == 0, out
    assert "quiet: inconclusive (no value (empty result or NaN))" in out


def test_confirm_at_the_prompt_goes_on_only_on_yes(tmp_path: Path) -> None:
    from deploytest import gates
    from deploytest.console import Console
    from deploytest.errors import ChecksFailed
    from deploytest.hosts import LocalTarget
    from deploytest.rollout import Rollout

    settings = load({"deploy_to": str(tmp_path / "srv"),
                     "rollout": {"batches": [1, "100%"], "confirm": "after_canary"}})
    run = Rollout(settings, [LocalTarget("a"), LocalTarget("b")], Console())
    run.switched["a"] = None
    asked: List[str] = []
    gates.confirm(run, ask=lambda prompt: asked.append(prompt) or "yes")
    assert asked == ["Go on with the other 1 host(s)? [y/N] "]
    with pytest.raises(ChecksFailed, match="not confirmed after the canary \\(answered 'nothing'\\)"):
        gates.confirm(run, ask=lambda prompt: "\n")
