"""``fab -H a,b,c TASK`` runs deploytest's tasks once over all hosts, and other tasks per host, with
the contract's config alone (no ``tasks`` key), in a namespaced collection too; split per host
anyway, a deploytest task refuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from invoke.config import Config
from project import REPO

from deploytest.executor import HostsCall, HostsContext, split_refusal
from deploytest.tasks import status

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

NAMESPACED = """\
from fabric import task
from invoke import Collection
import deploytest.tasks


@task
def each(c):
    print("each:", c.host)


ns = Collection(each)
ns.add_collection(Collection.from_module(deploytest.tasks), "dt")
"""


def fab(tmp_path: Path, *args: str, yaml: str = "{}\n", fabfile: str = FABFILE) -> subprocess.CompletedProcess[str]:
    (tmp_path / "fabfile.py").write_text(fabfile)
    (tmp_path / "fabric.yaml").write_text(yaml)
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(tmp_path), NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "fabric", *args], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=60)


def test_coordinated_task_runs_once_with_every_host_without_any_tasks_key(tmp_path: Path) -> None:
    proc = fab(tmp_path, "-H", "a,b,c", "together", "each")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines.count("together: a,b,c") == 1
    assert [line for line in lines if line.startswith("each:")] == ["each: a", "each: b", "each: c"]


def test_the_explicit_executor_line_keeps_working(tmp_path: Path) -> None:
    proc = fab(tmp_path, "-H", "a,b", "together", "each",
               yaml="tasks:\n  executor_class: deploytest.executor.Executor\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines().count("together: a,b") == 1
    assert [x for x in proc.stdout.splitlines() if x.startswith("each:")] == ["each: a", "each: b"]


def test_no_hosts_means_local(tmp_path: Path) -> None:
    proc = fab(tmp_path, "together")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "together: local"


def test_namespaced_collection_is_one_call_and_user_tasks_stay_per_host(tmp_path: Path) -> None:
    # dt.status over two hosts that do not resolve: ONE call names both in one refusal (exit 3 or 2
    # would come from per-host runs stopping at the first host instead).
    yaml = "deploytest:\n  deploy_to: /srv/nothing-here\n  source: .\n  connect_timeout: 2\n"
    proc = fab(tmp_path, "-H", "nohost-a.invalid,nohost-b.invalid", "each", "dt.status", yaml=yaml,
               fabfile=NAMESPACED)
    assert [x for x in proc.stdout.splitlines() if x.startswith("each:")] == \
        ["each: nohost-a.invalid", "each: nohost-b.invalid"]
    text = proc.stdout + proc.stderr
    assert "nohost-a.invalid: state unknown" in text and "nohost-b.invalid: state unknown" in text, text
    assert proc.returncode == 3, text


def test_a_split_task_refuses_before_touching_any_host(tmp_path: Path) -> None:
    # A user's own executor (here Fabric's stock one, named explicitly) splits tasks per host.
    yaml = ("tasks:\n  executor_class: fabric.executor.Executor\n"
            "deploytest:\n  deploy_to: /srv/nothing-here\n  source: .\n")
    proc = fab(tmp_path, "-H", "nohost-a.invalid,nohost-b.invalid", "status", yaml=yaml,
               fabfile="from deploytest.tasks import status\n")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "status was handed nohost-a.invalid alone by tasks.executor_class fabric.executor.Executor" in lines[0]
    assert "Nothing was changed" in lines[0] and "Traceback" not in proc.stderr


def test_split_refusal_names_the_task_and_what_to_do() -> None:
    text = split_refusal("deploy", "web1", Config())
    assert text.startswith("deploy was handed web1 alone by its caller")
    assert "fab -H" in text and "HostsContext" in text


def test_hosts_call_makes_a_hosts_context_under_invoke_2_and_3() -> None:
    call = HostsCall(status, hosts=["a", "b"])
    assert call.clone().hosts == ["a", "b"]
    for context in (call.make_context(Config()), call.make_context(Config(), core_parse_result=object())):
        assert isinstance(context, HostsContext)
        assert context.hosts == ["a", "b"]  # type: ignore[attr-defined]


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
