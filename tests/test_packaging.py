"""The installed package on its own: a wheel built from this checkout, installed into a fresh virtualenv,
deploys and verifies its bundled example with ``deploytest-example`` (no checkout, no SSH)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
DEPLOY_TO = Path("/tmp/deploytest-hello")  # where the bundled example deploys


def health() -> str:
    try:
        with urllib.request.urlopen("http://127.0.0.1:8765/health", timeout=3) as answer:
            return answer.read().decode().strip()
    except urllib.error.HTTPError as error:
        return f"{error.code} {error.read().decode().strip()}"
    except OSError:
        return ""


def stop_example() -> None:
    pid_file = DEPLOY_TO / "shared" / "log" / "hello.pid"
    try:
        os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
    except (OSError, ValueError):
        pass
    shutil.rmtree(DEPLOY_TO, ignore_errors=True)


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[Path]:
    """A fresh virtualenv with the wheel of this checkout installed; its bin directory."""
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("deploytest-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    str(wheel)], check=True, capture_output=True, timeout=600)
    stop_example()
    try:
        yield venv / "bin"
    finally:
        stop_example()


def test_the_installed_wheel_deploys_and_verifies_its_bundled_example(installed: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(NO_COLOR="1", HOME=str(tmp_path))
    elsewhere = tmp_path / "anywhere"
    elsewhere.mkdir()
    good = subprocess.run([str(installed / "deploytest-example")], cwd=elsewhere, env=env, text=True,
                          capture_output=True, timeout=300)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "deploytest: verified:" in good.stdout and "Traceback" not in good.stderr
    assert health() == "ok 1.0"
    assert (elsewhere / "deploytest-example" / "fabric.yaml").is_file()
    # the installed package is what ran, not this checkout
    where = subprocess.run([str(installed / "python"), "-c", "import deploytest; print(deploytest.__file__)"],
                           cwd=elsewhere, env=env, text=True, capture_output=True, timeout=60).stdout
    assert str(REPO) not in where and "site-packages" in where

    broken = subprocess.run([str(installed / "deploytest-example"), "--broken"], cwd=elsewhere, env=env, text=True,
                            capture_output=True, timeout=300)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "rolled back" in broken.stdout + broken.stderr
    assert health() == "ok 1.0"  # back on the verified release
