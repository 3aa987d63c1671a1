"""Real services for the check tests: an HTTP app, PostgreSQL, supervisord. Session fixtures.

Import the fixtures into a test module with ``from services import http_app, postgres, supervisor``.
Each fixture FAILS with one line naming what is missing when the machine cannot run it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
from testbed import free_port, port_open

APP = r"""
import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

READY = os.environ["READY_FILE"]

class App(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, code, body, ctype="text/plain", extra=()):
        data = body if isinstance(body, bytes) else body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-App", "hello")
        for key, value in extra:
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        self.send(201, "created")

    def do_GET(self):
        path = self.path
        if path == "/health":
            self.send(200, "ok\n")
        elif path == "/json":
            document = {"status": "ok", "db": {"up": True}, "items": [1, 2]}
            self.send(200, json.dumps(document), "application/json")
        elif path == "/fail":
            self.send(502, "upstream down")
        elif path == "/slow":
            time.sleep(60)
            self.send(200, "late")
        elif path == "/redirect":
            self.send(302, "", extra=[("Location", "/health")])
        elif path == "/ready":
            if os.path.exists(READY):
                self.send(200, "ready")
            else:
                self.send(503, "starting")
        elif path.startswith("/frames"):
            # A hostile body: lines that look like frames, binary, invalid UTF-8.
            body = b"".join(b"DT%016x %d 0 0 2 0 b b2s= \n" % (n, n) for n in range(50))
            self.send(200, body + bytes(range(256)) + b"\xff\xfe tail-ok")
        elif path == "/huge":
            self.send(200, b"x" * (5 * 1024 * 1024) + b"needle")
        else:
            self.send(404, "not found")

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), App).serve_forever()
"""


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"{what} did not come up within {timeout:g}s", pytrace=False)


@dataclass
class HttpApp:
    """The test HTTP app: ``url(path)``, its ``port``, and ``ready_file`` that flips /ready to 200."""

    port: int
    ready_file: Path
    pid: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="session")
def http_app() -> Iterator[HttpApp]:
    """A real HTTP server process on 127.0.0.1 (see APP for its routes)."""
    directory = Path(tempfile.mkdtemp(prefix="dt-http-"))
    port = free_port()
    env = dict(os.environ, READY_FILE=str(directory / "ready"))
    proc = subprocess.Popen([sys.executable, "-c", APP, str(port)], env=env)
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 15, "the test HTTP app")
        yield HttpApp(port, directory / "ready", proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster: TCP on 127.0.0.1:``port``, unix socket in ``socket_dir``."""

    port: int
    socket_dir: str
    password: str
    password_file: str
    database: str = "app"
    user: str = "postgres"


def _as_postgres(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True, timeout=120, **kwargs
    )  # type: ignore[call-overload]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL server started with initdb/pg_ctl in a temp dir as the postgres user."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.fail(
            "PostgreSQL unavailable: no /usr/lib/postgresql/*/bin/initdb (apt-get install -y postgresql)",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("PostgreSQL fixture needs root (it runs initdb as the postgres user)", pytrace=False)
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("PostgreSQL fixture: no 'postgres' user on this machine", pytrace=False)
    bindir = os.path.dirname(bins[-1])
    directory = tempfile.mkdtemp(prefix="dt-pg-")
    shutil.chown(directory, "postgres", "postgres")
    os.chmod(directory, 0o755)
    password = "pg-Secret-" + os.urandom(4).hex()
    pwfile = os.path.join(directory, "pwfile")
    Path(pwfile).write_text(password + "\n")
    shutil.chown(pwfile, "postgres", "postgres")
    data = os.path.join(directory, "data")
    port = free_port()
    init = _as_postgres(
        [
            f"{bindir}/initdb",
            "-D",
            data,
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
        ]
    )
    if init.returncode != 0:
        pytest.fail(f"initdb failed: {init.stderr.strip()[-300:]}", pytrace=False)
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1"
    start = _as_postgres(
        [f"{bindir}/pg_ctl", "-D", data, "-o", options, "-l", f"{directory}/log", "-w", "start"]
    )
    if start.returncode != 0:
        pytest.fail(f"pg_ctl start failed: {start.stderr.strip()[-300:]}", pytrace=False)
    try:
        setup = "CREATE DATABASE app;"
        _as_postgres(["psql", "-h", directory, "-p", str(port), "-U", "postgres", "-c", setup])
        table = "CREATE TABLE items (name text); INSERT INTO items VALUES ('alpha'), ('beta'), ('gamma');"
        done = _as_postgres(
            ["psql", "-h", directory, "-p", str(port), "-U", "postgres", "-d", "app", "-c", table]
        )
        if done.returncode != 0:
            pytest.fail(f"PostgreSQL setup failed: {done.stderr.strip()[-300:]}", pytrace=False)
        client_pwfile = os.path.join(directory, "client-password")
        Path(client_pwfile).write_text(password + "\n")
        os.chmod(client_pwfile, 0o600)
        yield Postgres(port, directory, password, client_pwfile)
    finally:
        _as_postgres([f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"])
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Supervisor:
    """A private supervisord: ``conf`` for supervisorctl -c, programs ``dtapp`` (running), ``dtidle``."""

    conf: str
    directory: str


#: A private supervisord's own sections ({d}: its directory); the programs follow.
SUPERVISOR_HEAD = """\
[unix_http_server]
file={d}/supervisor.sock

[supervisord]
logfile={d}/supervisord.log
pidfile={d}/supervisord.pid
childlogdir={d}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{d}/supervisor.sock

"""

SUPERVISOR_CONF = SUPERVISOR_HEAD + """\
[program:dtapp]
command=sleep 100000
autostart=true
startsecs=0

[program:dtidle]
command=sleep 100000
autostart=false
"""


@pytest.fixture(scope="session")
def supervisor() -> Iterator[Supervisor]:
    """A real supervisord with its own config and socket in a temp dir."""
    if shutil.which("supervisord") is None or shutil.which("supervisorctl") is None:
        pytest.fail(
            "supervisor unavailable: no supervisord/supervisorctl (apt-get install -y supervisor)",
            pytrace=False,
        )
    directory = tempfile.mkdtemp(prefix="dt-sv-")
    conf = os.path.join(directory, "supervisord.conf")
    Path(conf).write_text(SUPERVISOR_CONF.format(d=directory))
    proc = subprocess.Popen(
        ["supervisord", "-n", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def running() -> bool:
        out = subprocess.run(["supervisorctl", "-c", conf, "status", "dtapp"], capture_output=True, text=True)
        return "RUNNING" in out.stdout

    try:
        wait_for(running, 20, "supervisord")
        yield Supervisor(conf, directory)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(directory, ignore_errors=True)
