"""Where commands run: a host over SSH or the local machine, one remote session per call.

Every remote interaction of deploytest goes through :meth:`Target.run`, which opens exactly one SSH
session (one ``exec`` channel) per call. That is what makes round trips countable: a verify attempt
is one call, a deploy step is one call, whatever the number of checks or files.

Fabric's ``Connection`` accepts any host key (it installs ``AutoAddPolicy``); :func:`connect` fixes
that: keys are checked against the ``UserKnownHostsFile`` / ``GlobalKnownHostsFile`` of ssh_config
(OpenSSH defaults otherwise) and an unknown or changed key is refused, as OpenSSH would, unless
ssh_config says ``StrictHostKeyChecking no`` (or ``accept-new`` for an unknown key).
"""

from __future__ import annotations

import getpass
import logging
import os
import select
import shlex
import signal
import socket
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence, TypeVar

import paramiko
from fabric import Connection
from invoke.config import Config

from .errors import HostKeyError, HostUnreachable, UsageError

T = TypeVar("T")
R = TypeVar("R")

LOCAL = "local"
_DEFAULT_CONNECT_TIMEOUT = 10

# paramiko logs a dropped connection's traceback (e.g. "Error reading SSH protocol banner") through
# logging's last-resort handler, i.e. to stderr; deploytest reports the failure itself, in one line.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


@dataclass(frozen=True)
class RunResult:
    """What one command run on one host gave back."""

    host: str
    exit_code: int
    stdout: str
    stderr: str
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.exit_code == 0

    def tail(self, lines: int = 5) -> str:
        """The last lines of stderr (or stdout when stderr is empty), for error messages."""
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return " | ".join(text[-lines:])


@dataclass(frozen=True)
class Reply:
    """An answer the control side gives a script while it runs, in the same session: once the script
    has printed the line ``after`` on stdout, ``answer(stdout so far)`` is written to its stdin
    (after any ``stdin`` given), which is then closed. A script that ends first gets no answer.

    This is how one session both runs a verify attempt's probes and logs the verdict this machine
    reached on their output.
    """

    after: str
    answer: Callable[[str], bytes]

    def due(self, out: bytes) -> bool:
        """True once ``out`` holds the line ``after``."""
        marker = self.after.encode()
        return (b"\n" + out).find(b"\n" + marker + b"\n") >= 0


class CommandTimeout(Exception):
    """A command ran past its time limit; the session was closed."""


class Cancelled(Exception):
    """Ctrl-C arrived while hosts worked in parallel: no new command starts until they have stopped."""


# Set while in_parallel() winds down after Ctrl-C, so the workers' next command does not start.
_CANCEL = threading.Event()


def _not_cancelled(name: str) -> None:
    if _CANCEL.is_set():
        raise Cancelled(f"{name}: interrupted (Ctrl-C)")


