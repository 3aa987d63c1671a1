"""Connecting as OpenSSH would: host keys checked against known_hosts, ProxyJump hops included."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import fabric
import paramiko
import pytest
import testbed
from project import hello_bed

from deploytest.errors import HostKeyError, HostUnreachable
from deploytest.hosts import Reply
from deploytest.ssh import connect

pytestmark = pytest.mark.testbed


def jump_config(tmp_path: Path, jump: Any, behind: Any, jump_known_hosts: Path) -> Path:
    """An ssh_config where ``jumped`` is web1 of ``behind``, reached through the ``jump`` host."""
    jump_host, web1 = jump.hosts[0], behind.hosts[0]
    text = (
        f"Host hop\n    HostName 127.0.0.1\n    Port {jump_host.port}\n    User root\n"
        f"    IdentityFile {jump.client_key}\n    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {jump_known_hosts}\n    StrictHostKeyChecking yes\n\n"
        f"Host jumped\n    HostName {web1.address}\n    Port 22\n    User root\n"
        f"    IdentityFile {behind.client_key}\n    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {behind.known_hosts}\n    StrictHostKeyChecking yes\n    ProxyJump hop\n"
    )
    path = tmp_path / "ssh_config"
    path.write_text(text)
    return path


def test_proxyjump_reaches_the_host_behind(ssh_host: Any, make_hosts: Callable[..., Any], tmp_path: Path) -> None:
    behind = make_hosts(1)
    config = jump_config(tmp_path, ssh_host, behind, ssh_host.known_hosts)
    before, hops = behind.hosts[0].sessions(), ssh_host.hosts[0].logins()
    target = connect("jumped", fabric.Config(runtime_ssh_path=str(config)))
    try:
        result = target.run("hostname")
    finally:
        target.close()
    assert result.stdout.strip() == "web1"
    assert behind.hosts[0].sessions() == before + 1
    assert ssh_host.hosts[0].logins() == hops + 1  # the way in was through the jump host


def test_an_unknown_jump_host_key_is_refused(ssh_host: Any, make_hosts: Callable[..., Any], tmp_path: Path) -> None:
    behind = make_hosts(1)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    config = jump_config(tmp_path, ssh_host, behind, empty)
    before = behind.hosts[0].sessions()
    target = connect("jumped", fabric.Config(runtime_ssh_path=str(config)))
    with pytest.raises(HostKeyError) as info:
        try:
            target.run("hostname")
        finally:
            target.close()
    assert "known_hosts" in info.value.message
    assert behind.hosts[0].sessions() == before  # nothing ran behind an unverified hop


def test_an_unknown_host_key_is_refused_and_a_known_one_accepted(make_hosts: Callable[..., Any],
                                                                 tmp_path: Path) -> None:
    bed = make_hosts(1)
    target = connect("web1", bed.fabric_config())
    assert target.run("hostname").stdout.strip() == "web1"
    target.close()
    lines = bed.known_hosts.read_text()
    bed.known_hosts.write_text("")
    try:
        stranger = connect("web1", bed.fabric_config())
        with pytest.raises(HostKeyError):
            stranger.run("true")
        stranger.close()
        assert bed.known_hosts.read_text() == ""  # never written behind the user's back
    finally:
        bed.known_hosts.write_text(lines)


def _ssh_config(tmp_path: Path, bed: Any, host: Any, known: Path, *extra: str) -> Any:
    path = tmp_path / "ssh_config"
    path.write_text(f"Host {host.name}\n    HostName {host.address}\n    Port {host.port}\n    User root\n"
                    f"    IdentityFile {bed.client_key}\n    IdentitiesOnly yes\n    UserKnownHostsFile {known}\n"
                    + "".join(f"    {line}\n" for line in extra))
    return fabric.Config(runtime_ssh_path=str(path))


def test_accept_new_records_the_key_so_a_later_change_is_refused(make_hosts: Callable[..., Any],
                                                                 tmp_path: Path) -> None:
    bed = make_hosts(1)
    host = bed.hosts[0]
    known = tmp_path / "known_hosts"
    known.write_text("")
    config = _ssh_config(tmp_path, bed, host, known, "StrictHostKeyChecking accept-new")
    first = connect(host.name, config)
    assert first.run("hostname").stdout.strip() == host.name
    first.close()
    (line,) = known.read_text().splitlines()
    assert line == testbed.known_hosts_line(host.address, host.port, host.public_key)  # recorded
    # the host's key changes: accept-new refuses a key that differs from the recorded one
    other = testbed._write_key(tmp_path / "other_key", "someone else")
    known.write_text(testbed.known_hosts_line(host.address, host.port, other) + "\n")
    changed = connect(host.name, _ssh_config(tmp_path, bed, host, known, "StrictHostKeyChecking accept-new"))
    with pytest.raises(HostKeyError, match="does not match known_hosts") as info:
        changed.run("true")
    changed.close()
    assert "ssh-keygen -R" in info.value.next_step


def test_host_key_alias_is_where_the_key_is_looked_up(make_hosts: Callable[..., Any], tmp_path: Path) -> None:
    bed = make_hosts(1)
    host = bed.hosts[0]
    known = tmp_path / "known_hosts"
    keytype, blob = host.public_key.split()[:2]
    known.write_text(f"web-alias {keytype} {blob}\n")  # recorded under the alias only
    aliased = connect(host.name, _ssh_config(tmp_path, bed, host, known, "HostKeyAlias web-alias",
                                             "StrictHostKeyChecking yes"))
    assert aliased.run("hostname").stdout.strip() == host.name
    aliased.close()
    plain = connect(host.name, _ssh_config(tmp_path, bed, host, known, "StrictHostKeyChecking yes"))
    with pytest.raises(HostKeyError, match="not in known_hosts"):
        plain.run("true")
    plain.close()


def test_a_changed_key_is_named_as_such_by_status_verify_and_deploy(make_hosts: Callable[..., Any],
                                                                    tmp_path: Path) -> None:
    setup = hello_bed(make_hosts, tmp_path, 2)
    bed, project, hosts = setup["bed"], setup["project"], setup["hosts"]
    web1 = bed.hosts[0]
    other = testbed._write_key(tmp_path / "other_key", "a man in the middle")
    lines = bed.known_hosts.read_text().splitlines()
    lines[0] = testbed.known_hosts_line(web1.address, web1.port, other)
    bed.known_hosts.write_text("\n".join(lines) + "\n")
    for task in ("status", "verify", "deploy"):
        proc = project.fab(task, hosts=hosts)
        text = proc.stdout + proc.stderr
        assert "Traceback" not in text, text
        assert "ssh-keygen -R" in text and web1.address in text, (task, text)
        assert "reachable" not in text, (task, text)
        assert proc.returncode in ((3,) if task == "status" else (2,)), (task, text)
    status = project.fab("status", hosts=hosts)
    assert "host key refused for web1" in status.stderr, status.stderr


def test_a_fleets_worth_of_open_descriptors_does_not_break_a_session(ssh_host: Any) -> None:
    """A rollout keeps a connection per host open; past descriptor 1023 select() refuses to wait."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    spare = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    try:
        target = connect(ssh_host.hosts[0].name, ssh_host.fabric_config())
        assert target.run("echo fine").stdout.strip() == "fine"  # its socket is past descriptor 1023
        target.close()
    finally:
        for fd in spare:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_open_connection_watches_its_peer_polls_rarely_and_ends_its_thread_when_closed(ssh_host: Any) -> None:
    """TCP keepalive is on, so a silent host fails its session instead of hanging. Paramiko's reader
    thread wakes every 0.1 s on an idle connection (100 of them: 34 ms of CPU a second); ours waits
    IDLE_POLL_SECONDS, and closing shuts the socket down so the thread still ends at once, not a poll
    later."""
    from deploytest.ssh import DEAD_PEER_SECONDS, IDLE_POLL_SECONDS

    target = connect(ssh_host.hosts[0].name, ssh_host.fabric_config())
    assert target.run("true").exit_code == 0
    transport = target.connection.client.get_transport()
    assert transport is not None and transport.sock.gettimeout() == IDLE_POLL_SECONDS >= 1
    sock = transport.sock
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    if hasattr(socket, "TCP_KEEPIDLE"):
        idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
        interval = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
        probes = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
        assert idle + interval * probes <= DEAD_PEER_SECONDS, (idle, interval, probes)
    target.close()
    transport.join(0.5)
    assert not transport.is_alive()


