"""One rollout: what it knows and has changed so far, host by host (:class:`Rollout`), and what every
stage of :mod:`deploytest.flow` and :mod:`deploytest.heal` shares: the heartbeat that keeps its locks
fresh, its log events, and the words its console lines are made of."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, TypeVar

from . import plan as plans
from .checks.attempt import Probes
from .checks.base import ProbeOutput
from .checks.runner import HostReport, VerifyReport
from .config import Settings, VerifySettings
from .console import Console
from .errors import DeploytestError, HostUnreachable, fab_command, interrupted
from .hosts import Target, in_parallel
from .lock import HEARTBEAT_SECONDS, PARKED_LEASE_SECONDS, LockOwner, heartbeat, release_lock
from .source import Package
from .state import HostState
from .verifiers import Verifier, suite_verifier

T = TypeVar("T")


@dataclass
class Rollout:
    """What one run knows and has changed so far, host by host."""

    settings: Settings
    targets: list[Target]
    console: Console
    owner: LockOwner = field(default_factory=LockOwner.new)
    states: dict[str, HostState] = field(default_factory=dict)
    locked: list[str] = field(default_factory=list)
    release_id: str = ""
    package: Optional[Package] = None
    switched: dict[str, Optional[str]] = field(default_factory=dict)  # host -> release it left
    failed: dict[str, str] = field(default_factory=dict)  # host -> why
    lost: set[str] = field(default_factory=set)  # hosts that stopped answering: state unknown
    baseline: Optional[VerifyReport] = None
    after: Optional[VerifyReport] = None
    rollback_report: Optional[VerifyReport] = None
    outcome: str = "pending"
    started: float = field(default_factory=time.monotonic)
    verifier: Optional[Verifier] = None  # default: the configured checks
    verifying: bool = True  # False for a plain deploy
    tolerated: list[str] = field(default_factory=list)  # failed within max_fail, put back on their own
    touched: set[str] = field(default_factory=set)  # hosts the new release went live on, even for a moment
    suites: dict[str, Optional[str]] = field(default_factory=dict)  # host -> suite of the release it went back to
    stopped: list[str] = field(default_factory=list)  # first deploy failed: its stop hooks ran there
    unstopped: list[str] = field(default_factory=list)  # first deploy failed, no stop hook: it may still run
    tests: list[str] = field(default_factory=list)  # ids of the pytest tests collected
    plan: Optional[plans.Plan] = None  # made once the preflight has read every host
    baseline_probes: Optional[Probes] = None  # the baseline's probes, sent with the preflight's inspection
    probed: dict[str, list[ProbeOutput]] = field(default_factory=dict)  # their outputs, by host
    notifier: Optional[Any] = None  # notify: the webhooks told of started/done/rolled_back (deploytest.notify)
    background: Optional[Any] = None  # rollout.analysis: background (deploytest.gates.Background)
    parked: dict[str, float] = field(default_factory=dict)  # connection closed after its batch -> lock renewed at
    parking: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def parks(self) -> bool:
        """True when this rollout closes a host's connection once its batch is done (the last batch's:
        once its finish is done), and the host's lock carries :data:`PARKED_LEASE_SECONDS`: a fleet of
        more hosts than ``rollout.parallel``."""
        return len(self.targets) > self.settings.rollout.parallel

    def park(self, names: Sequence[str]) -> None:
        """Close the named hosts' connections, where this rollout parks (see :attr:`parks`); a later step
        on one of them opens it again."""
        if not self.parks:
            return
        for target in self.pick(names):
            with self.parking:
                if target.name in self.locked:
                    self.parked[target.name] = time.monotonic()
                target.close()

    def unpark(self, names: Sequence[str]) -> None:
        """The named hosts are about to be worked on: the heartbeat no longer closes their connections."""
        with self.parking:
            for name in names:
                self.parked.pop(name, None)

    def fab(self, task: str, hosts: Sequence[str]) -> str:
        """The command an operator types to run ``task`` on ``hosts`` of this run."""
        return fab_command(task, hosts, local=all(t.is_local for t in self.pick(hosts)))

    @property
    def verifies(self) -> bool:
        """True when there is something to verify (configured checks or tests, or a verifier of one's own)."""
        return self.verifier is not None or bool(self.settings.checks) or self.settings.tests is not None

    def verify(self, names: Sequence[str], settings: VerifySettings, only: Sequence[str] = ()) -> VerifyReport:
        """Verify the named hosts now (checks and tests limited to ``only`` when given)."""
        verifier = self.verifier or suite_verifier(self.settings, parallel=self.settings.rollout.parallel)
        self.unpark(names)
        return verifier(self.pick(names), settings, list(only))

    @property
    def names(self) -> list[str]:
        """Host names, in the order given."""
        return [t.name for t in self.targets]

    def pick(self, names: Sequence[str]) -> list[Target]:
        """The targets named, in rollout order."""
        wanted = set(names)
        return [t for t in self.targets if t.name in wanted]

    def each(self, names: Sequence[str], step: str, fn: Callable[[Target], T]) -> dict[str, T]:
        """Run ``fn`` on the named hosts in parallel; results of the hosts that succeeded.

        A host that fails is recorded in ``failed`` with the step and the reason.
        """
        ok: dict[str, T] = {}
        picked = self.pick(names)
        done = [0]
        lock = threading.Lock()

        def counted(target: Target) -> T:
            try:
                self.unpark([target.name])  # worked on: the heartbeat leaves its connection alone
                return fn(target)
            finally:
                with lock:
                    done[0] += 1
                    self.console.progress(step, done[0], len(picked))

        for target, result in in_parallel(picked, counted, limit=self.settings.rollout.parallel):
            if isinstance(result, BaseException):
                if isinstance(result, HostUnreachable):
                    self.lost.add(target.name)
                reason = reason_of(result).removeprefix(f"{target.name}: ")
                self.failed.setdefault(target.name, f"{step}: {reason}")
                self.console.host(target.name, step, reason, "red")
            else:
                ok[target.name] = result
        return ok


class Heartbeat:
    """Keeps this run's locks fresh while it works, so that ``unlock`` can tell it from a dead one: every
    :data:`HEARTBEAT_SECONDS` each host still locked has its lock renewed (one short session)."""

    def __init__(self, run: Rollout) -> None:
        self.run = run
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="deploytest-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _beat(self) -> None:
        run = self.run
        while not self._stop.wait(HEARTBEAT_SECONDS):
            now = time.monotonic()
            due = [n for n in run.locked if n not in run.parked or now - run.parked[n] > PARKED_LEASE_SECONDS / 2]
            in_parallel(run.pick(due), self._renew, limit=run.settings.rollout.parallel)

    def _renew(self, target: Target) -> None:
        run = self.run
        heartbeat(target, run.settings, run.owner)
        with run.parking:
            if target.name in run.parked:  # opened for this alone (no step has taken it since): closed again
                run.parked[target.name] = time.monotonic()
                target.close()


def release_locks(run: Rollout, names: Sequence[str]) -> None:
    """Release this run's locks on the named hosts (best effort: a refusal to change anything)."""
    for target, _result in in_parallel(run.pick(names), lambda t: release_lock(t, run.settings, run.owner),
                                       limit=run.settings.rollout.parallel):
        if target.name in run.locked:
            run.locked.remove(target.name)


def log_event(run: Rollout, kind: str, outcome: str, **extra: Any) -> dict[str, Any]:
    package = run.package
    return {
        "event": kind,
        "release": run.release_id,
        "label": package.label if package else None,
        "outcome": outcome,
        "who": run.owner.who,
        "hosts": run.names,
        "seconds": round(time.monotonic() - run.started, 1),
        **extra,
    }


def summary(host: HostReport) -> str:
    """``all 5 checks green`` / ``2 of 5 red: health, port 8000`` / the host's error."""
    if host.error:
        return host.error
    red = [r.name for r in host.results if not r.ok]
    if not red:
        return f"all {len(host.results)} checks green"
    return f"{len(red)} of {len(host.results)} red: " + ", ".join(red)


def package_mb(package: Optional[Package]) -> int:
    """Room the release needs on a host: its unpacked size (the archive is streamed, not stored)."""
    if package is None:
        return 0
    return -(-package.unpacked_size * 11 // 10 // (1024 * 1024))


def some(failed: dict[str, str], shown: int = 3) -> str:
    """``web2 (verify: health: ...)`` for a few hosts, and how many more (each was printed above)."""
    items = [f"{host} ({why})" for host, why in list(failed.items())[:shown]]
    more = f"; and {len(failed) - shown} more" if len(failed) > shown else ""
    return "; ".join(items) + more


def reason_of(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return interrupted()
    if isinstance(error, DeploytestError):
        return error.message
    return f"{type(error).__name__}: {error}"


class shielded_from_ctrl_c:
    """While rolling back, a second Ctrl-C (or a SIGTERM) must not leave hosts half-done: say so and
    carry on."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            def refuse(signum: int, _frame: Any) -> None:
                what = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
                self.console.error(f"deploytest: rolling back; {what} ignored until the hosts are safe")
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, refuse)

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self.previous.items():
            if handler is not None:  # None: not set from Python, nothing to put back
                signal.signal(sig, handler)
        self.previous = {}


def few(names: Sequence[str], shown: int = 5) -> str:
    """``web1, web2`` or ``web1, ..., web5 and 95 more``."""
    names = sorted(names)
    return ", ".join(names) if len(names) <= shown else f"{', '.join(names[:shown])} and {len(names) - shown} more"
