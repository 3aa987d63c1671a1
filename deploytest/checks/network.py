"""Ports and TCP seen from the host: what is listening (ss or /proc/net) and what answers a connect."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Union

from ..errors import ConfigError
from ..shell import quote
from .base import Check, ProbeOutput, Verdict, key_values, snippet
from .schema import Field


def _proc_address(hex_address: str) -> IPAddress:
    """The IP address of a ``/proc/net/tcp`` local address (little-endian 32-bit words)."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_ANY4 = ipaddress.IPv4Address("0.0.0.0")
_ANY6 = ipaddress.IPv6Address("::")


@dataclass(frozen=True)
class Listener:
    """A socket listening on the port: its address and, for ``::``, whether it is IPv6-only."""

    address: IPAddress
    v6only: bool | None = None

    def serves(self, wanted: IPAddress) -> bool:
        """Whether a client of ``wanted`` (an address of this host) reaches this socket."""
        if isinstance(wanted, ipaddress.IPv6Address) and wanted.ipv4_mapped is not None:
            wanted = wanted.ipv4_mapped  # v4 traffic, whatever the spelling
        address = self.address
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a v6 socket bound to one IPv4 address
        if address == _ANY6:
            return isinstance(wanted, ipaddress.IPv6Address) or self.v6only is False
        if address == _ANY4:
            return isinstance(wanted, ipaddress.IPv4Address)
        return address == wanted

    def __str__(self) -> str:
        if isinstance(self.address, ipaddress.IPv6Address) and self.address.ipv4_mapped is not None:
            return f"::ffff:{self.address.ipv4_mapped}"
        if self.address == _ANY6 and self.v6only is not None:
            return ":: (IPv6 only)" if self.v6only else ":: (IPv6 and IPv4)"
        return str(self.address)


def _ss_address(column: str) -> tuple[IPAddress, bool | None] | None:
    """Address and IPv6-only flag of an ``ss`` local column: ``*`` is a dual-stack ``::``."""
    host = column.rpartition(":")[0]
    if host == "*":
        return _ANY6, False
    v6only = True if host == "[::]" else None
    host = host.strip("[]").split("%")[0]
    try:
        return ipaddress.ip_address(host), v6only
    except ValueError:
        return None


def listeners(text: str, port: int, proto: str) -> list[Listener]:
    """The sockets listening on ``port``: /proc/net tables, with ``ss`` telling IPv6-only sockets apart.

    Without ``ss``, a ``::`` socket takes the host's default (``bindv6only=`` line of the probe).
    """
    from_proc: list[Listener] = []
    from_ss: list[tuple[IPAddress, bool | None]] = []
    listen_state = "0A" if proto == "tcp" else "07"
    section = ""
    for line in text.splitlines():
        if line.startswith("== "):
            section = line[3:]
            continue
        parts = line.split()
        if section.startswith("/proc/") and len(parts) >= 4 and parts[0].endswith(":"):
            address, _, hex_port = parts[1].partition(":")
            try:
                if int(hex_port, 16) == port and parts[3].upper() == listen_state:
                    from_proc.append(Listener(_proc_address(address)))
            except ValueError:
                continue
        elif section in ("ss", "netstat") and len(parts) >= 4:
            for column in parts[3:5]:
                if column.rpartition(":")[2] != str(port):
                    continue
                if proto == "tcp" and "LISTEN" not in line.upper():
                    break
                found = _ss_address(column)
                if found is not None:
                    from_ss.append(found)
                break
    default = key_values(text).get("bindv6only")
    default_v6only = {"0": False, "1": True}.get(default or "")
    if not from_proc:
        return _unique([Listener(a, f if f is not None else default_v6only) for a, f in from_ss])
    out = []
    for listener in from_proc:
        if listener.address == _ANY6:
            flags = [f for a, f in from_ss if a == _ANY6]
            v6only = flags[0] if flags and flags[0] is not None else default_v6only
            if flags and any(f is False for f in flags):
                v6only = False
            listener = Listener(_ANY6, v6only)
        out.append(listener)
    return _unique(out)


def _unique(items: list[Listener]) -> list[Listener]:
    return sorted(set(items), key=items.index)


