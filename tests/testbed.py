"""A real SSH test bed: OpenSSH servers the integration tests deploy to.

Two shapes, one interface (:class:`TestBed` holding :class:`Host` objects):

* :func:`start_local` -- one ``sshd`` on 127.0.0.1 on a free port.
* :func:`start_hosts` -- N hosts, each in its own network, PID, mount and UTS namespaces: its own
  address in the benchmark range 198.18.0.0/15 (a /30 point-to-point veth link per host), its own
  processes (``ps`` on one host never shows another's), its own hostname (= its ssh alias) and its
  own ``/srv`` (a per-host directory bind-mounted at /srv).  ``start_hosts(n, rtt_ms=50,
  jitter_ms=5)`` puts a round-trip time on the path to each host's sshd (see *Latency*).

Every host runs ``/usr/sbin/sshd`` at ``LogLevel VERBOSE`` logging to ``Host.log``, with its own
ed25519 host key.  All hosts of a bed share one client key, one ssh_config (``Host <alias>`` blocks with
HostName/Port/User root/IdentityFile/IdentitiesOnly/UserKnownHostsFile/StrictHostKeyChecking yes) and
one known_hosts file, so both Fabric (``fab -S <ssh_config>``) and OpenSSH's ``ssh -F`` can use them.

Namespaces: per host a *holder* (``unshare --pid --fork --kill-child --mount-proc``) makes the
namespaces; its child is the host's PID 1, a bash loop that reaps orphans at once as an init does (so
a daemon that exits never lingers as a zombie), with /proc mounted for that PID namespace.  sshd is
started into the init's namespaces with ``nsenter`` and daemonizes there, a child of that init, as on
a real server.  So stopping/starting sshd keeps /srv, the hostname and a :meth:`Host.tiny_disk`
mount, and :meth:`Host.sh` works while sshd is stopped.  Killing the holder ends its init and with it
every process of the host.

Latency: with ``rtt_ms`` one relay process per bed (asyncio, :func:`relay_main`) listens on each
host's address, port 22, inside the host's network namespace, and forwards to sshd on the host's
127.0.0.1:22, holding every chunk for ``rtt_ms / 2`` (plus up to +-``jitter_ms / 2``, never out of
order) each way; a new connection costs one round trip and a half more before sshd sees it, as a TCP
handshake does.  (``tc netem`` needs a kernel module this machine may not have.)  A cut host
(:meth:`Host.cut`) still drops packets before they reach the relay.

Cleanup: :meth:`TestBed.close` kills every process of the bed (by pid: holders, inits, sshds, the
relay, and whatever ran in the hosts' namespaces), deletes the network namespaces and veths and
removes the temp directory.  Beds still open at interpreter exit are closed by an ``atexit`` hook,
and :func:`sweep_stale` removes leftovers of earlier runs whose process is gone (names and process
environments carry the run token ``<pid>-<random>``).

Scale: up to :data:`MAX_HOSTS` hosts per bed; every host costs four small processes (holder, init,
its ``sleep``, sshd) and a network namespace.  Bring-up starts them all concurrently.

Requires root, /usr/sbin/sshd, ``ip`` (iproute2), ``unshare``/``nsenter`` (util-linux), ``bash``
and ``mount``; :func:`check_requirements` names what is missing.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

SSHD = "/usr/sbin/sshd"
ENV_MARK = "DEPLOYTEST_TESTBED"  # set in the environment of every process the bed starts
NETNS_PREFIX = "dtb-"  # netns names: dtb-<pid>-<rand>-<bed>-<host>
LINK_PREFIX = "dt"  # root-side veth names: dt<6 hex bed id><host number>
NETWORK = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 benchmark range
BASE_DIR = Path(tempfile.gettempdir()) / "deploytest-testbed"
LOCK_FILE = BASE_DIR / ".lock"
SESSION_LINE = "Starting session: command"
MAX_HOSTS = 2000  # link names dt<6 hex><number> stay within IFNAMSIZ; a MAC byte pair per number
CLONE_NEWNET = 0x40000000
# The host's PID 1: reap every child (orphans included) at once, as an init does.
INIT_LOOP = "trap 'exit 0' TERM; while :; do sleep infinity & wait $!; done"

RUN_TOKEN = f"{os.getpid()}-{secrets.token_hex(3)}"
_OPEN_BEDS: List[TestBed] = []
_BED_COUNTER = [0]
_LOCK = threading.Lock()


class TestBedError(RuntimeError):
    """The test bed could not be built (the message is one line saying why and what to do)."""


# --------------------------------------------------------------------------------------------------
# small helpers


def _run(args: Sequence[str], check: bool = True, input: Optional[str] = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(args), input=input, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TestBedError(f"{' '.join(args)}: {exc}") from None
    if check and proc.returncode != 0:
        raise TestBedError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _ip_batch(lines: Sequence[str], check: bool = True) -> None:
    if lines:
        # -force: carry on after an error (cleanup), still exiting non-zero.
        args = ["ip", "-force", "-batch", "-"] if not check else ["ip", "-batch", "-"]
        _run(args, check=check, input="\n".join(lines) + "\n")


def _pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    # "pid (comm) S ...": the state follows the last ')'.
    return stat[stat.rfind(b")") + 2:][:1] not in (b"Z", b"X", b"")


def _kill(pids: Sequence[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(pids: Sequence[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    left = [p for p in pids if _pid_alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = [p for p in left if _pid_alive(p)]


def _proc_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _ns_inode(pid: int, kind: str) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def _pids_by_ns(kinds: Sequence[str]) -> Dict[str, List[int]]:
    """``{"mnt:[4026532]": [pids], "pid:[...]": [...], ...}`` for the namespace kinds asked, in one
    pass over /proc."""
    out: Dict[str, List[int]] = {}
    for pid in _proc_pids():
        for kind in kinds:
            ident = _ns_inode(pid, kind)
            if ident is not None:
                out.setdefault(ident, []).append(pid)
    return out


def _netns_inode(name: Optional[str]) -> Optional[str]:
    """``net:[<inode>]`` of a named network namespace (as /proc/PID/ns/net reads), None if gone."""
    if name is None:
        return None
    try:
        return f"net:[{os.stat(f'/run/netns/{name}').st_ino}]"
    except OSError:
        return None


def _children(pid: int) -> List[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _nspid(pid: int) -> Optional[int]:
    """The pid of a process inside its own (innermost) PID namespace."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return None