def test_packets_leave_at_once_from_the_handshake_on(ssh_host: Any) -> None:
    """Nagle's algorithm is off (TCP_NODELAY) before the key exchange starts: with it on, each session
    after a connection's first waited for the host's delayed acknowledgement (44-48 ms on an idle test
    host, 2.5 ms without). A transport factory of the user's own (Fabric's connect_kwargs) is kept,
    and the option is still set once connected."""
    import paramiko

    from deploytest.ssh import connect

    seen: list[int] = []

    def recording(sock: Any, **kwargs: Any) -> Any:
        seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        return paramiko.Transport(sock, **kwargs)

    target = connect(ssh_host.hosts[0].name, ssh_host.fabric_config())
    ours = target.connection.connect_kwargs["transport_factory"]

    def watched(sock: Any, **kwargs: Any) -> Any:
        seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))  # as the socket came
        transport = ours(sock, **kwargs)
        seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))  # the handshake starts after
        return transport

    target.connection.connect_kwargs["transport_factory"] = watched
    assert target.run("true").exit_code == 0
    assert seen[0] == 0 and seen[1] != 0, seen
    target.close()

    seen.clear()
    config = ssh_host.fabric_config()
    config.connect_kwargs = {"transport_factory": recording}
    target = connect(ssh_host.hosts[0].name, config)
    assert target.connection.connect_kwargs["transport_factory"] is recording
    assert target.run("true").exit_code == 0
    transport = target.connection.client.get_transport()
    assert seen == [0] and transport is not None
    assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0  # set once connected
    target.close()


