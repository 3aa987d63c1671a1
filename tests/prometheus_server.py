"""A real Prometheus server for the metric tests, and traffic for the apps it scrapes.

:func:`start` runs ``/usr/bin/prometheus`` (Debian package ``prometheus``; the Debian service is not
used) with a temporary config and data directory on a free port, scraping each target every second
with a ``host`` label; :meth:`Prometheus.close` stops it. :class:`Traffic` sends steady GET requests to
each app, as users would, so that rates and latencies have something to measure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

BINARY = "/usr/bin/prometheus"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """One running Prometheus: its base ``url``, and :meth:`query` for the tests' own waiting."""

    def __init__(self, directory: Path, targets: Dict[str, str]) -> None:
        self.directory = directory
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "hello",
                "static_configs": [{"targets": [address], "labels": {"host": name}}
                                   for name, address in targets.items()],
            }],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(directory / "prometheus.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [BINARY, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready after {timeout}s: {self.tail()}")

    def query(self, promql: str) -> List[Any]:
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as answer:
            return list(json.load(answer)["data"]["result"])

    def wait_for(self, promql: str, count: int, timeout: float = 30) -> None:
        """Until ``promql`` gives at least ``count`` series."""
        deadline = time.monotonic() + timeout
        while len(self.query(promql)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{promql}: fewer than {count} series after {timeout}s")
            time.sleep(0.5)

    def tail(self) -> str:
        self.log.flush()
        return (self.directory / "prometheus.log").read_text(errors="replace")[-2000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


def start(directory: Path, targets: Dict[str, str]) -> Prometheus:
    """Prometheus scraping ``targets`` (host name -> ``address:port``) every second; ready to query."""
    if not shutil.which(BINARY):
        raise RuntimeError(f"{BINARY} missing: apt-get install prometheus (scripts/test.sh installs it)")
    directory.mkdir(parents=True, exist_ok=True)
    server = Prometheus(directory, targets)
    try:
        server.ready()
    except BaseException:
        server.close()
        raise
    return server


class Traffic:
    """One thread per URL sending GET requests back to back (with ``pause`` between them) until closed."""

    def __init__(self, urls: List[str], pause: float = 0.05) -> None:
        self.stop = threading.Event()
        self.answers: Dict[int, int] = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._send, args=(url, pause), daemon=True) for url in urls]
        for thread in self.threads:
            thread.start()

    def _send(self, url: str, pause: float) -> None:
        while not self.stop.is_set():
            status: Optional[int] = None
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    status = answer.status
            except urllib.error.HTTPError as error:
                status = error.code
            except OSError:
                status = 0  # down while it restarts
            with self.lock:
                self.answers[status] = self.answers.get(status, 0) + 1
            self.stop.wait(pause)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(5)