def _read_int(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of a process, in seconds (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _pids_with_mark(pred: Any) -> List[int]:
    """Pids whose environment carries ENV_MARK=<token> with pred(token) true."""
    out = []
    needle = (ENV_MARK + "=").encode()
    for pid in _proc_pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = fh.read()
        except OSError:
            continue
        for item in env.split(b"\0"):
            if item.startswith(needle):
                if pred(item[len(needle):].decode(errors="replace")):
                    out.append(pid)
                break
    return out


def _token_pid(token: str) -> Optional[int]:
    m = re.match(r"(\d+)-[0-9a-f]+", token)
    return int(m.group(1)) if m else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(address: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _ed25519_keypair(comment: str) -> tuple[bytes, str]:
    """(private key in OpenSSH PEM format, public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, f"{public} {comment}"


def _write_key(path: Path, comment: str) -> str:
    private, public = _ed25519_keypair(comment)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    path.with_name(path.name + ".pub").write_text(public + "\n")
    return public


def known_hosts_line(address: str, port: int, public_key: str) -> str:
    """A known_hosts entry as OpenSSH writes it (``[addr]:port`` for ports other than 22)."""
    host = address if port == 22 else f"[{address}]:{port}"
    keytype, blob = public_key.split()[:2]
    return f"{host} {keytype} {blob}"


# --------------------------------------------------------------------------------------------------
# requirements


def check_requirements(netns: bool = True) -> Optional[str]:
    """None when this machine can run the bed, else one line saying what is missing and the fix."""
    if os.geteuid() != 0:
        return ("the SSH test bed needs root (namespaces, sshd on port 22, mounts): "
                "run the tests as root, e.g. in a container or with sudo")
    tools = {SSHD: "openssh-server", "nsenter": "util-linux", "unshare": "util-linux",
             "mount": "mount", "sleep": "coreutils", "bash": "bash"}
    if netns:
        tools["ip"] = "iproute2"
    missing = {tool: package for tool, package in tools.items() if shutil.which(tool) is None}
    named = [f"{tool} ({package})" for tool, package in missing.items()]
    fixes = [f"apt-get install -y {' '.join(dict.fromkeys(missing.values()))}"] if missing else []
    try:
        import cryptography  # noqa: F401
    except ImportError:
        named.append("python cryptography")
        fixes.append("pip install cryptography")
    if named:
        return f"the SSH test bed needs {', '.join(named)}: {'; '.join(fixes)}"
    return None


# --------------------------------------------------------------------------------------------------
# hosts


SSHD_CONFIG = """\
# generated by tests/testbed.py
Port {port}
ListenAddress {address}
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
Subsystem sftp internal-sftp
LogLevel VERBOSE
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
# As on a fleet's hosts that one control machine (or several) drives at once: no unauthenticated
# connection is dropped early (the default 10:30:100 starts refusing at 10), many sessions per
# connection (deploytest and Ansible multiplex), and no DNS lookups.
MaxStartups 200
MaxSessions 100
AcceptEnv LANG LC_*
"""


class Host:
    """One SSH host of a :class:`TestBed`.

    Attributes: ``name`` (ssh alias = hostname inside), ``address``, ``port`` (where clients connect),
    ``srv`` (directory on the root filesystem seen as /srv inside the host), ``log`` (sshd's log),
    ``dir`` (its config dir), ``netns`` (network namespace name, None for the local host),
    ``public_key`` (its host key line), ``init_pid`` (the host's PID 1, as this machine numbers it).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, bed: TestBed, name: str, address: str, port: int, directory: Path,
                 netns: Optional[str] = None, link: Optional[str] = None) -> None:
        self.bed = bed
        self.name = name
        self.address = address
        self.port = port
        self.dir = directory
        self.netns = netns
        self.link = link  # root-side veth
        self.srv = directory / "srv"
        self.log = directory / "sshd.log"
        self.sshd_config = directory / "sshd_config"
        self.host_key = directory / "ssh_host_ed25519_key"
        self.pid_file = directory / "sshd.pid"
        self.public_key = ""
        self.holder: Optional[subprocess.Popen[str]] = None  # unshare, parent of the host's PID 1
        self.init_pid: Optional[int] = None
        self._sshd_pid: Optional[int] = None
        self._starting: Optional[subprocess.Popen[bytes]] = None  # sshd until it daemonizes
        self._log_start = 0  # size of the log when the current sshd was started
        self._mnt_ns: Optional[str] = None
        self._pid_ns: Optional[str] = None

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address}:{self.port}>"

    @property
    def relayed(self) -> bool:
        """True when a latency relay sits in front of sshd (``start_hosts(..., rtt_ms=...)``)."""
        return self.bed.rtt_ms is not None and self.netns is not None

    @property
    def sshd_address(self) -> str:
        """Where sshd itself listens inside the host: behind a relay, the host's loopback."""
        return "127.0.0.1" if self.relayed else self.address

    # -- setup -------------------------------------------------------------------------------------

    def _prepare(self) -> None:
        self.dir.mkdir(parents=True)
        self.srv.mkdir()
        self.public_key = _write_key(self.host_key, f"root@{self.name}")
        self.sshd_config.write_text(SSHD_CONFIG.format(
            port=self.port, address=self.sshd_address, host_key=self.host_key, pid_file=self.pid_file,
            authorized_keys=self.bed.authorized_keys))

    def _holder_script(self) -> str:
        steps = []
        if self.netns is not None:
            steps += [f"ip addr add {self.address}/30 dev eth0", "ip link set eth0 up", "ip link set lo up"]
        steps += [f"mount --bind {self.srv} /srv", f"hostname {self.name}"]
        # The hosts share this machine's /root. A developer's ~/.bashrc (pyenv, conda...) would run
        # for every SSH command, unlike on a server; give each host an empty one in its own namespace.
        steps += ['{ [ ! -f /root/.bashrc ] || mount --bind /dev/null /root/.bashrc; }']
        # The copies of the other hosts' /run/netns mounts are of no use inside a host: with a
        # thousand hosts they would cost a thousand mounts each.
        steps += ["{ ! mountpoint -q /run/netns || umount -l /run/netns; }"]
        steps += ["echo ready", f"exec bash -c {shlex.quote(INIT_LOOP)} >/dev/null 2>&1 </dev/null"]
        return " && ".join(steps)

    def _spawn_holder(self) -> None:
        prefix = [] if self.netns is None else ["nsenter", f"--net=/run/netns/{self.netns}"]
        args = prefix + ["unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc",
                         "--propagation", "private", "sh", "-c", self._holder_script()]
        with open(self.dir / "holder.stderr", "wb") as err:
            self.holder = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=err, text=True, env=self.bed.process_env(),
                                           start_new_session=True)
        self.bed._pids.add(self.holder.pid)

    def _await_holder(self, timeout: float = 30) -> None:
        assert self.holder is not None and self.holder.stdout is not None
        line = self.holder.stdout.readline()  # "ready", or "" when the script failed
        self.holder.stdout.close()
        if line.strip() != "ready":
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.holder.wait(timeout)
            err = (self.dir / "holder.stderr").read_text(errors="replace").strip() or "(no output)"
            raise TestBedError(f"{self.name}: namespace setup failed: {err}")
        children = _children(self.holder.pid)
        if len(children) != 1:
            raise TestBedError(f"{self.name}: namespace setup failed: no init under {self.holder.pid}")
        self.init_pid = children[0]
        self.bed._pids.add(self.init_pid)
        self._mnt_ns = _ns_inode(self.init_pid, "mnt")
        self._pid_ns = _ns_inode(self.init_pid, "pid")

    # -- sshd --------------------------------------------------------------------------------------

    @property
    def pid(self) -> Optional[int]:
        """Pid of the listening sshd, as this machine numbers it (None when stopped)."""
        if self._sshd_pid is None or not _pid_alive(self._sshd_pid):
            return None
        return self._sshd_pid

    def _nsenter(self) -> List[str]:
        """``nsenter`` into the host's namespaces (net, mount, uts, pid).  It forks: the command is
        its child, inside the host; killing nsenter does not kill the command."""
        assert self.init_pid is not None
        return ["nsenter", "-t", str(self.init_pid), "-n", "-m", "-u", "-p"]

    def _spawn_sshd(self) -> None:
        if self.pid is not None:
            raise TestBedError(f"{self.name}: sshd already running (pid {self.pid})")
        self._log_start = len(self.log_text())
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        with open(self.dir / "sshd.stderr", "ab") as err:
            # sshd daemonizes inside the host: its listener's parent is the host's init.
            self._starting = subprocess.Popen(
                self._nsenter() + [SSHD, "-f", str(self.sshd_config), "-E", str(self.log)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=self.bed.process_env(),
                start_new_session=True)

    def _await_sshd(self, timeout: float = 20) -> None:
        """Wait until this sshd logs that it listens and has written its pid file.  Its own log
        line, not a probe connection: on the shared loopback another program may hold the port
        while our sshd fails to bind."""
        ready = f"Server listening on {self.sshd_address} port {self.port}."
        deadline = time.monotonic() + timeout
        starting, self._starting = self._starting, None
        if starting is not None:
            try:
                code = starting.wait(timeout)
            except subprocess.TimeoutExpired:
                starting.kill()
                code = starting.wait()
            if code != 0:
                raise TestBedError(f"{self.name}: sshd exited with {code}: {self._tail()}")
        while True:
            log = self.log_text()[self._log_start:]
            if ready in log:
                nspid = _read_int(self.pid_file)
                if nspid is not None:
                    break
            elif not self._sshd_processes():
                raise TestBedError(f"{self.name}: sshd exited: {self._tail()}")
            if time.monotonic() > deadline:
                raise TestBedError(f"{self.name}: sshd not listening on {self.sshd_address}:{self.port} "
                                   f"after {timeout}s: {self._tail()}")
            time.sleep(0.02)
        assert self.init_pid is not None
        found = [c for c in _children(self.init_pid) if _nspid(c) == nspid]
        if not found:
            raise TestBedError(f"{self.name}: sshd (pid {nspid} inside) is not running: {self._tail()}")
        self._sshd_pid = found[0]
        self.bed._pids.add(found[0])

    def _sshd_processes(self) -> List[int]:
        """The host init's children running our sshd: the daemon, once the foreground part of
        sshd has exited (an sshd that cannot bind logs why and exits)."""
        assert self.init_pid is not None
        found = []
        for pid in _children(self.init_pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if str(self.sshd_config).encode() in fh.read():
                        found.append(pid)
            except OSError:
                continue
        return found

    def _tail(self) -> str:
        text = ""
        for f in (self.log, self.dir / "sshd.stderr"):
            with contextlib.suppress(OSError):
                text += f.read_text(errors="replace")
        return " | ".join(text.strip().splitlines()[-3:]) or "(no log)"

    def stop_sshd(self) -> None:
        """Kill the listening sshd (by pid); new connections are refused.  Sessions already open
        keep running, as with a real ``systemctl stop ssh``."""
        pid = self.pid
        if pid is not None:
            _kill([pid], signal.SIGTERM)
            _wait_gone([pid], 5)
            if _pid_alive(pid):
                _kill([pid])
                _wait_gone([pid], 5)
            self.bed._pids.discard(pid)
        self._sshd_pid = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def start_sshd(self, timeout: float = 20) -> None:
        """Start sshd again in the same namespaces (same address, /srv, hostname, tiny_disk)."""
        self._spawn_sshd()
        self._await_sshd(timeout)

    def restart_sshd(self) -> None:
        self.stop_sshd()
        self.start_sshd()

    # -- faults ------------------------------------------------------------------------------------

    def cut(self) -> None:
        """Drop the host off the network: its link goes down, packets to it vanish, so new TCP
        connections (and established ones) time out rather than being refused."""
        if self.netns is None:
            raise NotImplementedError("cut() needs a namespaced host (make_hosts), not the local one")
        _run(["ip", "-n", self.netns, "link", "set", "eth0", "down"])

    def heal(self) -> None:
        """Undo :meth:`cut`."""
        if self.netns is None:
            raise NotImplementedError("heal() needs a namespaced host (make_hosts), not the local one")
        _run(["ip", "-n", self.netns, "link", "set", "eth0", "up"])

    def tiny_disk(self, size: str = "512k") -> None:
        """Mount a size-limited tmpfs over /srv inside the host (the current /srv content is hidden,
        ``srv`` no longer reflects it).  Survives stop/start_sshd; undone by :meth:`restore_disk`."""
        _run(self._nsenter_mnt() + ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", "/srv"])

    def restore_disk(self) -> None:
        """Unmount the :meth:`tiny_disk` tmpfs: /srv is the ``srv`` directory again."""
        _run(self._nsenter_mnt() + ["umount", "/srv"])

    def _nsenter_mnt(self) -> List[str]:
        assert self.init_pid is not None
        return ["nsenter", "-t", str(self.init_pid), "-m"]

    def sh(self, cmd: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``sh -c cmd`` inside the host's namespaces (net, mount, uts, pid), not over SSH: for
        test setup and assertions.  Does not count as an SSH session."""
        return subprocess.run(self._nsenter() + ["sh", "-c", cmd], capture_output=True, text=True,
                              check=check, timeout=timeout)

    # -- observation -------------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def sessions(self) -> int:
        """Remote command sessions (``exec`` requests) this host received so far.  sshd logs the line
        before it answers the request, so the count is current once the client's command started;
        use :meth:`wait_sessions` when another process did the work."""
        return self.log_text().count(SESSION_LINE)

    def wait_sessions(self, n: int, timeout: float = 5.0) -> int:
        """Wait until :meth:`sessions` >= n; return the count (which may be below n after timeout)."""
        deadline = time.monotonic() + timeout
        count = self.sessions()
        while count < n and time.monotonic() < deadline:
            time.sleep(0.02)
            count = self.sessions()
        return count

    def logins(self) -> int:
        """Successful SSH authentications (connections) this host received."""
        return self.log_text().count("Accepted publickey")

    def processes(self) -> List[int]:
        """Pids (as this machine numbers them) of every process in the host's PID namespace."""
        if self._pid_ns is None:
            return []
        return [p for p in _proc_pids() if _ns_inode(p, "pid") == self._pid_ns]

    def cpu_seconds(self) -> float:
        """CPU time the host has used so far: every live process of its PID namespace with what it
        reaped (sshd its sessions, the init the orphans and stopped sshds)."""
        return sum(_cpu_seconds(p) for p in self.processes())

    # -- teardown ----------------------------------------------------------------------------------

    def _all_pids(self, by_ns: Optional[Dict[str, List[int]]] = None) -> List[int]:
        """Every process of this host: holder, init, sshd, sessions and what they started."""
        if by_ns is None:
            by_ns = _pids_by_ns(("mnt", "pid", "net"))
        pids = set()
        for ident in (self._mnt_ns, self._pid_ns, _netns_inode(self.netns)):
            if ident is not None:
                pids.update(by_ns.get(ident, []))
        pids.update(p for p in (self.holder.pid if self.holder else None, self.init_pid, self._sshd_pid)
                    if p is not None)
        pids.discard(os.getpid())
        return sorted(pids)


class TestBed:
    """A set of SSH hosts sharing one client key, ssh_config and known_hosts."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, token: str, number: int) -> None:
        self.dir = directory
        self.token = token
        self.number = number
        self.hosts: List[Host] = []
        self.ssh_config = directory / "ssh_config"
        self.known_hosts = directory / "known_hosts"
        self.client_key = directory / "id_ed25519"
        self.authorized_keys = directory / "authorized_keys"
        self.home = directory / "home"
        self._pids: set[int] = set()
        self._links: List[str] = []
        self._netns: List[str] = []
        self._closed = False
        self.rtt_ms: Optional[float] = None  # round-trip time the relay adds (None: no relay)
        self.jitter_ms = 0.0
        self.relay: Optional[subprocess.Popen[str]] = None

    def __repr__(self) -> str:
        return f"<TestBed {self.token} {self.names}>"

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __getitem__(self, key: int | str) -> Host:
        """``bed[0]`` or ``bed["web1"]``."""
        if isinstance(key, str):
            return self.host(key)
        return self.hosts[key]

    @property
    def names(self) -> List[str]:
        return [h.name for h in self.hosts]

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    @property
    def mark(self) -> str:
        """This bed's mark: its directory name ``<run token>-<bed number>``."""
        return self.dir.name

    def process_env(self) -> Dict[str, str]:
        """Environment of the holder/sshd processes; ENV_MARK lets a later run find leftovers."""
        return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LC_ALL": "C",
                ENV_MARK: self.mark}

    def env(self) -> Dict[str, str]:
        """Environment for a subprocess such as ``fab -S <ssh_config> ...``: PATH (this Python's bin
        directory first) and a temporary HOME with an empty ~/.ssh, so the user's keys and config are
        not used."""
        bindir = str(Path(sys.executable).parent)
        path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        env = {"PATH": f"{bindir}:{path}" if bindir not in path.split(":") else path,
               "HOME": str(self.home), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "PYTHONUNBUFFERED": "1"}
        for key in ("VIRTUAL_ENV", "PYTHONPATH", "TMPDIR"):
            if key in os.environ:
                env[key] = os.environ[key]
        return env

    def fabric_config(self) -> Any:
        import fabric

        return fabric.Config(runtime_ssh_path=str(self.ssh_config))

    def connection(self, name: str, **kwargs: Any) -> Any:
        """``fabric.Connection(name, config=fabric_config(), **kwargs)``.  Note: Fabric itself does
        not check host keys (AutoAddPolicy); see :meth:`strict_connection`."""
        import fabric

        return fabric.Connection(name, config=self.fabric_config(), **kwargs)

    def strict_connection(self, name: str, known_hosts: Optional[Path] = None, **kwargs: Any) -> Any:
        """A Connection that checks the host key against known_hosts (RejectPolicy) when opened."""
        import paramiko

        conn = self.connection(name, **kwargs)
        conn.client.load_host_keys(str(known_hosts or self.known_hosts))
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return conn

    # -- files -------------------------------------------------------------------------------------

    def _prepare(self) -> None:
        self.dir.mkdir(parents=True)
        (self.home / ".ssh").mkdir(parents=True, mode=0o700)
        public = _write_key(self.client_key, f"deploytest-testbed-{self.token}")
        self.authorized_keys.write_text(public + "\n")

    def _write_client_files(self) -> None:
        blocks = []
        for h in self.hosts:
            blocks.append(
                f"Host {h.name}\n"
                f"    HostName {h.address}\n"
                f"    Port {h.port}\n"
                f"    User root\n"
                f"    IdentityFile {self.client_key}\n"
                f"    IdentitiesOnly yes\n"
                f"    UserKnownHostsFile {self.known_hosts}\n"
                f"    StrictHostKeyChecking yes\n")
        self.ssh_config.write_text("# generated by tests/testbed.py\n" + "\n".join(blocks))
        self.known_hosts.write_text(
            "".join(known_hosts_line(h.address, h.port, h.public_key) + "\n" for h in self.hosts))

    # -- teardown ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every process of the bed, delete its namespaces and links, remove its directory.
        Idempotent; never raises for things already gone."""
        if self._closed:
            return
        self._closed = True
        pids = set(self._pids)
        by_ns = _pids_by_ns(("mnt", "pid", "net"))
        for h in self.hosts:
            pids.update(h._all_pids(by_ns))
        pids.update(_pids_with_mark(lambda t: t == self.mark))
        pids.discard(os.getpid())
        _kill(sorted(pids))
        for proc in [h.holder for h in self.hosts] + [h._starting for h in self.hosts] + [self.relay]:
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.wait(5)
        _wait_gone(sorted(pids))
        # Deleting a namespace takes its veth pair with it, and the kernel frees many namespaces in
        # one go: a thousand hosts in about a second, where deleting each link takes a second per 50.
        with contextlib.suppress(Exception):
            _ip_batch([f"netns del {ns}" for ns in self._netns if Path(f"/run/netns/{ns}").exists()],
                      check=False)
        # A namespace lingers while a socket in it still holds it (a FIN retransmitted over a cut
        # link): once no link has gone for a second, delete what is left by name.
        deadline = time.monotonic() + 10
        left = list(self._links)
        progress = time.monotonic()
        while left and time.monotonic() < min(deadline, progress + 1.0):
            time.sleep(0.02)
            still = [link for link in left if Path(f"/sys/class/net/{link}").exists()]
            if len(still) < len(left):
                progress = time.monotonic()
            left = still
        with contextlib.suppress(Exception):
            _ip_batch([f"link del {link}" for link in left], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        with _LOCK:
            if self in _OPEN_BEDS:
                _OPEN_BEDS.remove(self)


# --------------------------------------------------------------------------------------------------
# building beds


def _new_bed() -> TestBed:
    BASE_DIR.mkdir(parents=True, exist_ok=True)
    with _LOCK:
        _BED_COUNTER[0] += 1
        number = _BED_COUNTER[0]
    bed = TestBed(BASE_DIR / f"{RUN_TOKEN}-{number}", RUN_TOKEN, number)
    with _LOCK:
        _OPEN_BEDS.append(bed)
    _install_exit_handlers()
    return bed


def _build(netns: bool, add_hosts: Callable[[TestBed], None]) -> TestBed:
    """Check the machine, make a bed, let ``add_hosts`` create and start its hosts, then write the
    client files.  On any failure the half-built bed is closed before the error propagates."""
    problem = check_requirements(netns=netns)
    if problem:
        raise TestBedError(problem)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    Path("/srv").mkdir(exist_ok=True)
    bed = _new_bed()
    try:
        bed._prepare()
        add_hosts(bed)
        bed._write_client_files()
    except BaseException:
        bed.close()
        raise
    return bed


def _bring_up(bed: TestBed) -> None:
    """Start holders, then sshds, of all hosts concurrently; wait for every sshd to listen."""
    for h in bed.hosts:
        h._spawn_holder()
    for h in bed.hosts:
        h._await_holder()
    for h in bed.hosts:
        h._spawn_sshd()
    for h in bed.hosts:
        h._await_sshd(60)


def start_local(name: str = "local") -> TestBed:
    """One sshd on 127.0.0.1 on a free port, in private PID, mount and UTS namespaces (own
    processes, /srv and hostname ``name``), sharing the machine's network.  ``cut``/``heal`` raise
    NotImplementedError."""

    def add_host(bed: TestBed) -> None:
        for attempt in range(5):
            host = Host(bed, name, "127.0.0.1", free_port(), bed.dir / name)
            shutil.rmtree(host.dir, ignore_errors=True)  # an earlier attempt's files
            host._prepare()
            bed.hosts = [host]
            try:
                _bring_up(bed)
                return
            except TestBedError:
                # The free port may have been taken meanwhile: try another one.
                if attempt == 4 or "Address already in use" not in host._tail():
                    raise
                pids = host._all_pids()
                _kill(pids)
                _wait_gone(pids)

    return _build(False, add_host)


def _used_addresses() -> set[ipaddress.IPv4Address]:
    out = _run(["ip", "-j", "-4", "addr", "show"], check=False).stdout or "[]"
    used = set()
    for link in json.loads(out):
        for a in link.get("addr_info", []):
            with contextlib.suppress(ValueError):
                used.add(ipaddress.ip_address(a["local"]))
    return used  # type: ignore[return-value]


def _existing_links() -> set[str]:
    try:
        return set(os.listdir("/sys/class/net"))
    except OSError:
        return set()


def start_hosts(n: int, prefix: str = "web", rtt_ms: Optional[float] = None,
                jitter_ms: float = 0.0) -> TestBed:
    """N hosts ``<prefix>1..<prefix>N``, each in its own network/PID/mount/UTS namespaces with its
    own 198.18.0.0/15 address (port 22), processes, hostname and /srv.

    :param rtt_ms: a round-trip time on the path to every host's sshd (a relay, see the module's
        docstring); None for none.  The hosts' own traffic (their loopback, the veth) is not delayed.
    :param jitter_ms: with ``rtt_ms``, each one-way delay varies by up to +- half of this.
    """
    if not 1 <= n <= MAX_HOSTS:
        raise ValueError(f"start_hosts: n must be between 1 and {MAX_HOSTS}")
    if rtt_ms is not None and (rtt_ms < 0 or jitter_ms < 0 or jitter_ms > rtt_ms):
        raise ValueError("start_hosts: rtt_ms must be >= 0 and 0 <= jitter_ms <= rtt_ms")

    def add_hosts(bed: TestBed) -> None:
        # Allocation of link names and addresses is serialised across runs with a file lock, so two
        # runs starting at the same time never pick the same /30s.
        with open(LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            links = _existing_links()
            while True:
                bid = secrets.token_hex(3)
                if not any(name.startswith(LINK_PREFIX + bid) for name in links):
                    break
            used = _used_addresses()
            slots = NETWORK.num_addresses // 4
            start = secrets.randbelow(slots)
            chosen: List[int] = []
            k = start
            while len(chosen) < n:
                base = NETWORK.network_address + 4 * (k % slots)
                if base + 1 not in used and base + 2 not in used:
                    chosen.append(k % slots)
                k += 1
                if k - start > slots:
                    raise TestBedError("no free /30 left in 198.18.0.0/15")
            root_cmds: List[str] = []
            for i in range(1, n + 1):
                name = f"{prefix}{i}"
                base = NETWORK.network_address + 4 * chosen[i - 1]
                netns = f"{NETNS_PREFIX}{bed.token}-{bed.number}-{i}"
                link = f"{LINK_PREFIX}{bid}{i}"
                host = Host(bed, name, str(base + 2), 22, bed.dir / name, netns=netns, link=link)
                bed.hosts.append(host)
                bed._netns.append(netns)
                bed._links.append(link)
                mac_in = f"02:{bid[0:2]}:{bid[2:4]}:{bid[4:6]}:{i >> 8:02x}:{i & 0xff:02x}"
                mac_out = f"06:{bid[0:2]}:{bid[2:4]}:{bid[4:6]}:{i >> 8:02x}:{i & 0xff:02x}"
                root_cmds += [
                    f"netns add {netns}",
                    f"link add {link} address {mac_out} type veth peer name eth0 address {mac_in} "
                    f"netns {netns}",
                    f"link set {link} alias {NETNS_PREFIX}{bed.token}",
                    f"addr add {base + 1}/30 dev {link}",
                    f"link set {link} up",
                    # A permanent neighbour entry: when the host is cut, packets are silently
                    # dropped (connect times out) instead of failing fast on ARP.
                    f"neigh replace {base + 2} lladdr {mac_in} dev {link} nud permanent",
                ]
            _ip_batch(root_cmds)
        bed.rtt_ms, bed.jitter_ms = rtt_ms, (jitter_ms if rtt_ms is not None else 0.0)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda h: h._prepare(), bed.hosts))
        _bring_up(bed)
        if rtt_ms is not None:
            _start_relay(bed)

    return _build(True, add_hosts)


# --------------------------------------------------------------------------------------------------
# latency


def _start_relay(bed: TestBed) -> None:
    """One relay process for the bed: listens on each host's address:port inside the host's network
    namespace and forwards to its sshd on 127.0.0.1 there, delayed (:func:`relay_main`)."""
    spec = {"rtt_ms": bed.rtt_ms, "jitter_ms": bed.jitter_ms,
            "hosts": [[f"/run/netns/{h.netns}", h.address, h.port, h.sshd_address, h.port]
                      for h in bed.hosts]}
    with open(bed.dir / "relay.stderr", "wb") as err:
        bed.relay = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "relay"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                     env=bed.process_env(), start_new_session=True)
    bed._pids.add(bed.relay.pid)
    assert bed.relay.stdin is not None and bed.relay.stdout is not None
    bed.relay.stdin.write(json.dumps(spec) + "\n")
    bed.relay.stdin.close()
    line = bed.relay.stdout.readline()
    bed.relay.stdout.close()
    if line.strip() != "ready":
        with contextlib.suppress(subprocess.TimeoutExpired):
            bed.relay.wait(5)
        err_text = (bed.dir / "relay.stderr").read_text(errors="replace").strip().splitlines()
        raise TestBedError(f"latency relay failed: {err_text[-1] if err_text else '(no output)'}")


def arrival(sent: float, previous: float, one_way: float, jitter: float,
            draw: Callable[[float, float], float]) -> float:
    """When a chunk sent at ``sent`` arrives: after ``one_way`` +- ``jitter / 2`` (``draw(lo, hi)``
    picks the offset), never before the chunk ahead of it, which arrived at ``previous`` (a TCP
    stream stays in order)."""
    return max(previous, sent + max(0.0, one_way + draw(-jitter / 2, jitter / 2)))


def relay_main() -> None:
    """The latency relay (``python testbed.py relay``, spec as one JSON line on stdin): prints
    ``ready`` once it listens for every host, then forwards until killed."""
    import asyncio
    import ctypes
    import random

    spec = json.loads(sys.stdin.readline())
    one_way = float(spec["rtt_ms"]) / 2000
    jitter = float(spec["jitter_ms"]) / 1000
    libc = ctypes.CDLL(None, use_errno=True)
    own_netns = os.open("/proc/self/ns/net", os.O_RDONLY)

    def in_netns(ns_fd: int, make: Callable[[], socket.socket]) -> socket.socket:
        # A socket belongs to the network namespace it was made in, whatever this thread does next.
        if libc.setns(ns_fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        try:
            return make()
        finally:
            libc.setns(own_netns, CLONE_NEWNET)

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                at, data = await queue.get()
                wait = at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                dst.write(data)
                await dst.drain()

        sender = asyncio.ensure_future(deliver())
        last = 0.0
        try:
            while True:
                try:
                    data = await src.read(262144)
                except OSError:
                    data = b""
                last = arrival(loop.time(), last, one_way, jitter, random.uniform)
                queue.put_nowait((last, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()

    async def connection(ns_fd: int, target: tuple[str, int], reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        upstream: Optional[asyncio.StreamWriter] = None
        try:
            await asyncio.sleep(3 * one_way)  # SYN, SYN-ACK, ACK: what a TCP handshake costs
            sock = in_netns(ns_fd, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, target)
            except OSError:
                sock.close()
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            up_reader, upstream = await asyncio.open_connection(sock=sock)
            client = writer.get_extra_info("socket")
            if client is not None:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.gather(pump(reader, upstream), pump(up_reader, writer), return_exceptions=True)
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.close()

    async def serve() -> None:
        servers = []
        for netns, address, port, target_address, target_port in spec["hosts"]:
            ns_fd = os.open(netns, os.O_RDONLY)
            listener = in_netns(ns_fd, functools.partial(socket.create_server, (address, port), backlog=1024))

            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             ns_fd: int = ns_fd, target: tuple[str, int] = (target_address, target_port)
                             ) -> None:
                await connection(ns_fd, target, reader, writer)

            servers.append(await asyncio.start_server(handle, sock=listener))
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


# --------------------------------------------------------------------------------------------------
# sweeping


def _stale(token: str) -> bool:
    pid = _token_pid(token)
    return pid is not None and pid != os.getpid() and not _pid_alive(pid)


def sweep_stale() -> List[str]:
    """Remove what earlier, dead runs left behind (their pid is gone): processes, network
    namespaces, veths, directories.  Returns a description of what was removed."""
    removed: List[str] = []
    pids = _pids_with_mark(_stale)
    # sshd overwrites its environment (process title), but its command line names its config file,
    # which lives in the bed's directory <BASE_DIR>/<token>-<n>/.
    cmd_re = re.compile(re.escape(str(BASE_DIR)).encode() + rb"/(\d+-[0-9a-f]+)-\d+/")
    for pid in _proc_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                found = cmd_re.search(fh.read())
        except OSError:
            continue
        if found and _stale(found.group(1).decode()):
            pids.append(pid)
    # ... and whatever runs in those processes' private mount namespaces (sessions, daemons).
    own = {_ns_inode(os.getpid(), "mnt"), _ns_inode(1, "mnt"), None}
    spaces = {_ns_inode(p, "mnt") for p in pids} - own
    if spaces:
        pids.extend(p for p in _proc_pids() if p != os.getpid() and _ns_inode(p, "mnt") in spaces)
    token_re = re.compile(re.escape(NETNS_PREFIX) + r"(\d+-[0-9a-f]+)-")
    netns_dead = []
    with contextlib.suppress(OSError):
        for ns in os.listdir("/run/netns"):
            m = token_re.match(ns)
            if m and _stale(m.group(1)):
                netns_dead.append(ns)
                out = _run(["ip", "netns", "pids", ns], check=False).stdout
                pids.extend(int(p) for p in out.split() if p.isdigit())
    links_dead = []
    if shutil.which("ip"):
        out = _run(["ip", "-j", "link", "show"], check=False).stdout or "[]"
        with contextlib.suppress(ValueError):
            for link in json.loads(out):
                alias = link.get("ifalias", "")
                if alias.startswith(NETNS_PREFIX) and _stale(alias[len(NETNS_PREFIX):]):
                    links_dead.append(link["ifname"])
    if pids:
        _kill(sorted(set(pids)))
        _wait_gone(pids)
        removed.append(f"{len(set(pids))} processes")
    lines = [f"link del {x}" for x in links_dead] + [f"netns del {x}" for x in netns_dead]
    if lines:
        with contextlib.suppress(Exception):
            _ip_batch(lines, check=False)
        removed += links_dead + netns_dead
    with contextlib.suppress(OSError):
        for entry in BASE_DIR.iterdir():
            m = re.match(r"(\d+-[0-9a-f]+)-\d+$", entry.name)
            if m and _stale(m.group(1)):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry))
    return removed


def close_all() -> None:
    """Close every bed this process still has open (atexit, signals)."""
    with _LOCK:
        beds = list(_OPEN_BEDS)
    for bed in beds:
        with contextlib.suppress(Exception):
            bed.close()


_HANDLERS_INSTALLED = [False]


def _on_signal(signum: int, frame: Any) -> None:
    close_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_exit_handlers() -> None:
    """atexit covers normal exits and Ctrl-C (pytest turns it into KeyboardInterrupt and runs the
    finalizers anyway); SIGTERM/SIGHUP, whose default action skips atexit, clean up first."""
    if _HANDLERS_INSTALLED[0]:
        return
    _HANDLERS_INSTALLED[0] = True
    atexit.register(close_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError, OSError):
                if signal.getsignal(sig) in (signal.SIG_DFL, None):
                    signal.signal(sig, _on_signal)


if __name__ == "__main__" and sys.argv[1:] == ["relay"]:
    relay_main()