def test_known_hosts_is_parsed_once_per_version_of_the_file(tmp_path: Path) -> None:
    from deploytest.host_keys import _known_hosts

    path = tmp_path / "known_hosts"
    other = testbed._write_key(tmp_path / "k", "x")
    path.write_text(testbed.known_hosts_line("198.18.0.9", 22, other) + "\n")
    first = _known_hosts(str(path))
    assert _known_hosts(str(path)) is first and first.lookup("198.18.0.9") is not None
    path.write_text(path.read_text() + testbed.known_hosts_line("198.18.0.10", 2222, other) + "\n")
    assert _known_hosts(str(path)).lookup("[198.18.0.10]:2222") is not None  # a changed file is read again


class _DroppingFront:
    """A TCP front for one sshd that drops the first ``drop`` connections as soon as they arrive (what
    sshd's MaxStartups does to a burst of handshakes), then relays the rest to the sshd."""

    def __init__(self, address: str, port: int, drop: int) -> None:
        import socket
        import threading

        self.target, self.drop, self.accepted = (address, port), drop, 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            if self.accepted <= self.drop:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: Any, b: Any) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (a, b):
                try:
                    sock.shutdown(2)
                except OSError:
                    pass


def test_a_handshake_dropped_by_a_busy_sshd_is_tried_again(make_hosts: Callable[..., Any], tmp_path: Path) -> None:
    from deploytest import ssh

    bed = make_hosts(1)
    host = bed.hosts[0]
    known = tmp_path / "known_hosts"
    keytype, blob = host.public_key.split()[:2]
    known.write_text(f"web-alias {keytype} {blob}\n")
    front = _DroppingFront(host.address, host.port, drop=ssh.HANDSHAKE_TRIES - 1)
    path = tmp_path / "ssh_config"
    path.write_text(f"Host busy\n    HostName 127.0.0.1\n    Port {front.port}\n    User root\n"
                    f"    IdentityFile {bed.client_key}\n    IdentitiesOnly yes\n    UserKnownHostsFile {known}\n"
                    "    HostKeyAlias web-alias\n    StrictHostKeyChecking yes\n")
    target = connect("busy", fabric.Config(runtime_ssh_path=str(path)))
    try:
        assert target.run("hostname").stdout.strip() == host.name
    finally:
        target.close()
    assert front.accepted == ssh.HANDSHAKE_TRIES  # dropped twice, through on the last try

    front = _DroppingFront(host.address, host.port, drop=ssh.HANDSHAKE_TRIES)
    path.write_text(re.sub(r"Port \d+", f"Port {front.port}", path.read_text()))
    target = connect("busy", fabric.Config(runtime_ssh_path=str(path)))
    with pytest.raises(HostUnreachable):
        target.run("true")
    target.close()
    assert front.accepted == ssh.HANDSHAKE_TRIES  # and no more: then it is unreachable


def test_a_refused_connection_is_not_tried_again(tmp_path: Path) -> None:
    import socket

    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    path = tmp_path / "ssh_config"
    path.write_text(f"Host gone\n    HostName 127.0.0.1\n    Port {port}\n    StrictHostKeyChecking no\n")
    target = connect("gone", fabric.Config(runtime_ssh_path=str(path)))
    with pytest.raises(HostUnreachable, match="refused"):
        target.run("true")


CONVERSE = """IFS= read -r first; echo warming up >&2; sleep 0.3; echo "got $first"; echo ready
IFS= read -r answer || true; echo "answered $answer"; IFS= read -r more && echo "more $more"; echo done
"""