class Target(ABC):
    """A machine deploytest acts on: a host over SSH, or the local machine."""

    name: str

    @property
    def is_local(self) -> bool:
        """True for the local machine."""
        return False

    @abstractmethod
    def run(self, script: str, *, stdin: bytes | None = None, timeout: float | None = None,
            reply: Reply | None = None) -> RunResult:
        """Run ``script`` with ``/bin/sh`` in one session; never raises on a non-zero exit.

        :param script: POSIX shell text; callers quote everything they interpolate.
        :param stdin: bytes fed to the script's standard input (an upload archive, a password).
        :param timeout: seconds before the session is closed and :class:`CommandTimeout` raised.
        :param reply: more stdin, computed from what the script printed (see :class:`Reply`).
        :raises HostUnreachable: the host cannot be reached or the connection dropped.
        """

    def open(self) -> None:  # noqa: B027 - optional hook
        """Connect now (no-op for the local machine)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection, if any."""

    #: Seconds a command may run when the caller gives no timeout (None: no limit).
    default_timeout: float | None = None

    @property
    def user(self) -> str:
        """The login user on the target."""
        return getpass.getuser()

    def alive(self, timeout: float = 5.0) -> bool:
        """True when the target answers a trivial command within ``timeout`` seconds."""
        try:
            return self.run("true", timeout=timeout).ok
        except (HostUnreachable, CommandTimeout, HostKeyError):
            return False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class LocalTarget(Target):
    """The local machine, run through ``/bin/sh`` (``fab TASK`` without ``-H``)."""

    def __init__(self, name: str = LOCAL) -> None:
        self.name = name

    @property
    def is_local(self) -> bool:
        return True

    def run(self, script: str, *, stdin: bytes | None = None, timeout: float | None = None,
            reply: Reply | None = None) -> RunResult:
        _not_cancelled(self.name)
        started = time.monotonic()
        if timeout is None:
            timeout = self.default_timeout
        # Its own process group, so that a time-out or Ctrl-C stops the whole step (hooks included).
        proc = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        if reply is not None:
            return self._converse(proc, stdin, reply, started, timeout)
        data: bytes | None = stdin if stdin is not None else b""
        try:
            while True:
                try:
                    out, err = proc.communicate(data, timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    data = None  # given once; communicate() goes on feeding it
                    if _CANCEL.is_set():
                        raise Cancelled(f"{self.name}: interrupted (Ctrl-C)") from None
                    if timeout is not None and time.monotonic() - started > timeout:
                        raise CommandTimeout(f"{self.name}: command ran past {timeout}s") from None
        except BaseException:
            _stop_group(proc)
            raise
        return RunResult(
            self.name,
            proc.returncode,
            out.decode("utf-8", "replace"),
            err.decode("utf-8", "replace"),
            time.monotonic() - started,
        )


    def _converse(self, proc: subprocess.Popen[bytes], stdin: bytes | None, reply: Reply, started: float,
                  timeout: float | None) -> RunResult:
        """:meth:`run` with a :class:`Reply`: stdout read as it comes, the answer written once due."""
        out: list[bytes] = []
        err: list[bytes] = []
        readers = [threading.Thread(target=_read_all, args=(pipe, into), daemon=True)
                   for pipe, into in ((proc.stdout, out), (proc.stderr, err))]
        for reader in readers:
            reader.start()
        assert proc.stdin is not None
        pending: Reply | None = reply
        failure: BaseException | None = None
        try:
            if stdin:
                _write(proc.stdin, stdin)
            while proc.poll() is None or any(r.is_alive() for r in readers):
                if pending is not None and pending.due(b"".join(out)):
                    answer, pending = pending.answer, None
                    try:
                        _write(proc.stdin, answer(b"".join(out).decode("utf-8", "replace")))
                    except Exception as exc:  # noqa: BLE001 - raised once the script has ended
                        failure = exc
                    _close(proc.stdin)
                if _CANCEL.is_set():
                    raise Cancelled(f"{self.name}: interrupted (Ctrl-C)")
                if timeout is not None and time.monotonic() - started > timeout:
                    raise CommandTimeout(f"{self.name}: command ran past {timeout}s")
                time.sleep(0.01)
        except BaseException:
            _stop_group(proc)
            raise
        finally:
            _close(proc.stdin)
        if failure is not None:
            raise failure
        return RunResult(self.name, proc.returncode, b"".join(out).decode("utf-8", "replace"),
                         b"".join(err).decode("utf-8", "replace"), time.monotonic() - started)


def _read_all(pipe: Any, into: list[bytes]) -> None:
    while chunk := pipe.read1(65536):
        into.append(chunk)


def _write(pipe: Any, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.flush()
    except (BrokenPipeError, ValueError, OSError):
        pass  # the script ended or closed its stdin: it did not want the rest


def _close(pipe: Any) -> None:
    try:
        pipe.close()
    except (BrokenPipeError, ValueError, OSError):
        pass


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """TERM the process group of ``proc``, KILL it if it lingers, and reap ``proc``."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        proc.communicate(timeout=1)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        pass


class SSHTarget(Target):
    """A host over SSH, through a Fabric ``Connection`` whose host key was checked."""

    def __init__(self, connection: Connection, name: str | None = None) -> None:
        self.connection = connection
        self.name = name or connection.original_host
        self._lock = threading.Lock()

    @property
    def user(self) -> str:
        return str(self.connection.user)

    @property
    def known_as(self) -> str:
        """The name known_hosts keeps this host's key under (HostKeyAlias, else ``[host]:port``)."""
        alias = self.connection.ssh_config.get("hostkeyalias")
        return str(alias) if alias else _lookup_name(self.connection.host, self.connection.port)

    def open(self) -> None:
        with self._lock:
            if self.connection.is_connected:
                return
            try:
                _handshake(self.connection)
            except paramiko.BadHostKeyException as exc:
                raise HostKeyError(
                    f"{self.name}: host key does not match known_hosts (got {exc.key.get_name()});"
                    " refusing to connect. Nothing was changed.",
                    hosts=[self.name],
                    next_step=f"check the host's new key, then: ssh-keygen -R {shlex.quote(self.known_as)}",
                ) from exc
            except paramiko.SSHException as exc:
                if "not found in known_hosts" in str(exc):
                    raise HostKeyError(
                        f"{self.name}: host key is not in known_hosts; refusing to connect."
                        " Nothing was changed.",
                        hosts=[self.name],
                        next_step=f"verify the key, then: ssh-keyscan -p {self.connection.port}"
                        f" {self.connection.host} >> ~/.ssh/known_hosts",
                    ) from exc
                raise HostUnreachable(self.name, _describe(exc)) from exc
            except (OSError, EOFError) as exc:
                raise HostUnreachable(self.name, _describe(exc)) from exc
            transport = self.connection.client.get_transport()
            if transport is not None:
                _detect_dead_peer(transport.sock)

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001 - closing a dead connection may raise anything
            pass

    def run(self, script: str, *, stdin: bytes | None = None, timeout: float | None = None,
            reply: Reply | None = None) -> RunResult:
        _not_cancelled(self.name)
        self.open()
        started = time.monotonic()
        if timeout is None:
            timeout = self.default_timeout
        transport = self.connection.client.get_transport()
        if transport is None or not transport.is_active():
            raise HostUnreachable(self.name, "connection lost")
        try:
            channel = transport.open_session(timeout=_DEFAULT_CONNECT_TIMEOUT)
            channel.exec_command("/bin/sh -c " + shlex.quote(_ANNOUNCE_GROUP + script))
            if stdin:
                channel.sendall(stdin)
            if reply is None:
                channel.shutdown_write()
            out, err = _drain(channel, started, timeout, self.name, transport, reply)
            code = channel.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise HostUnreachable(self.name, _describe(exc)) from exc
        if code == -1:
            raise HostUnreachable(self.name, "connection lost while the command ran")
        _group, err = _split_group(err)
        return RunResult(
            self.name,
            code,
            out.decode("utf-8", "replace"),
            err.decode("utf-8", "replace"),
            time.monotonic() - started,
        )


# sshd runs each command in a session of its own; the first stderr line names its process group, so
# that a time-out or Ctrl-C can stop the whole remote step (its hooks included) from a second session.
_GROUP_MARK = b"@@dt-group "
_ANNOUNCE_GROUP = (
    "{ read -r _ _ _ _ dt_group _ </proc/$$/stat; } 2>/dev/null || dt_group=$$\n"
    "printf '@@dt-group %s\\n' \"$dt_group\" >&2\n"
)


def _split_group(err: bytes) -> tuple[int | None, bytes]:
    if not err.startswith(_GROUP_MARK):
        return None, err
    line, _, rest = err.partition(b"\n")
    try:
        return int(line[len(_GROUP_MARK):]), rest
    except ValueError:
        return None, rest


def _stop_remote(transport: paramiko.Transport, err: list[bytes]) -> None:
    """Stop a running remote step: TERM its process group, then KILL what is left, in a new session."""
    group, _rest = _split_group(b"".join(err))
    if group is None or group <= 1 or not transport.is_active():
        return
    try:
        channel = transport.open_session(timeout=5)
        channel.exec_command(f"kill -TERM -- -{group} 2>/dev/null; sleep 2; kill -KILL -- -{group} 2>/dev/null; true")
        channel.shutdown_write()
        deadline = time.monotonic() + 5
        while not channel.exit_status_ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        channel.close()
    except (OSError, EOFError, paramiko.SSHException):
        pass


def _drain(
    channel: paramiko.Channel,
    started: float,
    timeout: float | None,
    name: str,
    transport: paramiko.Transport,
    reply: Reply | None = None,
) -> tuple[bytes, bytes]:
    out: list[bytes] = []
    err: list[bytes] = []
    failure: BaseException | None = None
    try:
        while True:
            while channel.recv_ready():
                out.append(channel.recv(65536))
            if reply is not None and reply.due(b"".join(out)):
                answer, reply = reply.answer, None
                try:
                    channel.sendall(answer(b"".join(out).decode("utf-8", "replace")))
                except (OSError, EOFError, paramiko.SSHException):
                    raise
                except Exception as exc:  # noqa: BLE001 - raised once the script has ended
                    failure = exc
                channel.shutdown_write()
            while channel.recv_stderr_ready():
                err.append(channel.recv_stderr(65536))
            if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            if channel.closed and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            if not transport.is_active():
                raise HostUnreachable(name, "connection lost while the command ran")
            if _CANCEL.is_set():
                raise Cancelled(f"{name}: interrupted (Ctrl-C)")
            if timeout is not None and time.monotonic() - started > timeout:
                raise CommandTimeout(f"{name}: command ran past {timeout}s")
            _wait_readable(channel, 0.05)
    except (Cancelled, CommandTimeout, KeyboardInterrupt):
        _stop_remote(transport, err)
        channel.close()
        raise
    if failure is not None:
        raise failure
    return b"".join(out), b"".join(err)


def _wait_readable(channel: paramiko.Channel, seconds: float) -> None:
    """Wait until ``channel`` has something to read, or ``seconds`` pass.

    ``poll()``, not ``select()``: a fleet keeps a connection per host open, and ``select()`` refuses
    any descriptor past 1023 (a 1,000-host rollout failed on 645 hosts that way).
    """
    poller = select.poll()
    poller.register(channel.fileno(), select.POLLIN)
    poller.poll(int(seconds * 1000))


#: A host that stops answering (cable cut, kernel panic) is noticed within about this many seconds,
#: even while a long command runs on it: the kernel's TCP keepalive probes go unanswered.
DEAD_PEER_SECONDS = 12


def _detect_dead_peer(sock: object) -> None:
    """Turn on TCP keepalive with short timers, so a silent host fails its session instead of hanging.

    Without it a command running on a host whose network was cut waits for TCP's retransmission
    limit (15 minutes or more). Only for plain sockets (not a ProxyJump channel), only where the
    platform has the options.
    """
    if not isinstance(sock, socket.socket):
        return
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), 4),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), 2),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 3),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), DEAD_PEER_SECONDS * 1000),
    ]
    for level, option, value in options:
        if option is None:
            continue
        try:
            sock.setsockopt(level, option, value)
        except OSError:
            pass


