"""pytest deployment tests as a verification suite, on this machine (no SSH): config, preflight
refusals, verdicts, "eventually" for the red ones only, and the files recorded with a release."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deploytest.config import VerifySettings, load, with_suite
from deploytest.errors import ConfigError
from deploytest.hosts import LocalTarget
from deploytest.pytest_suite import collect, deployment_tests_verifier
from deploytest.suite_files import snapshot
from deploytest.verifiers import suite_verifier


def settings_for(root: Path, **extra: Any) -> Any:
    data = {"deploy_to": str(root / "srv"), "tests": ["tests/deployment"], **extra}
    return load(data, base_dir=str(root))


def write_tests(root: Path, text: str, name: str = "test_app.py") -> Path:
    path = root / "tests" / "deployment" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def refused(settings: Any) -> str:
    with pytest.raises(ConfigError) as info:
        collect(settings)
    assert info.value.exit_code == 2
    message = info.value.message
    assert "\n" not in message and message.endswith("Nothing was changed."), message
    return message


@pytest.mark.parametrize("data, words", [
    ({"tests": 3}, "deploytest.tests: expected a list of strings"),
    ({"tests": ["/abs/tests"]}, "deploytest.tests: expected files, directories or node ids inside"),
    ({"tests": ["../elsewhere"]}, "(relative, no '..')"),
    ({"tests": ["t"], "pytest_args": "-x"}, None),
    ({"tests": ["t"], "pytest_args": [1]}, "deploytest.pytest_args: expected a list of strings"),
])
def test_config_keys_are_validated(data: dict[str, Any], words: str | None) -> None:
    if words is None:
        assert load({"deploy_to": "/srv/a", **data}).tests is not None
        return
    with pytest.raises(ConfigError) as info:
        load({"deploy_to": "/srv/a", **data})
    assert words in info.value.message and "\n" not in info.value.message


def test_recorded_suite_reads_old_lists_and_refuses_tests_without_files() -> None:
    settings = load({"deploy_to": "/srv/a", "checks": [{"port": 80}], "tests": ["t"]})
    assert json.loads(settings.suite) == {"checks": [{"port": 80}],
                                          "tests": {"paths": ["t"], "pytest_args": []}}
    old = with_suite(settings, '[{"port": 8000}]')  # recorded before tests existed: checks only
    assert [c.name for c in old.checks] == ["port 8000"] and old.tests is None
    with pytest.raises(ConfigError, match="tests without their recorded files"):
        with_suite(settings, settings.suite)
    with pytest.raises(ConfigError, match="unknown key"):
        with_suite(settings, '{"checks": [], "extra": 1}')


def test_a_file_that_does_not_collect_a_missing_fixture_and_no_tests_are_refused(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    assert "file or directory not found" in refused(settings)
    write_tests(tmp_path, "def test_broken(:\n    pass\n")
    assert "tests/deployment/test_app.py does not collect: SyntaxError" in refused(settings)
    write_tests(tmp_path, "import no_such_module_here\n")
    assert "ModuleNotFoundError: No module named 'no_such_module_here'" in refused(settings)
    write_tests(tmp_path, "def test_x(no_such_fixture):\n    pass\n")
    assert "test_app.py::test_x: fixture 'no_such_fixture' not found" in refused(settings)
    write_tests(tmp_path, "def helper():\n    pass\n")
    assert "no tests collected from tests/deployment" in refused(settings)
    write_tests(tmp_path, "def test_x():\n    pass\n")
    assert "unrecognized arguments: --no-such-option" in refused(settings_for(tmp_path,
                                                                            pytest_args=["--no-such-option"]))
    assert collect(settings) == ["tests/deployment/test_app.py::test_x"]  # test ids: from the fabfile's dir


def test_verdicts_name_what_a_test_raised_and_only_red_tests_run_again(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_tests(tmp_path, f"""
import pytest
from pathlib import Path
from deploytest.assertions import assert_file

RUNS = Path({str(runs)!r})