def _converse(target: Any) -> None:
    seen: list[str] = []

    def answer(out: str) -> bytes:
        seen.append(out)
        return b"verdict: green\n"

    result = target.run(CONVERSE, stdin=b"hello\n", reply=Reply("ready", answer), timeout=20)
    assert seen == ["got hello\nready\n"]  # called once, with what the script had printed
    assert result.stdout == "got hello\nready\nanswered verdict: green\ndone\n"  # stdin closed after it

    called: list[str] = []
    early = target.run("echo bye; exit 3", reply=Reply("ready", lambda out: called.append(out) or b""))
    assert (early.exit_code, early.stdout, called) == (3, "bye\n", [])  # ended first: no answer asked

    def broken(_out: str) -> bytes:
        raise ValueError("judge bug")

    with pytest.raises(ValueError, match="judge bug"):  # after the script ended on its closed stdin
        target.run(CONVERSE, stdin=b"x\n", reply=Reply("ready", broken), timeout=20)


def test_a_reply_answers_a_running_script_in_the_same_session(ssh_host: Any) -> None:
    target = connect(ssh_host.hosts[0].name, ssh_host.fabric_config())
    try:
        _converse(target)
    finally:
        target.close()


def test_a_reply_answers_a_running_local_script() -> None:
    from deploytest.hosts import LocalTarget

    _converse(LocalTarget())


def test_a_session_that_prints_a_lot_loses_none_of_it(ssh_host: Any) -> None:
    """sshd sends the exit status as soon as the command ends, ahead of output still held back by the
    channel's window: a session must read to the end of the output, not stop at the exit status
    (the preflight once lost a host's inspection behind 128 KiB of a baseline probe's output)."""
    target = connect(ssh_host.hosts[0].name, ssh_host.fabric_config())
    try:
        # all of it written at the very end, then the command ends: the exit status overtakes it
        script = "x=$(head -c 400000 /dev/zero | tr '\\0' x); printf '%s\\n' \"$x\"; echo last"
        for _ in range(40):
            result = target.run(script)
            assert (result.exit_code, len(result.stdout)) == (0, 400006), len(result.stdout)
            assert result.stdout.endswith("\nlast\n")
    finally:
        target.close()


def test_a_process_left_holding_the_output_costs_a_session_little(ssh_host: Any) -> None:
    """A command that leaves a process behind with its stdout open (a daemon started carelessly) ends
    its session once that output has been quiet for ssh.OUTPUT_GRACE_SECONDS, not when the process ends."""
    from deploytest import ssh

    target = connect(ssh_host.hosts[0].name, ssh_host.fabric_config())
    try:
        started = time.monotonic()
        result = target.run("sleep 20 & echo started")
        took = time.monotonic() - started
        assert result.stdout == "started\n" and result.exit_code == 0
        assert took < ssh.OUTPUT_GRACE_SECONDS + 8, took  # not the 20 s the sleep holds it open
    finally:
        target.run("pkill -x sleep || true")
        target.close()


class _RefusesCommands(paramiko.ServerInterface):
    """An SSH server (paramiko's) that lets anyone in and opens sessions, but runs no command."""

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: Any) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: Any, command: bytes) -> bool:
        return False


def test_a_command_the_server_refuses_is_an_error_at_once(ssh_host: Any, tmp_path: Path) -> None:
    # The command goes out without waiting for sshd's answer (a round trip per session saved): a
    # refusal must still end the run at once, not leave it waiting for output until its time-out.
    host_key = paramiko.RSAKey.generate(2048)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        transport = paramiko.Transport(conn)
        transport.add_server_key(host_key)
        transport.start_server(server=_RefusesCommands())
        channel = transport.accept(10)  # held open: a refusal is all the client gets
        done.wait(30)
        if channel is not None:
            with contextlib.suppress(EOFError, OSError):  # the client may have shut its socket already
                channel.close()
        transport.close()

    threading.Thread(target=serve, daemon=True).start()
    known = tmp_path / "known_hosts"
    known.write_text(testbed.known_hosts_line("127.0.0.1", port, f"ssh-rsa {host_key.get_base64()}") + "\n")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host refuser\n    HostName 127.0.0.1\n    Port {port}\n    User root\n"
                      f"    IdentityFile {ssh_host.client_key}\n    IdentitiesOnly yes\n"
                      f"    UserKnownHostsFile {known}\n    StrictHostKeyChecking yes\n")
    target = connect("refuser", fabric.Config(runtime_ssh_path=str(config)))
    started = time.monotonic()
    try:
        with pytest.raises(HostUnreachable):
            target.run("echo hi", stdin=b"some input\n", timeout=60)
        assert time.monotonic() - started < 10
    finally:
        done.set()
        target.close()
        listener.close()