#: Handshakes in flight at once from this process: enough to open a fleet quickly, few enough that
#: key exchanges on a busy control machine (each costs CPU on both ends) do not run past their time-outs.
HANDSHAKES_AT_ONCE = 32
#: Tries of a handshake that reached sshd and then stalled or was dropped (banner or key exchange
#: time-out, sshd's MaxStartups): a host that is merely slow under load is not unreachable. A TCP
#: connect that fails or times out is not tried again: that host is down or cut off.
HANDSHAKE_TRIES = 3
_HANDSHAKES = threading.BoundedSemaphore(HANDSHAKES_AT_ONCE)


def _handshake(connection: Connection) -> None:
    for attempt in range(1, HANDSHAKE_TRIES + 1):
        try:
            with _HANDSHAKES:
                connection.open()
            return
        except (paramiko.SSHException, EOFError) as exc:
            if attempt == HANDSHAKE_TRIES or not _stalled(exc):
                raise
            connection.close()
            time.sleep(0.2 * attempt)


def _stalled(exc: BaseException) -> bool:
    """A handshake that reached sshd and then timed out or was dropped, not a refusal."""
    if isinstance(exc, (paramiko.BadHostKeyException, paramiko.ssh_exception.NoValidConnectionsError)):
        return False
    if isinstance(exc, EOFError):
        return True
    words = str(exc).lower()
    if isinstance(exc, paramiko.AuthenticationException):
        return "timeout" in words
    return "banner" in words or "timed out" in words or "timeout" in words


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "connection timed out"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused"
    if isinstance(exc, paramiko.AuthenticationException):
        return f"authentication failed ({exc})"
    if isinstance(exc, EOFError) and not str(exc):
        return "connection closed"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


