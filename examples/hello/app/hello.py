#!/usr/bin/env python3
"""hello: the small web service that deploytest's example deploys.

GET /health answers 200 "ok <version>" while the release is healthy, 500 when the release carries a
BROKEN file (what the example's broken release does); GET / answers a greeting.
"""

import argparse
import http.server
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def read(name: str) -> str:
    try:
        with open(os.path.join(HERE, name), encoding="utf-8") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return ""


VERSION = read("VERSION") or "unknown"


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "hello/" + VERSION

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path == "/health":
            broken = read("BROKEN")
            status, body = (500, broken or "broken") if broken else (200, "ok " + VERSION)
        elif self.path == "/":
            status, body = 200, "hello from release " + VERSION
        else:
            status, body = 404, "not found"
        data = (body + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        sys.stderr.write("%s %s\n" % (self.address_string(), format % args))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    args = parser.parse_args()
    if args.version:
        print(VERSION)
        return 0
    server = http.server.ThreadingHTTPServer((args.bind, args.port), Handler)
    print(f"hello {VERSION} listening on {args.bind}:{args.port} (pid {os.getpid()})", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
