"""A throwaway Fabric project around the example app, and a way to run ``fab`` on it as a user would."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "hello"

FABFILE = """\
from deploytest.tasks import deploy, deploy_and_verify, releases, rollback, status, unlock, verify
"""


def hello_config(deploy_to: str, port: int, *, version: str = "1.0", **overrides: Any) -> Dict[str, Any]:
    """The example's deploytest config, pointed at ``deploy_to`` and ``port``."""
    config: Dict[str, Any] = {
        "app": "hello",
        "deploy_to": deploy_to,
        "source": "app/",
        "keep_releases": 5,
        "shared": ["log"],
        "hooks": {
            "build": ["python3 -m py_compile hello.py"],
            "restart": [f"sh bin/restart {port}"],
            "stop": ["sh bin/stop"],
        },
        "checks": [
            {"http": {"url": f"http://127.0.0.1:{port}/health", "status": 200, "contains": "ok",
                      "name": "health"}},
            {"port": {"port": port}},
            {"file": {"path": f"{deploy_to}/current/VERSION", "contains": version}},
        ],
        "verify": {"timeout": 8, "interval": 0.3},
        "rollout": {"batches": [1, "50%"], "max_fail": 0, "parallel": 10},
    }
    config.update(overrides)
    return config


class Project:
    """A directory with fabfile.py, fabric.yaml and a copy of the example app."""

    def __init__(self, root: Path, config: Dict[str, Any], env: Optional[Dict[str, str]] = None,
                 ssh_config: Optional[Path] = None) -> None:
        self.root = root
        self.env = dict(env or _plain_env(root))
        self.ssh_config = ssh_config
        root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(EXAMPLE / "app", root / "app", dirs_exist_ok=True)
        (root / "fabfile.py").write_text(FABFILE)
        self.write(config)

    def write(self, config: Dict[str, Any]) -> None:
        """Replace the ``deploytest`` section of fabric.yaml."""
        self.config = config
        data = {"deploytest": config}  # the contract's config alone, as users write it
        (self.root / "fabric.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    def set_version(self, version: str, *, broken: bool = False, verify_timeout: Optional[float] = None) -> None:
        """Make the next release carry ``version`` (and a BROKEN marker: /health answers 500); with
        ``verify_timeout``, how long its checks get to turn green."""
        if verify_timeout is not None:
            self.config["verify"] = {"timeout": verify_timeout, "interval": 0.3}
        (self.root / "app" / "VERSION").write_text(version + "\n")
        marker = self.root / "app" / "BROKEN"
        if broken:
            marker.write_text("database unreachable\n")
        elif marker.exists():
            marker.unlink()
        for check in self.config["checks"]:
            if "file" in check and check["file"]["path"].endswith("/VERSION"):
                check["file"]["contains"] = version
        self.write(self.config)

    def command(self, *args: str, hosts: Optional[List[str]] = None) -> List[str]:
        cmd = [sys.executable, "-m", "fabric"]
        if self.ssh_config is not None:
            cmd += ["-S", str(self.ssh_config)]
        if hosts:
            cmd += ["-H", ",".join(hosts)]
        return cmd + list(args)

    def fab(self, *args: str, hosts: Optional[List[str]] = None,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run ``fab [-S ssh_config] [-H hosts] ARGS`` in the project; output is echoed for debugging."""
        proc = subprocess.run(self.command(*args, hosts=hosts), cwd=self.root, env=self.env, text=True,
                              capture_output=True, timeout=timeout)
        sys.stdout.write(f"$ fab {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n")
        return proc

    def start(self, *args: str, hosts: Optional[List[str]] = None) -> subprocess.Popen[str]:
        """Start ``fab`` in the background (for Ctrl-C tests)."""
        return subprocess.Popen(self.command(*args, hosts=hosts), cwd=self.root, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def hello_bed(make_hosts: Any, root: Path, hosts: int, **overrides: Any) -> Dict[str, Any]:
    """``hosts`` test hosts and a project deploying the hello example to them (/srv/hello, port 8000)."""
    bed = make_hosts(hosts)
    project = Project(root / "project", hello_config("/srv/hello", 8000, **overrides), env=bed.env(),
                      ssh_config=bed.ssh_config)
    return {"bed": bed, "project": project, "hosts": bed.names}


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> str:
    """Wait for a background ``fab``; on a hang, kill it and fail with what it printed."""
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
        raise AssertionError(f"fab hung for {timeout}s; it printed:\n{out}") from None
    sys.stdout.write(out)
    return out


def interrupt_when(proc: subprocess.Popen[str], ready: Any, timeout: float = 60,
                   sig: int = signal.SIGINT) -> str:
    """Send ``sig`` (Ctrl-C's SIGINT unless told) to ``proc`` once ``ready()`` is true; return all its
    output after it exits."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.communicate()[0]
            raise AssertionError(f"never became ready; fab exited {proc.returncode}:\n{out}")
        time.sleep(0.05)
    proc.send_signal(sig)
    return finish(proc, 120)


def _plain_env(root: Path) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FABRIC_", "INVOKE_"))}
    env["HOME"] = str(root / "home")
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_COLOR"] = "1"
    (root / "home").mkdir(parents=True, exist_ok=True)
    if "PYTHONPATH" not in env:
        env["PYTHONPATH"] = str(REPO)
    return env
