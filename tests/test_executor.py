"""``fab -H a,b,c TASK`` runs deploytest's tasks once over all hosts, and other tasks per host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from project import REPO

FABFILE = """\
from fabric import task
from invoke import task as invoke_task
from deploytest.executor import CoordinatedTask


@invoke_task(klass=CoordinatedTask)
def together(c):
    print("together:", ",".join(c.hosts) or "local")


@task
def each(c):
    print("each:", c.host)
"""


def fab(tmp_path: Path, *args: str, executor: bool = True) -> subprocess.CompletedProcess[str]:
    (tmp_path / "fabfile.py").write_text(FABFILE)
    yaml = "tasks:\n  executor_class: deploytest.executor.Executor\n" if executor else "{}\n"
    (tmp_path / "fabric.yaml").write_text(yaml)
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(tmp_path))
    return subprocess.run([sys.executable, "-m", "fabric", *args], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=60)


def test_coordinated_task_runs_once_with_every_host(tmp_path: Path) -> None:
    proc = fab(tmp_path, "-H", "a,b,c", "together", "each")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines.count("together: a,b,c") == 1
    assert [line for line in lines if line.startswith("each:")] == ["each: a", "each: b", "each: c"]


def test_no_hosts_means_local(tmp_path: Path) -> None:
    proc = fab(tmp_path, "together")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "together: local"


def test_help_describes_deploytest_tasks(tmp_path: Path) -> None:
    (tmp_path / "fabfile.py").write_text("from deploytest.tasks import *  # noqa\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(tmp_path))
    listing = subprocess.run([sys.executable, "-m", "fabric", "--list"], cwd=tmp_path, env=env, text=True,
                             capture_output=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    for name in ("deploy-and-verify", "deploy", "verify", "rollback", "status", "releases", "unlock"):
        assert name in listing.stdout
    helptext = subprocess.run([sys.executable, "-m", "fabric", "--help", "deploy-and-verify"], cwd=tmp_path,
                              env=env, text=True, capture_output=True, timeout=60)
    assert helptext.returncode == 0, helptext.stderr
    assert "--dry-run" in helptext.stdout and "--junit" in helptext.stdout
    assert "console" not in helptext.stdout


def test_reference_fabfile_lists_the_tasks_and_its_own_flow(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(tmp_path))
    listing = subprocess.run([sys.executable, "-m", "fabric", "-r", str(REPO), "--list"], cwd=tmp_path, env=env,
                             text=True, capture_output=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert "ship" in listing.stdout and "deploy-and-verify" in listing.stdout
