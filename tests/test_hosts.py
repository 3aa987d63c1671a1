"""Connecting as OpenSSH would: host keys checked against known_hosts, ProxyJump hops included."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import fabric
import pytest

from deploytest.errors import HostKeyError
from deploytest.hosts import connect

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
