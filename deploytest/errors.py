"""One exception family for deploytest, mapped to the contract's exit codes in one place.

=====  ==========================================================================
code   meaning
=====  ==========================================================================
0      done and verified green
1      verification or a deploy step failed; everything was rolled back and verified
2      refused before changing anything (usage, configuration, preflight, lock held)
3      needs a human: a rollback failed, or a host's state is unknown
=====  ==========================================================================
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable, Sequence

OK = 0
FAILED = 1
REFUSED = 2
NEEDS_HUMAN = 3


class DeploytestError(Exception):
    """Base of every error deploytest raises on purpose; ``exit_code`` is what ``fab`` exits with."""

    exit_code = FAILED

    def __init__(self, message: str, *, hosts: Sequence[str] = (), next_step: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hosts = list(hosts)
        self.next_step = next_step

    def render(self) -> str:
        """The few lines a user sees: what went wrong, and what to do next."""
        lines = [self.message]
        if self.next_step:
            lines.append(f"next: {self.next_step}")
        return "\n".join(lines)


class Refused(DeploytestError):
    """Nothing was changed anywhere: usage, configuration, preflight or a held lock (exit 2)."""

    exit_code = REFUSED


class ConfigError(Refused):
    """The ``deploytest`` configuration is invalid."""


class UsageError(Refused):
    """A task was called with arguments that cannot work."""


class HostUnreachable(DeploytestError):
    """A host could not be reached (connect failed, or the connection dropped)."""

    exit_code = NEEDS_HUMAN

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host}: unreachable: {reason}", hosts=[host])
        self.host = host
        self.reason = reason


class HostKeyError(Refused):
    """A host's key is unknown or does not match known_hosts."""


class LockHeld(Refused):
    """Another deploy holds the lock on a host."""


class RemoteCommandFailed(DeploytestError):
    """A step of a deploy or rollback failed on a host."""

    def __init__(self, host: str, step: str, detail: str) -> None:
        super().__init__(f"{host}: {step} failed: {detail}", hosts=[host])
        self.host = host
        self.step = step
        self.detail = detail


class ChecksFailed(DeploytestError):
    """Verification found red checks (exit 1)."""

    exit_code = FAILED


class RolledBack(DeploytestError):
    """A deploy failed and every touched host was rolled back and verified (exit 1)."""

    exit_code = FAILED


class NeedsHuman(DeploytestError):
    """A rollback failed, or a host's state is unknown (exit 3)."""

    exit_code = NEEDS_HUMAN


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a cancelled CI job, a service manager stopping fab): handled as Ctrl-C is."""


# Set once a SIGTERM stopped this run, so that every message says which interruption it was.
_TERMINATED = threading.Event()


def interrupted() -> str:
    """``interrupted (Ctrl-C)``, or ``interrupted (SIGTERM)`` once a SIGTERM stopped this run."""
    return "interrupted (SIGTERM)" if _TERMINATED.is_set() else "interrupted (Ctrl-C)"


def sigterm_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM stop this run as Ctrl-C does (stop the steps, roll back, release the locks);
    return what undoes it. Only in the main thread, and only where SIGTERM has no handler yet: a
    fabfile's own handler is left alone."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        return lambda: None
    _TERMINATED.clear()

    def stop(_signum: int, _frame: Any) -> None:
        _TERMINATED.set()
        raise Terminated()

    def undo() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, stop)
    return undo


def fab_command(task: str, hosts: Sequence[str], *, local: bool = False) -> str:
    """The command an operator types to run ``task`` on ``hosts`` (no ``-H`` on the local machine)."""
    if local or not hosts:
        return f"fab {task}"
    return f"fab -H {','.join(hosts)} {task}"


def exit_code_for(error: BaseException) -> int:
    """The process exit code for an error that ended a task."""
    if isinstance(error, DeploytestError):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return FAILED
    return NEEDS_HUMAN