_KNOWN_HOSTS: dict[tuple[str, float, int], paramiko.HostKeys] = {}
_KNOWN_HOSTS_LOCK = threading.Lock()


def _known_hosts(path: str) -> paramiko.HostKeys:
    """The parsed known_hosts file at ``path``, parsed once per version of the file (a 1,000-line
    file costs ~80 ms of CPU to parse: once per host of a fleet was minutes and a copy per host)."""
    try:
        stat = os.stat(path)
    except OSError:
        return paramiko.HostKeys()
    key = (path, stat.st_mtime, stat.st_size)
    with _KNOWN_HOSTS_LOCK:
        if key not in _KNOWN_HOSTS:
            keys = paramiko.HostKeys()
            try:
                keys.load(path)
            except (OSError, paramiko.SSHException):
                pass
            _KNOWN_HOSTS[key] = keys
        return _KNOWN_HOSTS[key]


def _known_hosts_files(ssh_config: dict[str, Any]) -> list[str]:
    files: list[str] = []
    for key, default in (
        ("userknownhostsfile", "~/.ssh/known_hosts ~/.ssh/known_hosts2"),
        ("globalknownhostsfile", "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"),
    ):
        value = ssh_config.get(key, default)
        words = value if isinstance(value, list) else str(value).split()
        files.extend(os.path.expanduser(word) for word in words if word.lower() != "none")
    return files


