"""Gates between batches: ``rollout.soak`` and ``rollout.confirm``.

* ``soak: 60`` -- after a batch turned green, keep re-verifying it (one look every ``verify.interval``)
  for that many seconds before the next batch goes live; any red there fails the rollout.
* ``confirm: after_canary`` -- after the first batch (when more follow), ask before going on: a prompt
  on a terminal; without one (CI), ``confirm_url`` must answer 2xx, asked every few seconds until
  ``confirm_timeout``. A refusal, a time-out or nobody to ask fails the rollout: everything switched is
  rolled back (exit 1).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any, Callable, Optional

from .checks.runner import HostReport
from .config import VerifySettings
from .errors import ChecksFailed

if TYPE_CHECKING:
    from .rollout import Rollout

#: How often ``confirm_url`` is asked.
POLL_SECONDS = 2.0


def after_batch(run: Rollout, batch: list[str], number: int, batches: int) -> None:
    """The gates after batch ``number`` (of ``batches``) went live green: soak, then confirm.

    :raises ChecksFailed: red while soaking, or not confirmed (the flow then rolls back).
    """
    rollout = run.settings.rollout
    live = [n for n in batch if n not in run.failed and n not in run.tolerated]
    if run.background is not None:
        run.background.check()  # red on a batch switched before: abort before going on
    if rollout.soak > 0 and run.verifying and run.verifies and live:
        soak(run, live, rollout.soak)
    if rollout.confirm == "after_canary" and number == 1 and batches > 1:
        confirm(run)
    if rollout.analysis == "background" and run.verifying and run.settings.checks and number < batches:
        if run.background is None:
            run.background = Background(run)
        run.background.add(live)


class Background:
    """``rollout.analysis: background``: the checks of the batches already green, one look every
    ``verify.interval`` while later batches go live. A red look is kept and raised (as ChecksFailed)
    at the next gate, between batches, so the flow rolls back everything switched so far; each gate
    first waits for a look that took in every batch added before it (however fast the batch between
    went live); the thread ends once the run is no longer pending."""

    def __init__(self, run: Rollout) -> None:
        self.run = run
        self.names: list[str] = []
        self.red: Optional[str] = None
        self.red_hosts: dict[str, str] = {}
        self.red_reports: list[HostReport] = []
        self.looks = 0
        self._added = 0  # add() calls so far
        self._looked = 0  # add() calls the last finished look took in
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="deploytest-analysis", daemon=True)
        self._thread.start()

    def add(self, names: list[str]) -> None:
        """Watch these hosts too (a batch that just turned green)."""
        with self._lock:
            self.names += [n for n in names if n not in self.names]
            self._added += 1

    def _watch(self) -> None:
        run = self.run
        interval = max(run.settings.verify.interval, 0.5)
        only = [c.name for c in run.settings.checks]
        try:
            self._looks(interval, only)
        finally:
            with self._lock:
                self._lock.notify_all()

    def _looks(self, interval: float, only: list[str]) -> None:
        run = self.run
        while not self._stop.wait(interval) and run.outcome == "pending":
            with self._lock:
                names, added = list(self.names), self._added
            try:
                report = run.verify(names, VerifySettings(0, interval), only)
            except Exception as error:  # noqa: BLE001 - the watcher must not die silently
                self.red = f"could not verify {', '.join(names)}: {error}"
                return
            self.looks += 1
            with self._lock:
                self._looked = added
                self._lock.notify_all()
            red = [h for h in report.hosts if not h.ok]
            if red and run.outcome == "pending":
                self.red_reports = red
                self.red_hosts = {h.host: h.error or "; ".join(f"{r.name}: {r.verdict.observed}"
                                                               for r in h.results if not r.ok) for h in red}
                self.red = "; ".join(f"{host} (background analysis: {why})" for host, why in self.red_hosts.items())
                return

    def check(self) -> None:
        """Wait for a look at every batch added so far, then
        :raises ChecksFailed: a look at an earlier batch was red (its hosts then count as failed)."""
        with self._lock:
            self._lock.wait_for(lambda: self._looked >= self._added or self.red is not None
                                or self._stop.is_set() or not self._thread.is_alive())
        if self.red is not None:
            self._stop.set()
            run = self.run
            if run.after is not None:  # the background's results are those hosts' last word in the reports
                run.after.hosts = [h for h in run.after.hosts if h.host not in self.red_hosts] + self.red_reports
            for host, why in self.red_hosts.items():  # from this (the flow's) thread: run.failed is the flow's
                self.run.failed.setdefault(host, f"background analysis: {why}")
                self.run.console.host(host, "analysis", why, "red")
            raise ChecksFailed(f"background analysis after {self.looks} look(s): {self.red}")

    def stop(self) -> None:
        """No more looks (the run is ending)."""
        self._stop.set()


def soak(run: Rollout, names: list[str], seconds: float, *, sleep: Callable[[float], None] = time.sleep) -> None:
    """Re-verify ``names`` (one look each time) every ``verify.interval`` for ``seconds``; any red fails."""
    from .rollout import summary

    interval = max(run.settings.verify.interval, 0.5)
    run.console.stage(f"soak: re-verifying {', '.join(names)} for {seconds:g}s")
    ends = time.monotonic() + seconds
    looks = 0
    while time.monotonic() < ends:
        sleep(min(interval, max(ends - time.monotonic(), 0)))
        report = run.verify(names, VerifySettings(0, interval))
        looks += 1
        red = [h for h in report.hosts if not h.ok]
        if red:
            if run.after is not None:  # the soak's results are the batch's last word
                others = [h for h in run.after.hosts if h.host not in {r.host for r in report.hosts}]
                run.after.hosts = others + report.hosts
            for host in red:
                why = host.error or "; ".join(f"{r.name}: {r.verdict.observed}" for r in host.results if not r.ok)
                run.failed.setdefault(host.host, f"soak: {why}")
                run.console.host(host.host, "soak", summary(host), "red")
            raise ChecksFailed(f"red while soaking after {looks} look(s): "
                               + "; ".join(f"{h.host} ({run.failed[h.host]})" for h in red))
    for name in names:
        run.console.host(name, "soak", f"green for {seconds:g}s ({looks} looks)", "green")


def confirm(run: Rollout, *, ask: Optional[Callable[[str], str]] = None) -> None:
    """Ask whether to go on after the canary: a terminal prompt, else ``confirm_url`` until the time-out.

    :raises ChecksFailed: refused, timed out, or nobody to ask.
    """
    rollout = run.settings.rollout
    switched = ", ".join(sorted(run.switched)) or "nothing"
    run.console.end_progress()
    run.console.stage(f"confirm: the canary ({switched}) is green; go on with the rest?")
    if ask is not None or (sys.stdin.isatty() and sys.stderr.isatty() and not os.environ.get("CI")):
        prompt = f"Go on with the other {len(run.targets) - len(run.switched)} host(s)? [y/N] "
        answer = (ask or _terminal)(prompt).strip().lower()
        if answer not in ("y", "yes"):
            raise ChecksFailed(f"not confirmed after the canary (answered {answer or 'nothing'!r})")
        run.console.line("confirmed at the terminal")
        return
    url = rollout.confirm_url
    if not url:
        raise ChecksFailed("not confirmed after the canary: no terminal to ask and no rollout.confirm_url")
    deadline = time.monotonic() + rollout.confirm_timeout
    last = "no answer yet"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=min(POLL_SECONDS * 2, 10)) as answer:  # noqa: S310
                run.console.line(f"confirmed: {url} answered {answer.status}")
                return
        except urllib.error.HTTPError as error:
            last = f"HTTP {error.code}"
        except OSError as error:
            last = str(getattr(error, "reason", error))
        if time.monotonic() + POLL_SECONDS > deadline:
            raise ChecksFailed(f"not confirmed after the canary: {url} gave no 2xx within"
                               f" {rollout.confirm_timeout:g}s (last: {last})")
        time.sleep(POLL_SECONDS)


def _terminal(prompt: str) -> str:
    sys.stderr.write(prompt)
    sys.stderr.flush()
    return sys.stdin.readline()


def describe(settings: Any, *, verify: bool = True) -> list[str]:
    """Dry-run lines for the gates, the notifications and the metric checks (measured from here)."""
    rollout = settings.rollout
    lines = []
    for check in settings.checks if verify else ():
        if getattr(check, "local", False):
            compare = " compared with the unswitched hosts," if check.params.get("compare") else ""
            lines.append(f"metric    {check.name}: {check.expectation()};{compare} measured from this machine"
                         f" ({check.source})")
    if rollout.analysis and verify:
        lines.append("analysis  keep verifying switched batches while later ones go live; red: roll back all")
    if rollout.soak and verify:
        lines.append(f"soak      re-verify each batch for {rollout.soak:g}s after it turned green")
    if rollout.confirm:
        how = f"poll {rollout.confirm_url} for a 2xx up to {rollout.confirm_timeout:g}s" if rollout.confirm_url \
            else "a prompt (no confirm_url: refused without a terminal)"
        lines.append(f"confirm   after the canary: {how}; refused or timed out: roll back")
    for hook in settings.notify:
        lines.append(f"notify    {hook.shown()} on {', '.join(hook.on)} (time-out {hook.timeout:g}s)")
    return lines