class PortCheck(Check):
    """A TCP or UDP port open for listening on the host, IPv4 or IPv6.

    ``address`` is compared as an address: ``0:0:0:0:0:0:0:1`` is ``::1``, ``127.0.0.1`` is served by a
    ``::ffff:127.0.0.1`` socket, ``0.0.0.0`` serves every IPv4 address, ``::`` every IPv6 address and,
    unless it is IPv6-only, every IPv4 address too. A host name (``localhost``) is resolved on the host
    and green when a socket serves one of its addresses.
    """

    kind = "port"
    primary = "port"
    fields: ClassVar[dict[str, Field]] = {
        "port": Field("port", required=True),
        "proto": Field("str", default="tcp", choices=("tcp", "udp")),
        "address": Field("str"),
        "listening": Field("bool", default=True),
    }

    @classmethod
    def refine(cls, params: Mapping[str, Any], where: str) -> None:
        """Refuse an ``address`` that is neither an IP address nor a host name."""
        address = params.get("address")
        if address is not None and _literal(str(address)) is None:
            if re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", str(address)) is None:
                raise ConfigError(
                    f"{where}.address: expected an IP address or a host name, got {str(address)[:60]!r}."
                    " Nothing was changed."
                )

    def subject(self) -> str:
        proto = self.params["proto"]
        return f"{self.params['port']}" + ("/udp" if proto == "udp" else "")

    def expectation(self) -> str:
        where = f" on {self.params['address']}" if self.params.get("address") else ""
        return ("listening" if self.params["listening"] else "closed") + where

    def probe(self) -> str:
        proto = str(self.params["proto"])
        port = int(self.params["port"])
        flag = "t" if proto == "tcp" else "u"
        # ss asks the kernel for this port's sockets alone (netlink), and only ss tells an IPv6-only
        # socket on :: ("[::]:port") from a dual-stack one ("*:port"). Reading /proc/net/tcp walks
        # every socket of the host (slow on a busy one): only where ss is missing or fails.
        lines = [
            f"if command -v ss >/dev/null 2>&1 && echo '== ss' && ss -Hln{flag} 'sport = :{port}' 2>/dev/null"
            "; then :; else",
            "  found=0",
            f"  for f in /proc/net/{proto} /proc/net/{proto}6; do",
            '    if [ -r "$f" ]; then found=1; echo "== $f";'
            f" grep -E '^ *[0-9]+: [0-9A-F]+:{port:04X} ' \"$f\"; fi",
            "  done",
            f'  if [ "$found" = 0 ]; then echo "== netstat"; netstat -ln{flag}; fi',
            "fi",
            "v6=; read -r v6 </proc/sys/net/ipv6/bindv6only 2>/dev/null",
            'echo "bindv6only=$v6"',
        ]
        address = self.params.get("address")
        if address is not None and _literal(str(address)) is None:
            lines.append(
                f"getent ahosts {quote(address)} 2>/dev/null | awk '{{print \"resolved=\" $1}}' | sort -u"
            )
        lines.append("exit 0")
        return "\n".join(lines)

    def direct_output(self) -> bool:
        return True  # this port's sockets (a host without ss: its listeners), a line each

    def judge(self, output: ProbeOutput) -> Verdict:
        port = int(self.params["port"])
        proto = str(self.params["proto"])
        if "== " not in output.text:
            return Verdict(
                False,
                self.expectation(),
                "no socket table (/proc/net, ss, netstat)",
                snippet(output.error_text),
            )
        found = listeners(output.text, port, proto)
        wanted_text = self.params.get("address")
        note = ""
        if wanted_text:
            literal = _literal(str(wanted_text))
            if literal is not None:
                wanted = [literal]
            else:
                wanted = [a for a in map(_literal, _resolved(output.text)) if a is not None]
                note = f" ({wanted_text} is {', '.join(map(str, wanted)) or 'not resolvable on the host'})"
            found = [item for item in found if any(item.serves(w) for w in wanted)]
        observed = ("listening on " + ", ".join(map(str, found))) if found else f"nothing on {proto} port {port}"
        return Verdict(bool(found) == bool(self.params["listening"]), self.expectation(), observed + note)


def _literal(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _resolved(text: str) -> list[str]:
    return [line.partition("=")[2] for line in text.splitlines() if line.startswith("resolved=")]


class TcpCheck(Check):
    """A TCP connection from the host to ``host:port`` (bash /dev/tcp, else nc, else python3)."""

    kind = "tcp"
    primary = "host"
    fields: ClassVar[dict[str, Field]] = {
        "host": Field("name", required=True),
        "port": Field("port", required=True),
        "reachable": Field("bool", default=True),
    }

    def subject(self) -> str:
        return f"{self.params['host']}:{self.params['port']}"

    def expectation(self) -> str:
        return "reachable" if self.params["reachable"] else "unreachable"

    def probe(self) -> str:
        return "\n".join(
            [
                f"h={quote(self.params['host'])}; p={int(self.params['port'])}; w={self._connect_limit()}",
                # A silently dropped SYN must not hold the whole attempt: bound the connect itself.
                'if timeout 1 true >/dev/null 2>&1; then t="timeout $w"; else t=; fi',
                "if command -v bash >/dev/null 2>&1; then",
                '  $t bash -c \'exec 3<>"/dev/tcp/$1/$2"\' tcp "$h" "$p"',
                "elif command -v nc >/dev/null 2>&1; then",
                '  nc -z -w "$w" "$h" "$p"',
                "elif command -v python3 >/dev/null 2>&1; then",
                "  python3 -c 'import socket, sys;"
                " socket.create_connection((sys.argv[1], int(sys.argv[2])), int(sys.argv[3]))'"
                ' "$h" "$p" "$w"',
                "else echo 'no bash, nc or python3 on the host' >&2; exit 127; fi",
            ]
        )

    def _connect_limit(self) -> int:
        return max(1, int(self.timeout)) if self.timeout else 5

    def judge(self, output: ProbeOutput) -> Verdict:
        reachable = output.exit_code == 0
        if output.exit_code == 124:
            return Verdict(
                self.params["reachable"] is False, self.expectation(), "no answer (connect timed out)"
            )
        observed = "reachable" if reachable else "not reachable"
        detail = "" if reachable else snippet(output.error_text, 120)
        return Verdict(reachable == self.params["reachable"], self.expectation(), observed, detail)