def connect(host: str, config: Config | None = None, *, connect_timeout: float | None = None) -> SSHTarget:
    """A :class:`SSHTarget` for ``host`` (``[user@]host[:port]`` or an ssh_config alias).

    The host key is checked against known_hosts as OpenSSH does; the connection opens lazily.
    """
    kwargs: dict[str, Any] = {}
    if config is not None:
        kwargs["config"] = config
    connection = Connection(host, **kwargs)
    if connection.connect_timeout is None:
        connection.connect_timeout = int(connect_timeout or _DEFAULT_CONNECT_TIMEOUT)
    return SSHTarget(secure(connection), name=host)


def secure(connection: Connection) -> Connection:
    """Make ``connection`` check host keys against known_hosts as OpenSSH does; returns it.

    Fabric installs ``AutoAddPolicy`` and loads no known_hosts; this loads the files ssh_config names
    (or OpenSSH's defaults) and refuses unknown keys unless ``StrictHostKeyChecking`` says otherwise.
    """
    ssh_config = connection.ssh_config
    client = connection.client
    files = _known_hosts_files(ssh_config)
    # paramiko looks keys up under the name it connects to; OpenSSH under HostKeyAlias when set.
    seen_as = _lookup_name(connection.host, connection.port)
    alias = ssh_config.get("hostkeyalias")
    known = client.get_host_keys()
    for path in files:  # only this host's entries: a fleet's known_hosts is parsed once, not per host
        parsed = _known_hosts(path)
        for name in [seen_as] + ([str(alias)] if alias else []):
            for keytype, key in (parsed.lookup(name) or {}).items():
                known.add(name, keytype, key)
    if alias:
        aliased = known.lookup(str(alias))
        known.pop(seen_as, None)
        for keytype, key in (aliased or {}).items():
            known.add(seen_as, keytype, key)
    strict = str(ssh_config.get("stricthostkeychecking", "yes")).lower()
    if strict in ("no", "off", "false"):
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    elif strict == "accept-new":
        user_file = next((f for f in files if "known_hosts" in os.path.basename(f)), files[0] if files else "")
        client.set_missing_host_key_policy(_AcceptNew(user_file, str(alias) if alias else None))
    else:
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    if strict not in ("no", "off", "false"):
        # load_host_keys() makes paramiko save keys back there on close; keep known_hosts as it is.
        client._host_keys_filename = None  # noqa: SLF001
    if isinstance(connection.gateway, Connection):  # ProxyJump hops: their keys are checked too
        secure(connection.gateway)
    return connection


