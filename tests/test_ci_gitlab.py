"""examples/ci/.gitlab-ci.yml run for real by gitlab-ci-local (shell executor) against test-bed hosts.

The pipeline README.rst shows ("In CI") builds the release archive, deploys it with
``fab deploy-and-verify --source ... --label ...`` and keeps the JSON and JUnit reports whatever the
outcome. A green release passes; a broken one fails the job with exit 1 and its JUnit names the red
check on each host. The pipeline file is validated against GitLab's schema by the same tool.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml
from project import EXAMPLE, REPO, hello_config
from reports_check import check_json, check_junit

from deploytest.records import parse_record

PIPELINE = REPO / "examples" / "ci" / ".gitlab-ci.yml"

pytestmark = [pytest.mark.testbed, pytest.mark.slow]


def gitlab_ci_local() -> str:
    found = shutil.which("gitlab-ci-local")
    if found is None:
        pytest.fail("gitlab-ci-local not installed: npm install -g gitlab-ci-local@4.56.0 (scripts/test.sh does)",
                    pytrace=False)
    return found


def run(cmd: List[str], cwd: Path, env: Dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout)
    sys.stdout.write(f"$ {' '.join(cmd)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n")
    return proc


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-c", "user.name=ci", "-c", "user.email=ci@example.com", *args], cwd=repo,
                         check=True, text=True, capture_output=True, timeout=60)
    return out.stdout.strip()


def make_repo(root: Path, config: Dict[str, Any]) -> Path:
    """A project repository as a user has it: the example app, its fabfile and the pipeline file."""
    repo = root / "repo"
    shutil.copytree(EXAMPLE, repo / "examples" / "hello", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PIPELINE, repo / ".gitlab-ci.yml")
    (repo / "examples" / "hello" / "fabric.yaml").write_text(yaml.safe_dump({"deploytest": config}, sort_keys=False))
    (repo / ".gitignore").write_text("build/\nreports/\n.gitlab-ci-local/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "release 1.0")
    return repo


def test_pipeline_file_validates_against_gitlabs_schema(tmp_path: Path) -> None:
    tool = gitlab_ci_local()
    repo = make_repo(tmp_path, hello_config("/srv/hello", 8000))
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    proc = run([tool, "--preview", "--json-schema-validation"], repo, env, timeout=120)
    assert proc.returncode == 0 and "json schema validated" in proc.stdout + proc.stderr, proc.stderr
    # the same tool refuses a pipeline GitLab would refuse: the validation is real
    (repo / "bad.yml").write_text(PIPELINE.read_text().replace("when: always ", "when: sometimes "))
    proc = run([tool, "--preview", "--json-schema-validation", "--file", "bad.yml"], repo, env, timeout=120)
    assert proc.returncode != 0 and "deploy.artifacts.when" in proc.stdout + proc.stderr


def test_readme_shows_the_pipeline_the_tests_run() -> None:
    readme = (REPO / "README.rst").read_text()
    section = readme.split("\nIn CI\n=====\n", 1)[1]
    block = re.search(r"::\n\n((?:    .*\n|\n)+)", section)
    assert block is not None
    shown = "\n".join(line[4:] for line in block.group(1).splitlines()).strip()
    assert shown == PIPELINE.read_text().strip()


def test_gitlab_pipeline_deploys_green_then_fails_a_broken_release_with_exit_1(make_hosts: Any,
                                                                              tmp_path: Path) -> None:
    tool = gitlab_ci_local()
    bed = make_hosts(2)
    hosts = bed.names
    config = hello_config("/srv/hello", 8000, rollout={"batches": ["100%"], "max_fail": 0, "parallel": 10})
    config["verify"] = {"timeout": 3, "interval": 0.3}
    repo = make_repo(tmp_path, config)
    env = {**bed.env(), "HOME": str(tmp_path / "ci-home"), "NO_COLOR": "1"}
    Path(env["HOME"]).mkdir()
    pipeline = [tool, "--variable", f"DEPLOY_HOSTS={','.join(hosts)}", "--variable", f"SSH_CONFIG={bed.ssh_config}",
                "--no-color"]

    # green: release 1.0 goes live on both hosts; the job passes and keeps a valid JUnit artifact
    proc = run(pipeline, repo, env)
    out = proc.stdout + proc.stderr
    sha = git(repo, "rev-parse", "--short=8", "HEAD")
    assert proc.returncode == 0, out
    assert "is live and verified green" in out
    junit = check_junit(repo / "reports" / "deploytest.xml")
    assert sorted(s.name for s in junit) == sorted(hosts)
    assert int(junit.failures) == 0 and int(junit.errors) == 0 and int(junit.tests) == 2 * 4
    document = check_json(repo / "reports" / "deploytest.json")
    assert (document["exit_code"], document["outcome"], document["task"]) == (0, "verified", "deploy-and-verify")
    short = sha  # the pipeline's CI_COMMIT_SHORT_SHA, the release's --label
    assert document["label"] == short
    assert document["source"].endswith(f"build/hello-{short}.tar.gz")
    green = document["release"]
    assert [(h["live_before"], h["live_after"], h["status"]) for h in document["hosts"]] == \
        [(None, green, "verified")] * 2
    artifact = repo / ".gitlab-ci-local" / "artifacts" / "deploy" / "reports" / "deploytest.xml"
    assert artifact.is_file(), sorted(str(p) for p in (repo / ".gitlab-ci-local").rglob("*.xml"))
    releases = bed.hosts[0].sh(f"cat /srv/hello/.deploytest/releases/{green}.meta").stdout
    assert parse_record(releases)["label"] == short

    # broken: /health answers 500; the job fails with exit 1 and the JUnit names health on each host
    (repo / "examples" / "hello" / "app" / "BROKEN").write_text("database unreachable\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "release 1.1 (broken)")
    proc = run(pipeline, repo, env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert re.search(r"deploy +finished in [0-9.]+ m?s +FAIL 1\b", out), out  # the job's own exit code: 1
    assert "ROLLED BACK" in out and "every host is back on its previous release" in out
    document = check_json(repo / "reports" / "deploytest.json")
    assert (document["exit_code"], document["outcome"]) == (1, "rolled back")
    assert [(h["live_before"], h["live_after"], h["status"]) for h in document["hosts"]] == \
        [(green, green, "rolled back")] * 2
    junit = check_junit(repo / "reports" / "deploytest.xml")
    for suite in junit:
        failed = {case.name: case.result[0] for case in suite if case.result}
        health = failed[f"{suite.name} :: health"]
        assert "expected: status 200" in health.text and "observed: 500" in health.text, health.text
        assert f"{suite.name} :: deploy-and-verify" in failed
    for host in bed.hosts:
        assert host.sh("readlink /srv/hello/current").stdout.strip().endswith(green)
