"""Checks over the network, seen from the host: HTTP requests, listening ports, TCP reachability."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Union

from ..errors import ConfigError
from ..shell import quote
from .base import MAX_OUTPUT, Check, ProbeOutput, Verdict, as_list, key_values, quoted, size_text, snippet
from .schema import Field

_PY_HTTP = r"""import ssl, sys, urllib.error, urllib.request
method, url, limit, insecure, follow = sys.argv[1:6]
ctx = ssl.create_default_context()
if insecure == "1":
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
handlers = [urllib.request.HTTPSHandler(context=ctx)]
if follow != "1":
    handlers.append(NoRedirect())
try:
    resp = urllib.request.build_opener(*handlers).open(urllib.request.Request(url, method=method),
                                                       timeout=float(limit))
except urllib.error.HTTPError as exc:
    resp = exc
except Exception as exc:
    sys.stderr.write("python3: %s\n" % exc)
    sys.exit(7)
out = sys.stdout.buffer
out.write(("HTTP/1.1 %d %s\r\n" % (getattr(resp, "code", None) or resp.status, resp.reason)).encode())
for key, value in resp.headers.items():
    out.write(("%s: %s\r\n" % (key, value)).encode("utf-8", "replace"))
out.write(b"\r\n")
out.write(resp.read())
"""


_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


def parse_http_response(raw: bytes, follow: bool) -> tuple[int | None, dict[str, str], bytes]:
    """Status, headers (lower-case names, last block) and body from ``curl -i``-style output."""
    status: int | None = None
    headers: dict[str, str] = {}
    rest = raw
    while rest.startswith(b"HTTP/"):
        blank = _BLANK_LINE.search(rest)
        block = rest if blank is None else rest[: blank.start()]
        rest = b"" if blank is None else rest[blank.end() :]
        lines = block.decode("iso-8859-1").splitlines()
        match = re.match(r"HTTP/\S+\s+(\d{3})", lines[0])
        if match is None:
            break
        status = int(match.group(1))
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        more = rest.startswith(b"HTTP/")
        if not (
            more
            and (
                100 <= status < 200
                or (follow and 300 <= status < 400)
                or status == 200
                and "connection established" in lines[0].lower()
            )
        ):
            break
    return status, headers, rest


def json_keys(path: str) -> list[str]:
    """The keys of a JSON path: ``a.b.0`` (``\\.`` is a dot inside a key), or a JSON Pointer ``/a.b/0``."""
    if path.startswith("/"):
        return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]
    keys = [""]
    escaped = False
    for char in path:
        if escaped:
            keys[-1] += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ".":
            keys.append("")
        else:
            keys[-1] += char
    return keys


def json_path(document: Any, path: str) -> tuple[bool, Any]:
    """The value at a path (see :func:`json_keys`) and whether it exists."""
    node = document
    for part in json_keys(path):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and re.fullmatch(r"-?\d+", part) and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


class HttpCheck(Check):
    """An HTTP request made from the host (curl, else wget, else python3); TLS verified by default.

    The first ``max_output`` bytes (16 MiB unless set) of the response are judged. A ``json`` path is
    dotted (``data.items.0.id``; ``a\\.b`` for a key with a dot) or a JSON Pointer (``/a.b/0``).
    """

    kind = "http"
    primary = "url"
    output_cap = MAX_OUTPUT
    fields: ClassVar[dict[str, Field]] = {
        "url": Field("url", required=True),
        "method": Field(
            "str", default="GET", choices=("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
        ),
        "status": Field("status", default=200),
        "contains": Field("text"),
        "matches": Field("regex"),
        "json": Field("json_map"),
        "header": Field("str_map"),
        "insecure": Field("bool", default=False),
        "follow": Field("bool", default=False),
        "max_output": Field("size"),
    }

    def subject(self) -> str:
        return str(self.params["url"])

    def expectation(self) -> str:
        return "status " + "/".join(str(s) for s in as_list(self.params["status"]))

    def _limit(self) -> int:
        return int(self.timeout) if self.timeout else 10

    def probe(self) -> str:
        method = str(self.params["method"])
        insecure = bool(self.params["insecure"])
        follow = bool(self.params["follow"])
        curl_opts = ["-sS", "-i", "--max-time", str(self._limit())]
        curl_opts += ["-I"] if method == "HEAD" else ["-X", method]
        curl_opts += ["-k"] if insecure else []
        curl_opts += ["-L"] if follow else []
        wget_opts = ["--content-on-error", "-T", str(self._limit()), "--method=" + method]
        wget_opts += ["--no-check-certificate"] if insecure else []
        wget_opts += [] if follow else ["--max-redirect=0"]
        return "\n".join(
            [
                f"u={quote(self.params['url'])}",
                "if command -v curl >/dev/null 2>&1; then",
                "  echo tool=curl",
                f'  exec curl {" ".join(quote(o) for o in curl_opts)} "$u"',
                "elif command -v wget >/dev/null 2>&1; then",
                "  echo tool=wget",
                "  f=$(mktemp) || exit 125",
                f'  wget -q -S -O "$f" {" ".join(quote(o) for o in wget_opts)} "$u" 2>"$f.h"; rc=$?',
                # wget -S prints each response's headers indented; one blank line between responses.
                '  awk \'sub(/^  /, "") { if (/^HTTP\\//) { if (n++) print "" } print }\' "$f.h"',
                "  printf '\\n'; cat \"$f\"; grep -v '^  ' \"$f.h\" >&2",
                '  rm -f "$f" "$f.h"; exit $rc',
                "elif command -v python3 >/dev/null 2>&1; then",
                "  echo tool=python3",
                f'  exec python3 -c {quote(_PY_HTTP)} {quote(method)} "$u" {self._limit()}'
                f" {'1' if insecure else '0'} {'1' if follow else '0'}",
                "else",
                "  echo 'no curl, wget or python3 on the host' >&2; exit 127",
                "fi",
            ]
        )

    def judge(self, output: ProbeOutput) -> Verdict:
        first, _, raw = output.stdout.partition(b"\n")
        tool = first.decode("utf-8", "replace").partition("=")[2] or "?"
        status, headers, body = parse_http_response(raw, bool(self.params["follow"]))
        expected = self.expectation()
        if status is None:
            reason = snippet(output.error_text, 160) or f"{tool} exit {output.exit_code}"
            return Verdict(False, expected, "no response", reason)
        text = body.decode("utf-8", "replace")
        body_note = f"body: {quoted(text)}" if text.strip() else ""
        if status not in as_list(self.params["status"]):
            return Verdict(False, expected, str(status), body_note)
        cut = f" (body cut at {size_text(self.capture_bytes())}; raise max_output)" if output.truncated else ""
        for name, wanted in (self.params.get("header") or {}).items():
            got = headers.get(str(name).lower())
            if got is None or (wanted and wanted not in got):
                return Verdict(
                    False,
                    f"header {name}: {wanted}" if wanted else f"header {name}",
                    f"{name}: {got}" if got is not None else f"no {name} header",
                )
        contains = self.params.get("contains")
        if contains is not None and contains not in text:
            return Verdict(False, f"body containing {quoted(contains)}", f"status {status}{cut}", body_note)
        pattern = self.params.get("matches")
        if pattern is not None and re.search(pattern, text, re.MULTILINE) is None:
            return Verdict(False, f"body matching /{pattern}/", f"status {status}{cut}", body_note)
        wanted_json = self.params.get("json")
        if wanted_json:
            try:
                document = json.loads(text)
            except ValueError:
                return Verdict(False, "a JSON body", f"status {status}, not JSON{cut}", body_note)
            for path, value in wanted_json.items():
                found, got = json_path(document, str(path))
                if not found:
                    return Verdict(
                        False, f"{path} = {json.dumps(value)}", f"no {path} in the JSON body", body_note
                    )
                if got != value or isinstance(got, bool) != isinstance(value, bool):
                    return Verdict(False, f"{path} = {json.dumps(value)}", f"{path} = {json.dumps(got)[:80]}")
        return Verdict(True, expected, str(status))


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
        lines = [
            "found=0",
            f"for f in /proc/net/{proto} /proc/net/{proto}6; do",
            '  if [ -r "$f" ]; then found=1; echo "== $f";'
            f" grep -E '^ *[0-9]+: [0-9A-F]+:{port:04X} ' \"$f\"; fi",
            "done",
            # Only ss tells an IPv6-only socket on :: ("[::]:port") from a dual-stack one ("*:port").
            f"if command -v ss >/dev/null 2>&1; then echo '== ss'; ss -Hln{flag} 2>/dev/null"
            f" | awk '$4 ~ /:{port}$/'",
            f'elif [ "$found" = 0 ]; then echo "== netstat"; netstat -ln{flag}; fi',
            'echo "bindv6only=$(cat /proc/sys/net/ipv6/bindv6only 2>/dev/null)"',
        ]
        address = self.params.get("address")
        if address is not None and _literal(str(address)) is None:
            lines.append(
                f"getent ahosts {quote(address)} 2>/dev/null | awk '{{print \"resolved=\" $1}}' | sort -u"
            )
        lines.append("exit 0")
        return "\n".join(lines)

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