def _lookup_name(host: str, port: int) -> str:
    """How known_hosts names a host: ``host``, or ``[host]:port`` off port 22."""
    return host if int(port) == 22 else f"[{host}]:{port}"


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """OpenSSH's ``StrictHostKeyChecking accept-new``: an unknown key is accepted AND recorded in the
    user's known_hosts (under HostKeyAlias when set), so that a later change is refused."""

    def __init__(self, path: str, alias: str | None) -> None:
        self.path = path
        self.alias = alias

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        if not self.path:
            return
        name = self.alias or hostname
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as known:
                known.write(f"{name} {key.get_name()} {key.get_base64()}\n")
        except OSError:
            pass  # accepted for this run; OpenSSH too goes on when it cannot record the key


def host_list(hosts: str | Sequence[str] | None) -> list[str]:
    """The hosts of a run in order, repeats dropped: the one reading of a host list.

    :param hosts: a comma-separated string as ``fab -H`` and ``--deploytest-hosts`` take it (blanks
        around names and empty items dropped), or a sequence of host strings (kept as written, so that
        :func:`targets_for` can refuse a bad one).
    """
    names = [h.strip() for h in hosts.split(",") if h.strip()] if isinstance(hosts, str) else list(hosts or ())
    return list(dict.fromkeys(names))


def targets_for(hosts: Sequence[str], config: Config | None = None, *,
                connect_timeout: float | None = None) -> list[Target]:
    """Targets for host strings (``[user@]host[:port]`` or ssh_config aliases), repeats dropped; no
    hosts means the local machine.

    :raises UsageError: a host string that no host can have (empty, an option, spaces, shell syntax).
    """
    seen = host_list(hosts)
    if not seen:
        return [LocalTarget()]
    for host in seen:
        if not host or host.startswith("-") or any(ch.isspace() or ch in "\"'`$;&|<>\\" for ch in host):
            raise UsageError(f"bad host name {host!r}; nothing was changed.")
    return [connect(host, config, connect_timeout=connect_timeout) for host in seen]


def in_parallel(
    items: Iterable[T],
    fn: Callable[[T], R],
    *,
    limit: int = 10,
) -> list[tuple[T, R | BaseException]]:
    """Run ``fn`` over ``items`` with at most ``limit`` at once; results in input order.

    Exceptions are returned, not raised, so one host's failure never hides another's result. The
    calling thread waits in short slices so Ctrl-C reaches it; on Ctrl-C the commands running in the
    workers are stopped (their whole process group, on the host), no new command starts (the
    workers' :meth:`Target.run` raises :class:`Cancelled`), the calls not started are dropped, and
    ``KeyboardInterrupt`` is re-raised once every worker has returned.
    """
    items = list(items)
    if not items:
        return []
    if len(items) == 1:
        try:
            return [(items[0], fn(items[0]))]
        except Exception as exc:  # noqa: BLE001 - returned to the caller
            return [(items[0], exc)]
    results: dict[int, R | BaseException] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, min(limit, len(items))))
    futures: dict[Future[R], int] = {pool.submit(fn, item): index for index, item in enumerate(items)}
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in done:
                error = future.exception()
                results[futures[future]] = error if error is not None else future.result()
    except KeyboardInterrupt:
        _CANCEL.set()
        try:
            for future in futures:
                future.cancel()
            pool.shutdown(wait=True)
        finally:
            _CANCEL.clear()
        raise
    pool.shutdown(wait=True)
    return [(item, results[index]) for index, item in enumerate(items)]
