"""Notifications: ``notify: [{webhook: URL, on: [started, rolled_back, needs_human, done]}]``.

Each event is one JSON POST per webhook that asked for it: ``started`` (the preflight passed, before
anything changes), then one of ``done`` (exit 0), ``rolled_back`` (exit 1) or ``needs_human`` (exit 3),
whose body is the run's JSON report (:mod:`deploytest.report`) with an ``event`` key. Posts go out in
order from one background thread; a webhook that fails or does not answer within its ``timeout`` is
reported at the end of the run and never changes the rollout or its exit code. At the end the run
waits for what is still queued at most one ``timeout`` (plus a second).
"""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .errors import ConfigError

EVENTS = ("started", "rolled_back", "needs_human", "done")
#: The event that ends a run with each exit code (2, refused, changed nothing: no event).
EVENT_FOR_CODE = {0: "done", 1: "rolled_back", 3: "needs_human"}
DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Webhook:
    """One ``notify`` entry: where to POST, which events, how long one post may take, extra headers."""

    url: str
    on: tuple[str, ...] = EVENTS
    timeout: float = DEFAULT_TIMEOUT
    headers: Mapping[str, str] = field(default_factory=dict)

    def shown(self) -> str:
        """The URL without credentials or query (which may hold a token), for messages."""
        parts = urllib.parse.urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"


def _fail(key: str, expected: str, value: object) -> ConfigError:
    return ConfigError(f"config deploytest.{key}: expected {expected}, got {value!r}"[:200] + ". Nothing was changed.")


def parse_notify(raw: object) -> tuple[Webhook, ...]:
    """The ``notify`` list, validated.

    :raises ConfigError: one line naming the key and what was expected.
    """
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _fail("notify", "a list like [{webhook: URL, on: [rolled_back]}]", raw)
    hooks = []
    for index, item in enumerate(raw):
        where = f"notify[{index}]"
        if not isinstance(item, Mapping):
            raise _fail(where, "a mapping like {webhook: URL, on: [rolled_back]}", item)
        for key in item:
            if key not in ("webhook", "on", "timeout", "headers"):
                raise ConfigError(f"config deploytest.{where}.{key}: unknown key (expected one of: headers, on,"
                                  " timeout, webhook). Nothing was changed.")
        url = item.get("webhook")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) or any(c.isspace() for c in url):
            raise _fail(f"{where}.webhook", "an http:// or https:// URL", url)
        on = item.get("on", list(EVENTS))
        if isinstance(on, str):
            on = [on]
        if not isinstance(on, list) or not on or any(e not in EVENTS for e in on):
            raise _fail(f"{where}.on", "a list of events from: " + ", ".join(EVENTS), on)
        timeout = item.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 60:
            raise _fail(f"{where}.timeout", "a number of seconds from 0 to 60", timeout)
        headers = item.get("headers") or {}
        if not isinstance(headers, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in headers.items()):
            raise ConfigError(f"config deploytest.{where}.headers: expected a mapping of names to strings."
                              " Nothing was changed.")
        hooks.append(Webhook(url, tuple(on), float(timeout), dict(headers)))
    return tuple(hooks)


class Notifier:
    """Sends a run's events to its webhooks in order, from one background thread, never raising."""

    def __init__(self, hooks: tuple[Webhook, ...]) -> None:
        self.hooks = hooks
        self.failures: list[str] = []
        self.sent: list[str] = []
        self._queue: queue.Queue[Optional[tuple[Webhook, str, bytes]]] = queue.Queue()
        self._thread: Optional[threading.Thread] = None

    def event(self, name: str, body: Mapping[str, Any]) -> None:
        """Queue ``body`` (plus ``"event": name``) for every webhook that asked for ``name``."""
        data = json.dumps({"event": name, **body}, default=str).encode()
        for hook in self.hooks:
            if name in hook.on:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._send_all, name="deploytest-notify", daemon=True)
                    self._thread.start()
                self._queue.put((hook, name, data))

    def _send_all(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            hook, name, data = item
            request = urllib.request.Request(hook.url, data=data, method="POST",
                                             headers={"Content-Type": "application/json", **hook.headers})
            try:
                with urllib.request.urlopen(request, timeout=hook.timeout) as answer:  # noqa: S310
                    answer.read(1024)
                self.sent.append(f"{name} -> {hook.shown()}")
            except urllib.error.HTTPError as error:
                self.failures.append(f"{name} -> {hook.shown()}: HTTP {error.code}")
            except Exception as error:  # noqa: BLE001 - a notification never fails the rollout
                reason = getattr(error, "reason", None) or error
                self.failures.append(f"{name} -> {hook.shown()}: {reason}")

    def close(self) -> list[str]:
        """Wait for what is queued, at most the longest webhook ``timeout`` plus a second; the failures
        (and what could not be sent in time)."""
        if self._thread is None:
            return []
        self._queue.put(None)
        self._thread.join(max(h.timeout for h in self.hooks) + 1.0)
        failures = list(self.failures)
        if self._thread.is_alive():
            failures.append("still sending when the run ended (gave up waiting)")
        return failures


def started_body(run: Any) -> dict[str, Any]:
    """What ``started`` says: the app, the release, the hosts and their batches, what is live now."""
    from .config import plan_batches

    return {
        "app": run.settings.app,
        "release": run.release_id,
        "label": run.package.label if run.package is not None else None,
        "who": run.owner.who,
        "hosts": run.names,
        "batches": plan_batches(run.names, run.settings.rollout.batches),
        "live": {name: state.live for name, state in run.states.items()},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def finish(run: Any, task: str, error: Optional[BaseException]) -> None:
    """The run's closing event (by its exit code; none for a refusal), then wait for what is queued and
    print every notification that failed. Never raises."""
    from .errors import exit_code_for
    from .oncall import run_facts
    from .report_json import to_document

    notifier: Notifier = run.notifier
    try:
        code = exit_code_for(error) if error is not None else 0
        name = EVENT_FOR_CODE.get(code)
        if name is not None and run.release_id:
            notifier.event(name, to_document(run_facts(run, task, error)))
    except Exception as problem:  # noqa: BLE001 - a notification never changes the run's outcome
        notifier.failures.append(f"could not build the event: {type(problem).__name__}: {problem}")
    for failure in notifier.close():
        run.console.error(f"deploytest: notify: {failure} (the rollout is not affected)")
