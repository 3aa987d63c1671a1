"""Deploying as a non-root user with ``sudo: true`` against real sshd hosts.

A throwaway account (``dtdeploy``) with a random password may run anything through sudo with that
password. ``/srv/hello`` belongs to root (mode 755), so without sudo the user cannot write there.
The password reaches deploytest through Fabric's ``sudo.password`` (``FABRIC_SUDO_PASSWORD`` or
``fab --prompt-for-sudo-password``) and must appear nowhere: not in fab's output, not on the hosts.
"""

from __future__ import annotations

import os
import pty
import secrets
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest
import testbed
from project import Project, hello_config

PORT = 8000
DEPLOY_TO = "/srv/hello"
USER = "dtdeploy"
SUDOERS = Path("/etc/sudoers.d/deploytest-test")
PROMPT = b"'sudo.password' config value"  # what fab --prompt-for-sudo-password asks

pytestmark = pytest.mark.testbed


def _sh(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), input=input, capture_output=True, text=True, timeout=60)


def _remove_user() -> None:
    SUDOERS.unlink(missing_ok=True)
    if _sh("id", "-u", USER).returncode == 0:
        # the beds (and every session in them) are gone by now; -f: remove even if one lingers
        _sh("userdel", "-r", "-f", USER)


@pytest.fixture(scope="module")
def sudo_user() -> Iterator[Dict[str, str]]:
    """A user ``dtdeploy`` with a random password, allowed ``ALL=(ALL) ALL`` through sudo (password
    required); removed afterwards with its home and sudoers file, also when a test failed."""
    missing = [tool for tool in ("sudo", "visudo", "useradd", "userdel", "chpasswd") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"these tests need {', '.join(missing)}: apt-get install sudo passwd", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("these tests create a user and a sudoers file: run them as root", pytrace=False)
    password = "pw-" + secrets.token_urlsafe(18)
    _remove_user()  # a run killed before its cleanup
    try:
        made = _sh("useradd", "-m", "-s", "/bin/sh", USER)
        assert made.returncode == 0, made.stderr
        chpasswd = _sh("chpasswd", input=f"{USER}:{password}\n")
        assert chpasswd.returncode == 0, chpasswd.stderr
        staged = SUDOERS.with_name(".deploytest-test.new")  # sudo ignores names with a dot
        staged.write_text(f"{USER} ALL=(ALL) ALL\n")
        staged.chmod(0o440)
        check = _sh("visudo", "-cf", str(staged))
        assert check.returncode == 0, check.stdout + check.stderr
        staged.rename(SUDOERS)
        yield {"user": USER, "password": password}
    finally:
        SUDOERS.with_name(".deploytest-test.new").unlink(missing_ok=True)
        _remove_user()


@pytest.fixture
def bed(make_hosts: Callable[..., Any], sudo_user: Dict[str, str]) -> Any:
    """Two hosts whose /srv/hello belongs to root (mode 755) and whose sshd accepts the user."""
    bed = make_hosts(2)
    # One AuthorizedKeysFile serves every user; sshd reads it as that user.
    bed.dir.chmod(0o755)
    bed.authorized_keys.chmod(0o644)
    for host in bed.hosts:
        host.sh(f"mkdir -p {DEPLOY_TO} && chown root:root {DEPLOY_TO} && chmod 755 {DEPLOY_TO}", check=True)
    return bed


def project_for(bed: Any, tmp_path: Path, password: str | None, **overrides: Any) -> Project:
    env = bed.env()
    if password is not None:
        env["FABRIC_SUDO_PASSWORD"] = password
    return Project(tmp_path / "project", hello_config(DEPLOY_TO, PORT, **overrides), env=env,
                   ssh_config=bed.ssh_config)


def user_hosts(bed: Any) -> List[str]:
    return [f"{USER}@{name}" for name in bed.names]


def tree(host: testbed.Host) -> str:
    """Everything under /srv/hello: paths with owner (for "nothing changed")."""
    return host.sh(f"find {DEPLOY_TO} -printf '%p %u\\n' | sort").stdout


def contains_anywhere(host: testbed.Host, secret: str) -> str:
    """Files under /srv/hello (file names included) that contain ``secret``; '' when none."""
    out = host.sh(f"grep -rlaF -- '{secret}' {DEPLOY_TO}; find {DEPLOY_TO} -name '*{secret}*'").stdout
    return out.strip()


def test_deploy_as_user_through_sudo(bed: Any, tmp_path: Path, sudo_user: Dict[str, str]) -> None:
    password = sudo_user["password"]
    project = project_for(bed, tmp_path, password, sudo=True)
    proc = project.fab("deploy-and-verify", hosts=user_hosts(bed))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert password not in proc.stdout + proc.stderr
    for host in bed.hosts:
        assert host.sh(f"curl -s -m 3 http://127.0.0.1:{PORT}/health").stdout.strip() == "ok 1.0"
        owners = host.sh(f"find {DEPLOY_TO} -not -user root").stdout.strip()
        assert owners == "", f"{host.name}: not owned by root:\n{owners}"
        events = host.sh(f"cat {DEPLOY_TO}/.deploytest/log.jsonl").stdout
        assert '"event": "deploy' in events, events
        # log.jsonl, the hooks' logs, release metadata: the password is in no file under /srv/hello,
        # nor in sshd's log of the session
        assert contains_anywhere(host, password) == "", f"{host.name}: password found"
        assert password not in host.log_text()


def test_wrong_sudo_password_refuses_and_changes_nothing(bed: Any, tmp_path: Path) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(12)
    project = project_for(bed, tmp_path, wrong, sudo=True)
    before = {host.name: tree(host) for host in bed.hosts}
    proc = project.fab("deploy-and-verify", hosts=user_hosts(bed))
    out = proc.stdout + proc.stderr
    assert proc.returncode in (1, 2), out
    assert "Traceback" not in out, out
    for name in bed.names:
        assert f"{USER}@{name}: preflight: sudo failed: sudo: 1 incorrect password attempt" in proc.stderr, out
    assert "wrong sudo.password" in proc.stderr, out
    assert wrong not in out
    for host in bed.hosts:
        assert tree(host) == before[host.name], host.name  # no release dir, no lock, no log
        assert contains_anywhere(host, wrong) == ""


def test_sudo_without_a_password_says_so_and_changes_nothing(bed: Any, tmp_path: Path) -> None:
    project = project_for(bed, tmp_path, None, sudo=True)
    before = {host.name: tree(host) for host in bed.hosts}
    proc = project.fab("deploy-and-verify", hosts=user_hosts(bed))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    for name in bed.names:
        assert f"{USER}@{name}: preflight: sudo failed: sudo: a password is required" in proc.stderr, out
    for host in bed.hosts:
        assert tree(host) == before[host.name], host.name


def test_without_sudo_the_user_cannot_write_and_nothing_changes(bed: Any, tmp_path: Path) -> None:
    project = project_for(bed, tmp_path, None)
    before = {host.name: tree(host) for host in bed.hosts}
    proc = project.fab("deploy-and-verify", hosts=user_hosts(bed))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    for name in bed.names:
        assert f"{name}: preflight" in proc.stderr, out
    assert "cannot write" in proc.stderr or "not writable" in proc.stderr, out
    for host in bed.hosts:
        assert tree(host) == before[host.name], host.name


def _drive(argv: List[str], cwd: Path, env: Dict[str, str], answer: str,
           timeout: float = 180) -> tuple[int, str, int]:
    """Run ``argv`` on a pty; answer every sudo password prompt with ``answer``.

    Returns (exit code, everything printed, how many prompts there were)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: never returns
        try:
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    out = b""
    prompts = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if out.count(PROMPT) > prompts:
                prompts = out.count(PROMPT)
                os.write(fd, answer.encode() + b"\n")
        else:
            os.kill(pid, 9)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace"), prompts


def test_prompt_for_sudo_password_asks_once_for_two_hosts(bed: Any, tmp_path: Path,
                                                          sudo_user: Dict[str, str]) -> None:
    password = sudo_user["password"]
    project = project_for(bed, tmp_path, None, sudo=True)
    argv = project.command("--prompt-for-sudo-password", "deploy-and-verify", hosts=user_hosts(bed))
    code, out, prompts = _drive(argv, project.root, project.env, password)
    sys.stdout.write(out)
    assert code == 0, out
    assert prompts == 1, out
    assert password not in out  # the terminal does not echo it
    for host in bed.hosts:
        assert host.sh(f"curl -s -m 3 http://127.0.0.1:{PORT}/health").stdout.strip() == "ok 1.0"
        assert contains_anywhere(host, password) == ""
