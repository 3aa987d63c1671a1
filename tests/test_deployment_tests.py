"""pytest deployment tests as the red/green gate of a rollout, over real sshd hosts, with fabric.yaml
holding only the ``deploytest`` key (``tests`` and ``pytest_args``, no ``checks``): written first, red
against what is live, green once deployed, and a rollback verified with the older release's own files."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Dict

import pytest
from onhost import DEPLOY_TO, live, locked, output, releases_on, served, snapshot, state_of
from project import Project, hello_bed

pytestmark = pytest.mark.testbed

HEALTH = """\
from deploytest.assertions import assert_http


def test_health(deploytest_host, served_by):
    assert served_by == deploytest_host.name  # a session fixture of conftest.py, per host
    assert_http(deploytest_host, "http://127.0.0.1:8000/health", status=200, contains="ok")
"""

VERSION = """\
from deploytest.assertions import assert_file


def test_version_is_{tag}(deploytest_host, deploytest_release):
    assert_file(deploytest_host, "/srv/hello/releases/" + deploytest_release + "/VERSION", contains="{version}")
"""

CONFTEST = """\
import pytest


@pytest.fixture(scope="session")
def served_by(deploytest_host):
    return deploytest_host.name
"""


@pytest.fixture
def two(make_hosts: Callable[..., Any], tmp_path: Path) -> Dict[str, Any]:
    bed = hello_bed(make_hosts, tmp_path, 2, checks=[], tests=["tests/deployment"],
                    pytest_args=["-p", "no:cacheprovider"], verify={"timeout": 3, "interval": 0.3},
                    rollout={"batches": ["100%"], "max_fail": 0, "parallel": 10})
    tests = bed["project"].root / "tests" / "deployment"
    tests.mkdir(parents=True)
    (tests / "conftest.py").write_text(CONFTEST)
    (tests / "test_health.py").write_text(HEALTH)
    return bed


def version_test(project: Project, version: str) -> str:
    """Write the test of the next release before deploying it; its test id."""
    tag = version.replace(".", "_")
    (project.root / "tests" / "deployment" / "test_version.py").write_text(VERSION.format(tag=tag, version=version))
    (project.root / "app" / "VERSION").write_text(version + "\n")
    return f"tests/deployment/test_version.py::test_version_is_{tag}"


def test_red_deploy_green_then_roll_back_with_the_older_releases_own_tests(
        two: Dict[str, Any], tmp_path: Path) -> None:
    project, bed, hosts = two["project"], two["bed"], two["hosts"]
    first = version_test(project, "1.0")
    proc = project.fab("deploy-and-verify", hosts=hosts)  # gated by tests alone: no checks configured
    assert proc.returncode == 0, output(proc)
    assert "tests: 2 collected from tests/deployment" in proc.stdout
    r1 = live(bed.hosts[0])
    for name in hosts:
        assert f"✔ {name} tests/deployment/test_health.py::test_health: new, green" in proc.stdout
    suite = json.loads(bed.hosts[0].sh(f"cat {DEPLOY_TO}/.deploytest/releases/{r1}.suite.json").stdout)
    assert suite["checks"] == [] and suite["tests"]["paths"] == ["tests/deployment"] and suite["tests"]["archive"]

    # The test of 2.0, written before the release: red against what is live, green once deployed.
    second = version_test(project, "2.0")
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    proc = project.fab("deploy-and-verify", "--json", str(report), "--junit", str(junit), hosts=hosts)
    assert proc.returncode == 0, output(proc)
    r2 = live(bed.hosts[0])
    for name in hosts:
        assert f"[{name}] baseline: 1 of 2 red: {second}" in proc.stdout
        assert f"✔ {name} {second}: red -> green" in proc.stdout
    data = json.loads(report.read_text())
    entry = next(c for c in data["hosts"][0]["checks"] if c["name"] == second)
    assert entry["kind"] == "pytest" and entry["change"] == "red -> green" and entry["before"] == "red"
    cases = {case.get("name") for case in ET.parse(junit).getroot().iter("testcase")}
    assert {f"{name} :: {second}" for name in hosts} <= cases and first not in str(cases)

    # Back to 1.0: today's files say 2.0, the files recorded with 1.0 say 1.0 and are the ones run.
    proc = project.fab("rollback", hosts=hosts)
    assert proc.returncode == 0, output(proc)
    assert f"with the suite recorded with {r1}" in proc.stdout
    assert f"{first}" in proc.stdout and second not in proc.stdout
    for host in bed.hosts:
        assert live(host) == r1 and served(host) == "ok 1.0" and state_of(host, r2) == "bad"


def test_a_red_test_rolls_a_broken_release_back_and_a_broken_test_file_is_refused(two: Dict[str, Any]) -> None:
    project, bed, hosts = two["project"], two["bed"], two["hosts"]
    version_test(project, "1.0")
    assert project.fab("deploy-and-verify", hosts=hosts).returncode == 0
    r1 = live(bed.hosts[0])

    project.set_version("1.0", broken=True)  # /health answers 500
    proc = project.fab("deploy-and-verify", hosts=hosts)
    assert proc.returncode == 1, output(proc)
    for name in hosts:
        assert (f"✘ {name} tests/deployment/test_health.py::test_health: expected pass, got http"
                " http://127.0.0.1:8000/health: expected status 200, got 500") in proc.stdout
    assert "tests/deployment/test_health.py::test_health" in proc.stderr  # named in the closing lines
    assert f"with the suite recorded with {r1}" in proc.stdout
    for host in bed.hosts:
        assert live(host) == r1 and served(host) == "ok 1.0" and not locked(host)

    project.set_version("1.0")
    (project.root / "tests" / "deployment" / "test_health.py").write_text("def test_health(deploytest_host:\n")
    before = snapshot(bed)
    proc = project.fab("deploy-and-verify", hosts=hosts)
    assert proc.returncode == 2, output(proc)
    assert "config deploytest.tests: tests/deployment/test_health.py does not collect: SyntaxError" in proc.stderr
    assert "Traceback" not in output(proc)
    assert snapshot(bed) == before and all(not locked(h) for h in bed.hosts)
    assert all(releases_on(h) == before[h.name][1] for h in bed.hosts)
