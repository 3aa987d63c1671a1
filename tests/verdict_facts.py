"""Real facts on this machine for the ground-truth corpus (tests/test_verdicts_ground_truth.py).

:func:`build` sets up every fact it can (root-only ones only as root) and returns the values the
cases refer to as ``{name}``; :meth:`Facts.close` takes everything down again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from services import SUPERVISOR_HEAD

IS_ROOT = os.geteuid() == 0
MARK = f"dtv{os.getpid()}"
BIG = 150 * 1024
DEBS = {
    f"{MARK}-binutils": "2.40-2",
    f"{MARK}-dbus": "1.14.10-1~deb12u1",
    f"{MARK}-bash": "5.2.15-2+b8",
    f"{MARK}-epoch": "1:2.0-1",
    f"{MARK}-plain": "1.2.0",
}
WHEELS = {
    "dtv-rc": "1.2rc1",
    "dtv-dev": "2.0.dev1",
    "dtv-zero": "1.2.0",
    "dtv-post": "1.0.post1",
    "dtv-local": "1.0+deb1",
}
SUPERVISOR_CONF = SUPERVISOR_HEAD + """\
[program:web]
command=sleep 100000
autostart=true
startsecs=0

[program:worker]
command=sleep 100000
autostart=false

[program:solo]
command=sleep 100000
autostart=true
startsecs=0

