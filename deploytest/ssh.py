"""A host over SSH: connecting with checked host keys, one session per command, and a dead host noticed.

Each :meth:`SSHTarget.run` opens one ``exec`` channel, drains it while watching for time-outs, Ctrl-C
and a peer that went silent, and stops the remote step's whole process group when it must. Opening a
fleet's connections is limited and retried (see :data:`HANDSHAKES_AT_ONCE`, :data:`HANDSHAKE_TRIES`);
host keys are checked in :mod:`deploytest.host_keys`.
"""

from __future__ import annotations

import logging
import select
import shlex
import socket
import threading
import time
from typing import Any, Sequence

import paramiko
from fabric import Connection
from invoke.config import Config

from .errors import HostKeyError, HostUnreachable, UsageError, interrupted
from .host_keys import _lookup_name, secure
from .hosts import _CANCEL, Cancelled, CommandTimeout, LocalTarget, Reply, RunResult, Target, _not_cancelled, host_list

_DEFAULT_CONNECT_TIMEOUT = 10

# paramiko logs a dropped connection's traceback (e.g. "Error reading SSH protocol banner") through
# logging's last-resort handler, i.e. to stderr; deploytest reports the failure itself, in one line.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


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
                _no_delay(transport.sock)  # also set before the handshake, unless a user's factory ran
                _detect_dead_peer(transport.sock)
                if isinstance(transport.sock, socket.socket):
                    transport.sock.settimeout(IDLE_POLL_SECONDS)

    def close(self) -> None:
        transport = self.connection.client.get_transport() if self.connection.is_connected else None
        if transport is not None and isinstance(transport.sock, socket.socket):
            try:  # wakes the connection's reader thread at once, however long its poll
                transport.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
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
            _exec(channel, "/bin/sh -c " + shlex.quote(_ANNOUNCE_GROUP + script))
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


def _exec(channel: paramiko.Channel, command: str) -> None:
    """Start ``command`` on the channel without waiting for sshd's answer (a round trip per session):
    the input follows at once, as OpenSSH's client sends it, and a refusal closes the channel, which
    reads as "connection lost while the command ran". Paramiko's own ``exec_command`` (which waits)
    where its channel lacks the parts this needs."""
    send = getattr(channel.transport, "_send_user_message", None)
    pending = getattr(channel, "_event_pending", None)
    if send is None or pending is None or not isinstance(getattr(channel, "remote_chanid", None), int):
        channel.exec_command(command)
        return
    message = paramiko.Message()
    message.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string("exec")
    message.add_boolean(True)
    message.add_string(command)
    pending()
    send(message)


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


#: How long a session waits, after its command ended, for the rest of an output that some process it
#: left behind keeps open (a daemon started without redirecting its stdout) before it stops reading.
OUTPUT_GRACE_SECONDS = 2.0


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
    quiet_since: float | None = None  # the command ended and nothing came since, nor the end of its output
    try:
        while True:
            arrived, printed = len(out) + len(err), len(out)
            while channel.recv_ready():
                out.append(channel.recv(65536))
            if reply is not None and len(out) > printed and reply.due(b"".join(out)):
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
            idle = not channel.recv_ready() and not channel.recv_stderr_ready()
            if channel.closed and idle:
                break
            # sshd sends the exit status as soon as the command ends, ahead of output the channel's
            # window still holds back: read on to the end of the output (EOF), or until a process the
            # command left behind has kept it open for OUTPUT_GRACE_SECONDS without a byte.
            if channel.exit_status_ready() and idle:
                if channel.eof_received:
                    break
                now = time.monotonic()
                if len(out) + len(err) > arrived or quiet_since is None:
                    quiet_since = now
                elif now - quiet_since > OUTPUT_GRACE_SECONDS:
                    break
            if not transport.is_active():
                raise HostUnreachable(name, "connection lost while the command ran")
            if _CANCEL.is_set():
                raise Cancelled(f"{name}: {interrupted()}")
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


def _no_delay(sock: object) -> None:
    """Send each SSH packet at once (``TCP_NODELAY``), as OpenSSH does for its sessions.

    With Nagle's algorithm on, a packet that follows one the host has not acknowledged yet waits for
    that acknowledgement, which the host delays (40 ms on Linux) while it has nothing to send back. A
    new session's open request follows the previous session's close that way: every session after a
    connection's first took 44-48 ms to open on an idle test host, 2.5 ms with this.
    """
    if isinstance(sock, socket.socket):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (a Unix socket from a ProxyCommand helper)
            pass


def _transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    """Paramiko's transport over ``sock``, with Nagle off from the handshake on (see :func:`_no_delay`)."""
    _no_delay(sock)
    return paramiko.Transport(sock, **kwargs)


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


#: How often an open connection's reader thread wakes up while nothing arrives. Paramiko polls its
#: socket every 0.1 s: 100 idle connections cost 34 ms of CPU a second on this machine, taken from the
#: busy ones. :meth:`SSHTarget.close` shuts the socket down first, so the thread still ends at once.
IDLE_POLL_SECONDS = 2.0
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
    connection.connect_kwargs.setdefault("transport_factory", _transport)
    return SSHTarget(secure(connection), name=host)


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
