"""HTTP requests from the host: status, body, headers and JSON fields of the answer."""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from ..shell import quote
from .base import MAX_OUTPUT, Check, ProbeOutput, Verdict, as_list, quoted, size_text, snippet
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
                # in a subshell: stopped at the cap, it still leaves the files to remove
                '  (awk \'sub(/^  /, "") { if (/^HTTP\\//) { if (n++) print "" } print }\' "$f.h"',
                "   printf '\\n'; cat \"$f\"); grep -v '^  ' \"$f.h\" >&2",
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

    def direct_output(self) -> bool:
        return True  # the first max_output bytes of the response are judged; a longer one is stopped there

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