[group:shop]
programs=web,worker
"""


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait for ``predicate`` (the fact itself) to hold; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout:g}s")
        time.sleep(0.02)


class Body(BaseHTTPRequestHandler):
    """Routes: /big (a marker after 300 KiB), /json (keys with dots and slashes), /plain."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/big":
            body = b"x" * (300 * 1024) + b"MARKER-AFTER-300K"
        elif self.path == "/json":
            body = json.dumps(
                {"a.b": 7, "a": {"b": 8}, "x/y": 1, "t~n": 2, "list": [{"id": 5}], "flag": True}
            ).encode()
        else:
            body = b"plain ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Facts:
    """Everything set up for the corpus, and how to take it down."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {"mark": MARK}
        self.cleanups: list[Callable[[], None]] = []
        self.root = Path(tempfile.mkdtemp(prefix="dt-verdicts-"))
        self.cleanups.append(lambda: shutil.rmtree(self.root, ignore_errors=True))

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001 - take down the rest anyway
                print(f"verdict facts: cleanup failed: {exc}", file=sys.stderr)

    def run(self, *args: str) -> None:
        subprocess.run(list(args), check=True, capture_output=True, timeout=120)

    # --- files -------------------------------------------------------------------------------------
    def files(self) -> None:
        t = self.root
        os.chmod(t, 0o755)
        (t / "file.txt").write_text("hello world\nversion=1.0\n")
        os.chmod(t / "file.txt", 0o640)
        (t / "dir").mkdir()
        (t / "link").symlink_to(t / "file.txt")
        (t / "dangling").symlink_to(t / "nowhere")
        (t / "big.txt").write_bytes(b"y" * (1536 * 1024) + b"\nNEEDLE-PAST-1MIB\n")
        (t / "space dir").mkdir()
        self.values.update(
            tmp=str(t),
            uid=str(os.getuid()),
            user=_user_name(os.getuid()),
            umask=f"{_umask():04o}",
            filemode=f"{0o666 & ~_umask():o}",
            file_sha=hashlib.sha256((t / "file.txt").read_bytes()).hexdigest(),
        )

    def root_files(self) -> None:
        t, v = self.root, self.values
        (t / "orphan").write_text("owned by a uid with no passwd entry\n")
        os.chown(t / "orphan", int(v["orphan_uid"]), int(v["orphan_gid"]))
        (t / "dangling-owned").symlink_to(t / "nowhere")
        os.lchown(t / "dangling-owned", int(v["uid_u"]), int(v["gid_g"]))
        (t / "numeric-owned").write_text("owned by the user whose name is a number\n")
        os.chown(t / "numeric-owned", int(v["uid_num"]), int(v["gid_num"]))

    # --- users and groups (root) -------------------------------------------------------------------
    def accounts(self) -> None:
        """A user and a group, and a user and a group named by digits that are not their ids.

        Ids and numeric names are free ones picked per run (from the pid), so runs side by side and
        leftovers of a killed run do not collide.
        """
        base = 50000 + (os.getpid() % 1000) * 10
        ids = [str(n) for n in range(base, base + 10)]
        taken = [n for n in ids if _has_entry("passwd", n) or _has_entry("group", n)]
        if taken:
            raise RuntimeError(f"verdict facts: ids {', '.join(taken)} are in use; run again")
        v = self.values
        v.update(
            u=f"{MARK}u", g=f"{MARK}g", uid_u=ids[0], gid_g=ids[1], uid_num=ids[2], gid_num=ids[3],
            numuser=ids[4], numgroup=ids[5], orphan_uid=ids[6], orphan_gid=ids[7], free_id=ids[8],
        )
        self.run("groupadd", "-g", v["gid_g"], v["g"])
        self.cleanups.append(lambda: self.run("groupdel", v["g"]))
        self.run("groupadd", "-g", v["gid_num"], v["numgroup"])
        self.cleanups.append(lambda: self.run("groupdel", v["numgroup"]))
        self.run("useradd", "-M", "-u", v["uid_u"], "-g", v["gid_g"], "-s", "/bin/sh", "-d", "/nonexistent", v["u"])
        self.cleanups.append(lambda: self.run("userdel", v["u"]))
        self.run(
            "useradd", "-M", "-u", v["uid_num"], "-g", v["gid_num"], "-G", v["g"], "-s", "/bin/false", v["numuser"]
        )
        self.cleanups.append(lambda: self.run("userdel", v["numuser"]))
        self.run("gpasswd", "-a", v["u"], v["numgroup"])

    # --- listeners ---------------------------------------------------------------------------------
    def listen(self, name: str, family: int, address: str, *, v6only: bool | None = None, udp: bool = False) -> None:
        sock = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        if v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        sock.bind((address, 0))
        if not udp:
            sock.listen()
        self.cleanups.append(sock.close)
        self.values[name] = str(sock.getsockname()[1])

    def listeners(self) -> None:
        self.listen("p_v4_lo", socket.AF_INET, "127.0.0.1")
        self.listen("p_v4_any", socket.AF_INET, "0.0.0.0")
        self.listen("p_v6_lo", socket.AF_INET6, "::1")
        self.listen("p_v6_only", socket.AF_INET6, "::", v6only=True)
        self.listen("p_v6_dual", socket.AF_INET6, "::", v6only=False)
        self.listen("p_mapped", socket.AF_INET6, "::ffff:127.0.0.1")
        self.listen("p_udp_lo", socket.AF_INET, "127.0.0.1", udp=True)
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        self.values["p_closed"] = str(closed.getsockname()[1])
        closed.close()

    # --- processes ---------------------------------------------------------------------------------
    def processes(self) -> None:
        zomb = self.root / f"{MARK}z"
        zomb.symlink_to(shutil.which("sleep") or "/bin/sleep")
        parent = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import os, subprocess, time\n"
                "dead = [subprocess.Popen([os.environ['ZOMB'], '0']) for _ in range(2)]\n"
                "live = subprocess.Popen([os.environ['ZOMB'], '100000'])\n"
                "print(' '.join(str(p.pid) for p in dead + [live]), flush=True)\n"
                "time.sleep(100000)\n",
            ],
            env=dict(os.environ, ZOMB=str(zomb)),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert parent.stdout is not None
        pids = parent.stdout.readline().split()
        live = pids[2]

        def stop() -> None:
            for pid in (int(live), parent.pid):
                try:
                    os.kill(pid, 15)
                except ProcessLookupError:
                    pass
            parent.wait(10)

        self.cleanups.append(stop)
        wait_until(lambda: all(_state(p) == "Z" for p in pids[:2]), "two zombies")
        self.values.update(zpattern=f"{MARK}z", zlive=live)
        two = [subprocess.Popen(["sleep", f"{100000 + n}.{os.getpid()}"]) for n in (1, 2)]
        for proc in two:
            self.cleanups.append(proc.kill)
        self.values["sleep_a"] = f"100001.{os.getpid()}"
        self.values["sleep_b"] = f"10000[12].{os.getpid()}"

    # --- packages ----------------------------------------------------------------------------------
    def debs(self) -> None:
        for name, version in DEBS.items():
            build = self.root / "debs" / name
            (build / "DEBIAN").mkdir(parents=True)
            (build / "DEBIAN" / "control").write_text(
                f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: corpus <c@example.org>\n"
                "Description: deploytest verdict corpus\n"
            )
            self.run("dpkg-deb", "--root-owner-group", "-b", str(build), str(build) + ".deb")
        debs = [str(self.root / "debs" / f"{name}.deb") for name in DEBS]
        self.dpkg("-i", *debs)
        self.cleanups.append(lambda: self.dpkg("-P", *DEBS))

    def dpkg(self, *args: str) -> None:
        """dpkg, waiting while another dpkg holds its lock (two test runs side by side)."""
        deadline = time.monotonic() + 120
        while True:
            done = subprocess.run(["dpkg", *args], capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                return
            if "lock" not in done.stderr or time.monotonic() > deadline:
                raise RuntimeError(f"dpkg {' '.join(args[:1])} failed: {done.stderr.strip()[-300:]}")
            time.sleep(0.2)

    def wheels(self) -> None:
        venv = self.root / "venv"
        self.run(sys.executable, "-m", "venv", "--without-pip", str(venv))
        site = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for name, version in WHEELS.items():
            info = Path(site) / f"{name.replace('-', '_')}-{version}.dist-info"
            info.mkdir(parents=True)
            (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        self.values["venv_python"] = str(venv / "bin" / "python")
        self.values["bash_version"] = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "bash"], capture_output=True, text=True
        ).stdout

    # --- supervisor --------------------------------------------------------------------------------
    def supervisor(self) -> None:
        directory = self.root / "sv"
        directory.mkdir()
        conf = directory / "supervisord.conf"
        conf.write_text(SUPERVISOR_CONF.format(d=directory))
        proc = subprocess.Popen(
            ["supervisord", "-n", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def stop() -> None:
            proc.terminate()
            proc.wait(20)

        self.cleanups.append(stop)

        def running() -> bool:
            out = subprocess.run(["supervisorctl", "-c", str(conf), "status"], capture_output=True, text=True)
            return out.stdout.count("RUNNING") >= 2

        wait_until(running, "supervisord")
        self.values["sv_conf"] = str(conf)

    # --- disk (root) -------------------------------------------------------------------------------
    def mount(self) -> None:
        point = self.root / "mnt with space"
        point.mkdir()
        self.run("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(point))
        self.cleanups.append(lambda: self.run("umount", str(point)))
        self.values["mnt"] = str(point)

    # --- http --------------------------------------------------------------------------------------
    def http(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Body)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.cleanups.append(server.server_close)
        self.cleanups.append(server.shutdown)
        self.values["http"] = f"http://127.0.0.1:{server.server_address[1]}"


def _user_name(uid: int) -> str:
    import pwd

    return pwd.getpwuid(uid).pw_name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _has_entry(database: str, key: str) -> bool:
    """Whether ``getent database key`` finds anything (a name, or an id for digits)."""
    return subprocess.run(["getent", database, key], capture_output=True).returncode == 0


def _state(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return ""


def build() -> Facts:
    """Set up every fact this user can; root-only facts only as root."""
    facts = Facts()
    try:
        steps = [facts.files, facts.listeners, facts.processes, facts.wheels, facts.http, facts.supervisor]
        if IS_ROOT:
            steps = [facts.accounts, facts.root_files, facts.debs, facts.mount, *steps]
        for step in steps:
            step()
    except BaseException:
        facts.close()
        raise
    return facts
