"""Host keys checked as OpenSSH checks them.

Fabric's ``Connection`` accepts any host key (it installs ``AutoAddPolicy``); :func:`secure` fixes
that: keys are checked against the ``UserKnownHostsFile`` / ``GlobalKnownHostsFile`` of ssh_config
(OpenSSH defaults otherwise) and an unknown or changed key is refused, as OpenSSH would, unless
ssh_config says ``StrictHostKeyChecking no`` (or ``accept-new`` for an unknown key).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import paramiko
from fabric import Connection

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
