"""Checks over the network, seen from the host: HTTP requests, listening ports, TCP reachability."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, ClassVar

from .base import Check, ProbeOutput, Verdict, as_list, q, quoted, snippet
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


def json_path(document: Any, path: str) -> tuple[bool, Any]:
    """The value at a dotted path (``data.items.0.id``) and whether it exists."""
    node = document
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and re.fullmatch(r"-?\d+", part) and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


class HttpCheck(Check):
    """An HTTP request made from the host (curl, else wget, else python3); TLS verified by default."""

    kind = "http"
    primary = "url"
    output_cap = 256 * 1024
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
                f"u={q(self.params['url'])}",
                "if command -v curl >/dev/null 2>&1; then",
                "  echo tool=curl",
                f'  exec curl {" ".join(q(o) for o in curl_opts)} "$u"',
                "elif command -v wget >/dev/null 2>&1; then",
                "  echo tool=wget",
                "  f=$(mktemp) || exit 125",
                f'  wget -q -S -O "$f" {" ".join(q(o) for o in wget_opts)} "$u" 2>"$f.h"; rc=$?',
                # wget -S prints each response's headers indented; one blank line between responses.
                '  awk \'sub(/^  /, "") { if (/^HTTP\\//) { if (n++) print "" } print }\' "$f.h"',
                "  printf '\\n'; cat \"$f\"; grep -v '^  ' \"$f.h\" >&2",
                '  rm -f "$f" "$f.h"; exit $rc',
                "elif command -v python3 >/dev/null 2>&1; then",
                "  echo tool=python3",
                f'  exec python3 -c {q(_PY_HTTP)} {q(method)} "$u" {self._limit()}'
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
        cut = " (body cut at the cap)" if output.truncated else ""
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


def _proc_address(hex_address: str) -> str:
    """The IP address of a ``/proc/net/tcp`` local address (little-endian 32-bit words)."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def _listening(text: str, port: int, proto: str) -> list[str]:
    """Addresses bound to ``port`` from /proc/net sections or ``ss``/``netstat`` lines."""
    addresses: list[str] = []
    listen_state = "0A" if proto == "tcp" else "07"
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].endswith(":") and parts[0][:-1].isdigit():
            address, _, hex_port = parts[1].partition(":")
            try:
                if int(hex_port, 16) != port or parts[3].upper() != listen_state:
                    continue
                addresses.append(_proc_address(address))
            except ValueError:
                continue
        elif len(parts) >= 4:
            for column in parts[3:5]:
                host, sep, got_port = column.rpartition(":")
                if (
                    sep
                    and got_port == str(port)
                    and (proto == "udp" or "LISTEN" in line.upper() or parts[0].upper() == "LISTEN")
                ):
                    addresses.append(host.strip("[]").split("%")[0].replace("*", "0.0.0.0"))
                    break
    return sorted(set(addresses), key=addresses.index)


class PortCheck(Check):
    """A TCP or UDP port open for listening on the host, IPv4 or IPv6."""

    kind = "port"
    primary = "port"
    fields: ClassVar[dict[str, Field]] = {
        "port": Field("port", required=True),
        "proto": Field("str", default="tcp", choices=("tcp", "udp")),
        "address": Field("str"),
        "listening": Field("bool", default=True),
    }

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
        return "\n".join(
            [
                "found=0",
                f"for f in /proc/net/{proto} /proc/net/{proto}6; do",
                '  if [ -r "$f" ]; then found=1; echo "== $f";'
                f" grep -E '^ *[0-9]+: [0-9A-F]+:{port:04X} ' \"$f\"; fi",
                "done",
                f'if [ "$found" = 0 ]; then echo "== ss"; ss -Hln{flag} 2>/dev/null || netstat -ln{flag}; fi',
                "exit 0",
            ]
        )

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
        addresses = _listening(output.text, port, proto)
        wanted = self.params.get("address")
        if wanted:
            wildcard = {"0.0.0.0", "::"}
            addresses = [a for a in addresses if a == wanted or a in wildcard]
        observed = (
            ("listening on " + ", ".join(addresses)) if addresses else f"nothing on {proto} port {port}"
        )
        return Verdict(bool(addresses) == bool(self.params["listening"]), self.expectation(), observed)


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
                f"h={q(self.params['host'])}; p={int(self.params['port'])}; w={self._connect_limit()}",
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
