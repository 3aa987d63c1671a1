#!/usr/bin/env python3
"""hello: the small web service that deploytest's example deploys.

GET /health answers 200 "ok <version>" while the release is healthy, 500 when the release carries a
BROKEN file (what the example's broken release does); GET / answers a greeting. GET /metrics gives
request counts, errors and a latency histogram in Prometheus' text format. A release may carry
ERROR_RATE (a fraction of GET / answered 500) and SLOW (seconds added to each GET /): what the
example's bad releases do to their metrics.
"""

import argparse
import http.server
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def read(name: str) -> str:
    try:
        with open(os.path.join(HERE, name), encoding="utf-8") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return ""


VERSION = read("VERSION") or "unknown"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _number(name: str) -> float:
    try:
        return float(read(name) or 0)
    except ValueError:
        return 0.0


ERROR_RATE = _number("ERROR_RATE")
SLOW = _number("SLOW")


class Metrics:
    """Counters and a latency histogram of GET / and /health, rendered in Prometheus' text format."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict = {}
        self.errors = 0
        self.greetings = 0
        self.buckets = [0] * len(BUCKETS)
        self.count = 0
        self.sum = 0.0

    def failing(self) -> bool:
        """Whether this greeting fails: exactly ERROR_RATE of them do, spread evenly."""
        with self.lock:
            self.greetings += 1
            n = self.greetings
        return int(n * ERROR_RATE) > int((n - 1) * ERROR_RATE)

    def observe(self, path: str, status: int, seconds: float) -> None:
        with self.lock:
            key = (path, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.errors += status >= 500
            self.count += 1
            self.sum += seconds
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.buckets[i] += 1

    def render(self) -> str:
        with self.lock:
            lines = ["# TYPE hello_http_requests_total counter"]
            lines += [f'hello_http_requests_total{{path="{p}",code="{c}"}} {n}'
                      for (p, c), n in sorted(self.requests.items())]
            lines += ["# TYPE hello_http_errors_total counter", f"hello_http_errors_total {self.errors}",
                      "# TYPE hello_http_request_duration_seconds histogram"]
            lines += [f'hello_http_request_duration_seconds_bucket{{le="{b}"}} {n}'
                      for b, n in zip(BUCKETS, self.buckets)]
            lines += [f'hello_http_request_duration_seconds_bucket{{le="+Inf"}} {self.count}',
                      f"hello_http_request_duration_seconds_sum {self.sum}",
                      f"hello_http_request_duration_seconds_count {self.count}",
                      "# TYPE hello_info gauge", f'hello_info{{version="{VERSION}"}} 1']
        return "\n".join(lines) + "\n"


METRICS = Metrics()


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "hello/" + VERSION

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        started = time.monotonic()
        if self.path == "/health":
            broken = read("BROKEN")
            status, body = (500, broken or "broken") if broken else (200, "ok " + VERSION)
        elif self.path == "/":
            time.sleep(SLOW)
            failing = METRICS.failing()
            status, body = (500, "failed") if failing else (200, "hello from release " + VERSION)
        elif self.path == "/metrics":
            status, body = 200, METRICS.render().rstrip("\n")
        else:
            status, body = 404, "not found"
        if self.path in ("/", "/health"):
            METRICS.observe(self.path, status, time.monotonic() - started)
        data = (body + "\n").encode()
        self.send_response(status)
        kind = "text/plain; version=0.0.4" if self.path == "/metrics" else "text/plain"
        self.send_header("Content-Type", kind + "; charset=utf-8")
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
