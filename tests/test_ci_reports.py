"""What a pipeline gets from fab: --source/--label, and JSON + JUnit reports on every exit.

Every report these tests write is validated by tests/reports_check.py (the JSON against the
package's schema, the JUnit against junit-10.xsd, read back with junitparser); here we assert what
they say.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any, Dict

import pytest
from onhost import live, output, served
from project import hello_bed

pytestmark = pytest.mark.testbed


@pytest.fixture
def two(make_hosts: Any, tmp_path: Path) -> Dict[str, Any]:
    bed = hello_bed(make_hosts, tmp_path, 2, rollout={"batches": ["100%"], "max_fail": 0, "parallel": 10})
    bed["project"].set_version("1.0", verify_timeout=3)
    return bed


def archive(project: Any, path: Path, version: str) -> Path:
    """The app as a build makes it: a .tar.gz of the release's files."""
    (project.root / "app" / "VERSION").write_text(version + "\n")
    with tarfile.open(path, "w:gz") as tar:
        for item in sorted((project.root / "app").iterdir()):
            tar.add(item, arcname=item.name)
    return path


def test_source_and_label_then_rollback_reports(two: Dict[str, Any], tmp_path: Path) -> None:
    project, bed, hosts = two["project"], two["bed"], two["hosts"]
    project.fab("deploy-and-verify", hosts=hosts)
    first = live(bed.hosts[0])

    # the build's archive, named on the command line; the config's source stays app/
    build = archive(project, tmp_path / "app-1.1.tar.gz", "1.1")
    project.config["checks"][2]["file"]["contains"] = "1.1"
    project.write(project.config)
    (project.root / "app" / "VERSION").write_text("wrong\n")  # not what is deployed
    report, junit = tmp_path / "out" / "deploy.json", tmp_path / "out" / "deploy.xml"
    proc = project.fab("deploy-and-verify", "--source", str(build), "--label", "v1.1", "--json", str(report),
                       "--junit", str(junit), hosts=hosts)
    assert proc.returncode == 0, output(proc)
    second = live(bed.hosts[0])
    assert second != first and all(live(h) == second for h in bed.hosts)
    data = json.loads(report.read_text())
    assert (data["task"], data["outcome"], data["exit_code"], data["label"]) == ("deploy-and-verify", "verified", 0,
                                                                               "v1.1")
    assert data["source"] == str(build) and data["release"] == second
    assert [(h["host"], h["live_before"], h["live_after"], h["status"]) for h in data["hosts"]] == \
        [(h, first, second, "verified") for h in hosts]
    assert all(c["change"] == "still green" for h in data["hosts"] for c in h["checks"] if c["kind"] != "file")
    proc = project.fab("releases", hosts=hosts)
    assert proc.returncode == 0 and "v1.1" in proc.stdout, output(proc)

    # rollback writes its reports too: from the release it left to the one it went back to
    project.config["checks"][2]["file"]["contains"] = "1.0"
    project.write(project.config)
    report, junit = tmp_path / "rollback.json", tmp_path / "rollback.xml"
    proc = project.fab("rollback", "--json", str(report), "--junit", str(junit), hosts=hosts)
    assert proc.returncode == 0, output(proc)
    data = json.loads(report.read_text())
    assert (data["task"], data["exit_code"], data["outcome"]) == ("rollback", 0, "rolled back")
    assert [(h["live_before"], h["live_after"], h["status"]) for h in data["hosts"]] == \
        [(second, first, "rolled back")] * 2
    assert all(c["ok"] for h in data["hosts"] for c in h["checks"])
    assert all(served(h) == "ok 1.0" for h in bed.hosts)


def test_refusals_write_reports_saying_what_was_refused(two: Dict[str, Any], tmp_path: Path) -> None:
    project, bed, hosts = two["project"], two["bed"], two["hosts"]
    report, junit = tmp_path / "refused.json", tmp_path / "refused.xml"

    # refused before any host is contacted: a bad --label
    proc = project.fab("deploy-and-verify", "--label", "two\nlines", "--json", str(report), "--junit", str(junit),
                       hosts=hosts)
    assert proc.returncode == 2, output(proc)
    data = json.loads(report.read_text())
    assert (data["exit_code"], data["outcome"]) == (2, "refused") and "--label" in data["error"]["message"]
    assert [h["status"] for h in data["hosts"]] == ["unchanged", "unchanged"]
    assert "--label" in junit.read_text()

    # refused by --source that does not exist (checked as deploytest.source is)
    proc = project.fab("deploy", "--source", str(tmp_path / "nope.tar.gz"), "--json", str(report), hosts=hosts)
    assert proc.returncode == 2, output(proc)
    data = json.loads(report.read_text())
    assert data["task"] == "deploy" and data["exit_code"] == 2 and "nope.tar.gz" in data["error"]["message"]

    # refused at preflight: one host down; nothing changed anywhere, and the reports name it
    bed.hosts[1].stop_sshd()
    proc = project.fab("deploy-and-verify", "--json", str(report), "--junit", str(junit), hosts=hosts)
    assert proc.returncode == 2, output(proc)
    data = json.loads(report.read_text())
    assert (data["exit_code"], data["outcome"]) == (2, "refused")
    assert data["error"]["message"].startswith("preflight failed")
    assert [(h["host"], h["status"]) for h in data["hosts"]] == [(hosts[0], "unchanged"), (hosts[1], "refused")]
    text = junit.read_text()
    assert f'name="{hosts[1]} :: deploy-and-verify"' in text and "<error" in text

    proc = project.fab("verify", "--json", str(report), "--junit", str(junit), hosts=hosts)
    assert proc.returncode == 2, output(proc)
    data = json.loads(report.read_text())
    assert (data["task"], data["exit_code"]) == ("verify", 2) and hosts[1] in data["failed"]


def test_needs_a_human_is_exit_3_in_the_reports(two: Dict[str, Any], tmp_path: Path) -> None:
    project, hosts = two["project"], two["hosts"]
    # a failed first deploy with a restart hook and no hooks.stop: what it started may still run
    del project.config["hooks"]["stop"]
    project.set_version("1.0", broken=True, verify_timeout=1)
    report, junit = tmp_path / "human.json", tmp_path / "human.xml"
    proc = project.fab("deploy-and-verify", "--json", str(report), "--junit", str(junit), hosts=hosts)
    assert proc.returncode == 3, output(proc)
    data = json.loads(report.read_text())
    assert (data["exit_code"], data["outcome"], data["ok"]) == (3, "needs a human", False)
    assert "hooks.stop" in data["error"]["message"] and data["error"]["next_step"]
    assert [(h["live_before"], h["live_after"], h["status"]) for h in data["hosts"]] == [(None, None, "unknown")] * 2
    health = [c for h in data["hosts"] for c in h["checks"] if c["name"] == "health"]
    assert [(c["before"], c["after"], c["observed"]) for c in health] == [("not checked", "red", "500")] * 2
    text = junit.read_text()
    assert text.count('<error message="unknown: ') == 2 and "next: " in text
