"""What a test sees on a test host after a deploy: the live release, the releases, the lock, the app.

The hello example's layout is assumed: ``deploy_to`` /srv/hello, the app on port 8000 of each host.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, List, Optional

from deploytest.records import parse_record

PORT = 8000
DEPLOY_TO = "/srv/hello"


def link(host: Any) -> str:
    """Where ``current`` points on ``host``, as written in the link ('' if none)."""
    return host.sh(f"readlink {DEPLOY_TO}/current").stdout.strip()


def live(host: Any) -> str:
    """The release ``current`` points at on ``host`` ('' if none)."""
    out = link(host)
    return out.rsplit("/", 1)[-1] if out else ""


def releases_on(host: Any) -> List[str]:
    return sorted(host.sh(f"ls -1 {DEPLOY_TO}/releases 2>/dev/null").stdout.split())


def metadata(host: Any, release_id: str) -> Dict[str, Any]:
    out = host.sh(f"cat {DEPLOY_TO}/.deploytest/releases/{release_id}.meta").stdout
    return dict(parse_record(out))


def state_of(host: Any, release_id: str) -> str:
    """The release's state as deploytest reads it: a bad or verified marker wins over its metadata."""
    for marker in ("bad", "verified"):
        if host.sh(f"test -e {DEPLOY_TO}/.deploytest/releases/{release_id}.{marker}").returncode == 0:
            return marker
    return str(metadata(host, release_id).get("state", "none"))


def locked(host: Any) -> bool:
    return host.sh(f"test -e {DEPLOY_TO}/.deploytest/lock").returncode == 0


def served(host: Any) -> str:
    """What /health answers on the host itself."""
    return host.sh(f"curl -s -m 3 http://127.0.0.1:{PORT}/health").stdout.strip()


def wait_until(read: Callable[[], str], expected: str, timeout: float = 10) -> str:
    """What ``read()`` gives once it gives ``expected`` (or what it gave last, at ``timeout``)."""
    deadline = time.monotonic() + timeout
    answer = read()
    while answer != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        answer = read()
    return answer


def wait_served(host: Any, expected: str, timeout: float = 10) -> str:
    """What /health answers once it answers ``expected`` (or what it answered last)."""
    return wait_until(lambda: served(host), expected, timeout)


def snapshot(bed: Any) -> Dict[str, Any]:
    """Everything a failed or refused deploy must leave as it was: live release and release dirs."""
    return {h.name: (link(h), releases_on(h)) for h in bed.hosts}


def assert_clean(bed: Any, before: Optional[Dict[str, Any]] = None) -> None:
    """No lock anywhere, no release left half-built, and (with ``before``) nothing changed."""
    for host in bed.hosts:
        assert not locked(host), f"{host.name}: lock left behind"
        for rid in releases_on(host):
            assert state_of(host, rid) in ("complete", "verified", "bad"), (host.name, rid, metadata(host, rid))
        if before is not None:
            assert (link(host), releases_on(host)) == before[host.name], host.name


def output(proc: Any) -> str:
    return str(proc.stdout) + str(proc.stderr)


def events(host: Any) -> List[Dict[str, Any]]:
    """The host's audit log, one dict per line of log.jsonl."""
    out = host.sh(f"cat {DEPLOY_TO}/.deploytest/log.jsonl 2>/dev/null").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]
