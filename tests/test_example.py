"""The README's first command on this machine: the bundled example, deployed locally (no -H, no SSH)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest
from onhost import wait_until

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "hello"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health(port: int) -> str:
    """What /health answers ('' when nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as answer:
            return str(answer.status) + " " + answer.read().decode().strip()
    except urllib.error.HTTPError as error:
        return str(error.code) + " " + error.read().decode().strip()
    except OSError:
        return ""


def live(deploy_to: Path) -> str:
    link = deploy_to / "current"
    return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else ""


def stop_app(deploy_to: Path) -> None:
    pid_file = deploy_to / "shared" / "log" / "hello.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Tuple[Path, Path, int, Dict[str, str]]]:
    """A copy of examples/hello pointed at a deploy_to under tmp and a free port; the app is stopped after."""
    project = tmp_path / "hello"
    shutil.copytree(EXAMPLE, project)
    deploy_to = tmp_path / "deployed"
    port = free_port()
    config = project / "fabric.yaml"
    text = config.read_text()
    assert "/tmp/deploytest-hello" in text and "8765" in text  # what the README's command deploys to
    config.write_text(text.replace("/tmp/deploytest-hello", str(deploy_to)).replace("8765", str(port)))
    for test_file in (project / "tests" / "deployment").glob("*.py"):  # the example's deployment tests
        code = test_file.read_text()
        test_file.write_text(code.replace("/tmp/deploytest-hello", str(deploy_to)).replace("8765", str(port)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "INVOKE_"))}
    env.update(HOME=str(tmp_path / "home"), NO_COLOR="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    (tmp_path / "home").mkdir()
    try:
        yield project, deploy_to, port, env
    finally:
        stop_app(deploy_to)


def fab(project: Path, env: Dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "fabric", *args], cwd=project, env=env, text=True,
                          capture_output=True, timeout=120)
    sys.stdout.write(f"$ fab {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n")
    return proc


def test_readme_example_deploys_green_then_rolls_back_the_broken_release(
        example: Tuple[Path, Path, int, Dict[str, str]]) -> None:
    project, deploy_to, port, env = example
    first = fab(project, env, "deploy-and-verify")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Traceback" not in first.stdout + first.stderr
    good = live(deploy_to)
    assert good, "current was not created"
    assert os.readlink(deploy_to / "current") == str(deploy_to / "releases" / good)
    assert wait_until(lambda: health(port), "200 ok 1.0") == "200 ok 1.0"
    assert not (deploy_to / ".deploytest" / "lock").exists()

    broken = fab(project, env, "-f", "broken.yaml", "deploy-and-verify")
    text = broken.stdout + broken.stderr
    assert broken.returncode == 1, text
    assert "Traceback" not in text
    assert "rolled back" in text
    assert live(deploy_to) == good
    assert wait_until(lambda: health(port), "200 ok 1.0") == "200 ok 1.0"
    assert not (deploy_to / ".deploytest" / "lock").exists()
    others = [p.name for p in (deploy_to / "releases").iterdir() if p.name != good]
    assert len(others) == 1, others
    assert (deploy_to / ".deploytest" / "releases" / f"{others[0]}.bad").exists()  # marked bad
    assert (deploy_to / ".deploytest" / "releases" / f"{good}.verified").exists()
    last = json.loads((deploy_to / ".deploytest" / "log.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "deploy" and last["outcome"] == "rolled back" and last["release"] == others[0]

    again = fab(project, env, "verify")
    assert again.returncode == 0, again.stdout + again.stderr

    # The example's deployment tests, by hand, as any pytest test (the same files the flow ran).
    by_hand = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/deployment",
                              f"--deploytest-release={good}"], cwd=project, env=env, text=True,
                             capture_output=True, timeout=120)
    assert by_hand.returncode == 0 and "3 passed" in by_hand.stdout, by_hand.stdout + by_hand.stderr
