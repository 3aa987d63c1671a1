"""Safe and truthful by default, over real sshd hosts, with fabric.yaml holding only the ``deploytest``
key: one coordinated rollout, rollbacks judged by the release's own suite, a failed first deploy
told as it is, locks that protect a live deploy, and summaries that say only what happened."""

from __future__ import annotations

import json
import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml
from onhost import DEPLOY_TO, events, live, locked, output, releases_on, served, state_of, wait_served
from project import Project

pytestmark = pytest.mark.testbed


def green(project: Project, hosts: List[str], version: str) -> str:
    project.set_version(version)
    proc = project.fab("deploy-and-verify", hosts=hosts)
    assert proc.returncode == 0, output(proc)
    return proc.stdout


def slow_deploy(project: Project, bed: Any, hosts: List[str], task: str = "deploy-and-verify") -> Any:
    """Start a deploy whose build takes a few seconds; return it once it holds every host's lock."""
    project.config["hooks"]["build"] = ["sleep 4"]
    project.set_version("1.1")
    proc = project.start(task, hosts=hosts)
    deadline = time.monotonic() + 30
    while not all(locked(h) for h in bed.hosts):
        assert time.monotonic() < deadline and proc.poll() is None, "the deploy never held every lock"
        time.sleep(0.05)
    return proc


def test_fabric_yaml_holds_only_the_deploytest_key(three: Dict[str, Any]) -> None:
    data = yaml.safe_load((three["project"].root / "fabric.yaml").read_text())
    assert list(data) == ["deploytest"]


def test_one_rollout_one_release_id_one_report_and_a_red_host_rolls_back_all(
        three: Dict[str, Any], tmp_path: Path) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    project.set_version("1.0")
    proc = project.fab("deploy-and-verify", "--json", str(report), "--junit", str(junit), hosts=hosts)
    assert proc.returncode == 0, output(proc)
    ids = {live(h) for h in bed.hosts}
    assert len(ids) == 1 and "" not in ids, ids
    data = json.loads(report.read_text())
    assert data["task"] == "deploy-and-verify" and [h["host"] for h in data["hosts"]] == hosts  # the rollout's own
    assert data["seconds"] >= data["result"]["seconds"]  # the rollout's seconds, not the checks'
    assert [h["host"] for h in data["result"]["hosts"]] == hosts
    root = ET.parse(junit).getroot()
    assert root.get("name") == "deploytest deploy-and-verify"
    assert sorted(s.get("name") or "" for s in root.iter("testsuite")) == hosts

    # Red on web2 alone (a file that only web1 and web3 have): every switched host goes back.
    before = live(bed.hosts[0])
    for host in (bed.hosts[0], bed.hosts[2]):
        host.sh("touch /srv/only-here")
    project.config["checks"].append({"file": {"path": "/srv/only-here", "name": "marker"}})
    project.set_version("2.0", verify_timeout=2)
    proc = project.fab("deploy-and-verify", hosts=hosts)
    assert proc.returncode == 1, output(proc)
    assert "3 switched host(s) rolled back to their previous release and verified" in proc.stderr
    for host in bed.hosts:
        assert live(host) == before and served(host) == "ok 1.0" and not locked(host)