def ran(name):
    with RUNS.open("a") as f:
        f.write(name + "\\n")
    return RUNS.read_text().split().count(name)

@pytest.fixture(scope="session")
def once_per_session():
    return ran("session")

def test_green(deploytest_host, once_per_session):
    ran("green")
    print("kept off the console")
    assert deploytest_host.run("true").ok

def test_green_on_third(deploytest_host):
    assert ran("third") >= 3, "not yet"

def test_raises():
    ran("raises")
    {{}}["key"]

def test_file(deploytest_host, deploytest_release):
    assert deploytest_release is None
    assert_file(deploytest_host, {str(tmp_path / "absent")!r})
""")
    settings = settings_for(tmp_path)
    report = deployment_tests_verifier(settings)([LocalTarget()], VerifySettings(timeout=1.5, interval=0.05), [])
    host = report.hosts[0]
    by = {r.name.split("::")[-1]: r for r in host.results}
    assert list(by) == ["test_green", "test_green_on_third", "test_raises", "test_file"]
    assert by["test_green"].ok and by["test_green"].attempts == 1
    assert by["test_green_on_third"].ok and by["test_green_on_third"].attempts == 3
    assert not by["test_raises"].ok and by["test_raises"].verdict.observed == "raised KeyError: 'key'"
    assert by["test_file"].verdict.observed.startswith(f"file {tmp_path / 'absent'}: expected present, got absent")
    counts = runs.read_text().split()
    assert counts.count("green") == 1  # green once: never run again
    assert counts.count("raises") == by["test_raises"].attempts > 3  # red: re-run until the time is up
    assert counts.count("session") == 1  # a session fixture: set up for the attempts of the tests using it
    assert by["test_green_on_third"].to_dict()["kind"] == "pytest"


def test_checks_and_tests_in_one_report_and_recorded_files_run_from_a_release(tmp_path: Path) -> None:
    write_tests(tmp_path, "def test_version(deploytest_host):\n    assert 'v1'\n")
    settings = settings_for(tmp_path, checks=[{"command": {"run": "true", "name": "true"}}])
    recorded = snapshot(settings)
    suite = json.loads(recorded.suite)
    assert suite["checks"] == [{"command": {"name": "true", "run": "true"}}] and suite["tests"]["archive"]
    write_tests(tmp_path, "def test_version(deploytest_host):\n    assert 'v2' == 'v1', 'today: v2'\n")
    today = suite_verifier(settings)([LocalTarget()], VerifySettings(0, 0.1), [])
    assert [(r.name, r.ok) for r in today.hosts[0].results] == [
        ("true", True), ("tests/deployment/test_app.py::test_version", False)]
    back = with_suite(settings, recorded.suite)  # what a rollback reads from the host
    again = suite_verifier(back)([LocalTarget()], VerifySettings(0, 0.1), [])
    assert [(r.name, r.ok) for r in again.hosts[0].results] == [
        ("true", True), ("tests/deployment/test_app.py::test_version", True)]
    assert snapshot(back).suite == back.suite


def test_hosts_with_a_conftest_side_by_side_each_get_their_results(tmp_path: Path) -> None:
    write_tests(tmp_path, "import pytest\n\n@pytest.fixture(scope='session')\ndef name(deploytest_host):\n"
                          "    return deploytest_host.name\n", "conftest.py")
    write_tests(tmp_path, "def test_named(deploytest_host, name):\n    assert name == deploytest_host.name\n")
    settings = settings_for(tmp_path)
    recorded = with_suite(settings, snapshot(settings).suite)
    for _ in range(10):  # pytest imports each conftest.py anew as "conftest": sessions must not race for it
        for suite in (settings, recorded):
            report = suite_verifier(suite)([LocalTarget(f"h{i}") for i in range(4)], VerifySettings(0, 0.1), [])
            assert [(h.host, [r.name for r in h.results if r.ok]) for h in report.hosts] == [
                (f"h{i}", ["tests/deployment/test_app.py::test_named"]) for i in range(4)]