def test_manual_rollback_is_verified_with_the_suite_of_the_release_it_goes_back_to(
        three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    green(project, hosts, "1.0")
    r1 = live(bed.hosts[0])
    green(project, hosts, "2.0")  # today's config pins 2.0 (the contract's own example)
    for host in bed.hosts:
        suite = json.loads(host.sh(f"cat {DEPLOY_TO}/.deploytest/releases/{r1}.suite.json").stdout)
        assert {"file": {"path": f"{DEPLOY_TO}/current/VERSION", "contains": "1.0"}} in suite["checks"]
    proc = project.fab("rollback", hosts=hosts)
    assert proc.returncode == 0, output(proc)
    assert f"with the suite recorded with {r1}" in proc.stdout
    assert f"rolled back: 3 host(s) live on {r1}, verified" in proc.stdout
    for host in bed.hosts:
        assert live(host) == r1 and served(host) == "ok 1.0" and not locked(host)
        (event,) = [e for e in events(host) if e["event"] == "rollback"]
        assert event["who"].startswith("root@") and event["outcome"] == "rolled back"


def test_a_release_without_a_record_is_verified_with_todays_checks_and_says_so(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    project.set_version("1.0")
    assert project.fab("deploy", hosts=hosts).returncode == 0  # a plain deploy records no suite
    r1 = live(bed.hosts[0])
    green(project, hosts, "2.0")
    project.config["checks"] = [c for c in project.config["checks"] if "file" not in c]
    project.write(project.config)
    refused = project.fab("rollback", hosts=hosts)  # a plain deploy was never verified: no target
    assert refused.returncode == 2 and f"rollback --to {r1} --force" in refused.stderr, output(refused)
    proc = project.fab("rollback", "--to", r1, "--force", hosts=hosts)
    assert proc.returncode == 0, output(proc)
    assert f"{r1} has no recorded suite; with today's checks" in proc.stdout
    assert all(state_of(h, r1) == "verified" for h in bed.hosts)  # verified now, and its suite recorded
    assert all(h.sh(f"test -f {DEPLOY_TO}/.deploytest/releases/{r1}.suite.json").returncode == 0 for h in bed.hosts)


def test_the_flows_own_rollback_uses_the_recorded_suite(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    green(project, hosts, "1.0")
    r1 = live(bed.hosts[0])
    project.set_version("2.0", broken=True, verify_timeout=2)
    proc = project.fab("deploy-and-verify", hosts=hosts)
    assert proc.returncode == 1, output(proc)
    assert f"with the suite recorded with {r1}" in proc.stdout
    for host in bed.hosts:
        assert live(host) == r1 and served(host) == "ok 1.0"


def test_failed_first_deploy_is_stopped_and_removed_by_the_stop_hook(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    project.set_version("1.0", broken=True, verify_timeout=2)
    proc = project.fab("deploy-and-verify", hosts=hosts)
    assert proc.returncode == 1, output(proc)
    assert "first deploy failed: nothing to roll back to;" in proc.stderr
    assert "stopped and removed on web1, web2, web3; locks released." in proc.stderr
    assert "rolled back to their previous release" not in proc.stderr
    for host in bed.hosts:
        assert served(host) == ""  # the broken release no longer answers
        assert live(host) == "" and releases_on(host) == [] and not locked(host)


def test_failed_first_deploy_without_a_stop_hook_needs_a_human(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    del project.config["hooks"]["stop"]
    project.set_version("1.0", broken=True, verify_timeout=2)
    proc = project.fab("deploy-and-verify", hosts=hosts)
    assert proc.returncode == 3, output(proc)
    assert "nothing to roll back to, and no hooks.stop" in proc.stderr
    assert "(sh bin/restart 8000)" in proc.stderr and "may still run on web1, web2, web3" in proc.stderr
    assert "next: stop it by hand on web1, web2, web3 (and add hooks.stop" in proc.stderr
    for host in bed.hosts:
        assert wait_served(host, "database unreachable") == "database unreachable"  # as the message says
        (rid,) = releases_on(host)
        assert live(host) == "" and state_of(host, rid) == "bad" and not locked(host)
        host.sh(f"cd {DEPLOY_TO}/releases/{rid} && sh bin/stop")


def test_unlock_refuses_a_live_lock_and_removes_a_stale_one(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    green(project, hosts, "1.0")
    proc = slow_deploy(project, bed, hosts)
    refused = project.fab("unlock", hosts=hosts)
    assert refused.returncode == 2, output(refused)
    assert "a running deploy holds these locks; nothing was removed" in refused.stderr
    assert f"held by root@{socket.gethostname()} (pid {proc.pid}) since" in refused.stderr
    assert "live, last heartbeat" in refused.stderr and "unlock --force" in refused.stderr
    status = project.fab("status", hosts=hosts)
    assert "live, last heartbeat" in status.stdout, output(status)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out  # the deploy carried on, protected, and finished
    assert all(not locked(h) for h in bed.hosts)

    # kill -9 mid-build: the holder's process is gone, so its lock is stale
    proc = slow_deploy(project, bed, hosts, "deploy")
    proc.kill()
    proc.communicate(timeout=30)
    status = project.fab("status", hosts=hosts)
    assert "stale: its process is no longer running" in status.stdout, output(status)
    removed = project.fab("unlock", hosts=hosts)
    assert removed.returncode == 0, output(removed)
    assert f"removed the lock of root@{socket.gethostname()} (pid {proc.pid})" in removed.stdout
    assert all(not locked(h) for h in bed.hosts)
    assert all(e["holder"].startswith("root@") for h in bed.hosts for e in events(h) if e["event"] == "unlock")


def test_unlock_force_removes_a_live_lock_and_the_deploy_says_so(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    green(project, hosts, "1.0")
    proc = slow_deploy(project, bed, hosts)
    forced = project.fab("unlock", "--force", hosts=hosts)
    assert forced.returncode == 0, output(forced)
    assert "removed with --force" in forced.stdout
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    # the summary says what happened to the lock, not "unlocked"
    assert out.count("warning: its lock was already gone (removed by an unlock)") == 3, out


def test_nothing_to_verify_is_refused_before_any_host_is_touched(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    project.config["checks"] = []
    project.write(project.config)
    proc = project.fab("deploy-and-verify", hosts=hosts)
    assert proc.returncode == 2, output(proc)
    assert "nothing to verify" in proc.stderr and "fab deploy" in proc.stderr
    for host in bed.hosts:
        assert host.sh(f"test -e {DEPLOY_TO}").returncode != 0


def test_rollback_where_nothing_was_ever_deployed_changes_nothing(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    proc = project.fab("rollback", hosts=hosts)
    assert proc.returncode == 2, output(proc)
    assert "Nothing was changed" in proc.stderr
    for host in bed.hosts:
        assert host.sh(f"test -e {DEPLOY_TO}").returncode != 0


def test_namespaced_collection_deploys_all_hosts_in_one_rollout(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    (project.root / "fabfile.py").write_text(
        "from invoke import Collection\nimport deploytest.tasks\n\n"
        "ns = Collection()\nns.add_collection(Collection.from_module(deploytest.tasks), 'dt')\n")
    project.set_version("1.0")
    proc = project.fab("dt.deploy-and-verify", hosts=hosts)
    assert proc.returncode == 0, output(proc)
    assert len({live(h) for h in bed.hosts}) == 1
    assert proc.stdout.count("== preflight (3 hosts)") == 1


def test_secrets_in_a_check_name_reach_no_output_log_or_report(three: Dict[str, Any], tmp_path: Path) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    green(project, hosts, "1.0")
    secret = "s3cret-" + tmp_path.name[-6:]
    project.config["checks"].append({"database": {"engine": "sqlite", "path": "/nonexistent/app.db",
                                                  "query": "select 1", "env": {"APP_TOKEN": secret}},
                                     "name": f"db with {secret}"})
    project.set_version("2.0", verify_timeout=4)  # also what the way back gets to turn green
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    proc = project.fab("deploy-and-verify", "--json", str(report), "--junit", str(junit), hosts=hosts)
    assert proc.returncode == 1, output(proc)
    assert "db with ***" in output(proc)  # the red check is named, its secret is not
    assert secret not in output(proc)
    assert secret not in report.read_text() and secret not in junit.read_text()
    for host in bed.hosts:
        assert secret not in host.sh(f"cat {DEPLOY_TO}/.deploytest/log.jsonl").stdout
    verify = project.fab("verify", hosts=hosts)
    assert verify.returncode == 1 and secret not in output(verify)
    for host in bed.hosts:
        assert secret not in host.sh(f"cat {DEPLOY_TO}/.deploytest/log.jsonl").stdout


def test_a_host_refused_within_max_fail_is_set_aside_not_switched_back(three: Dict[str, Any]) -> None:
    project, bed, hosts = three["project"], three["bed"], three["hosts"]
    green(project, hosts, "1.0")
    before = live(bed.hosts[1])
    project.set_version("2.0")
    # on web2 alone the new release is marked bad as it is built: its switch is refused there
    project.config["hooks"]["build"] = [
        "python3 -m py_compile hello.py",
        '[ "$(hostname)" != web2 ] || touch "$DEPLOYTEST_DEPLOY_TO/.deploytest/releases/$DEPLOYTEST_RELEASE.bad"']
    project.config["rollout"] = {"batches": ["100%"], "max_fail": 1, "parallel": 10}
    project.write(project.config)
    proc = project.fab("deploy-and-verify", hosts=hosts)
    assert proc.returncode == 0, output(proc)
    assert "set aside: stays on" in proc.stdout and "switched back" not in output(proc)
    web2 = bed.hosts[1]
    assert live(web2) == before and served(web2) == "ok 1.0" and not locked(web2)
    assert all(live(h) != before and served(h) == "ok 2.0" for h in (bed.hosts[0], bed.hosts[2]))
