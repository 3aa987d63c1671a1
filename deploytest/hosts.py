"""Where commands run: the target a command runs on, what it gives back, and running over many at once.

Every remote interaction of deploytest goes through :meth:`Target.run`, which opens exactly one SSH
session (one ``exec`` channel) per call. That is what makes round trips countable: a verify attempt
is one call, a deploy step is one call, whatever the number of checks or files. The local machine is
a :class:`LocalTarget`; a host over SSH is a :class:`~deploytest.ssh.SSHTarget`.
"""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence, TypeVar

from .errors import HostKeyError, HostUnreachable, interrupted

T = TypeVar("T")
R = TypeVar("R")

LOCAL = "local"


@dataclass(frozen=True)
class RunResult:
    """What one command run on one host gave back."""

    host: str
    exit_code: int
    stdout: str
    stderr: str
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.exit_code == 0

    def tail(self, lines: int = 5) -> str:
        """The last lines of stderr (or stdout when stderr is empty), for error messages."""
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return " | ".join(text[-lines:])


@dataclass(frozen=True)
class Reply:
    """An answer the control side gives a script while it runs, in the same session: once the script
    has printed the line ``after`` on stdout, ``answer(stdout so far)`` is written to its stdin
    (after any ``stdin`` given), which is then closed. A script that ends first gets no answer.

    This is how one session both runs a verify attempt's probes and logs the verdict this machine
    reached on their output.
    """

    after: str
    answer: Callable[[str], bytes]

    def due(self, out: bytes) -> bool:
        """True once ``out`` holds the line ``after``."""
        marker = self.after.encode()
        return (b"\n" + out).find(b"\n" + marker + b"\n") >= 0


class CommandTimeout(Exception):
    """A command ran past its time limit; the session was closed."""


class Cancelled(Exception):
    """Ctrl-C arrived while hosts worked in parallel: no new command starts until they have stopped."""


# Set while in_parallel() winds down after Ctrl-C, so the workers' next command does not start.
_CANCEL = threading.Event()


def _not_cancelled(name: str) -> None:
    if _CANCEL.is_set():
        raise Cancelled(f"{name}: {interrupted()}")


class Target(ABC):
    """A machine deploytest acts on: a host over SSH, or the local machine."""

    name: str

    @property
    def is_local(self) -> bool:
        """True for the local machine."""
        return False

    @abstractmethod
    def run(self, script: str, *, stdin: bytes | None = None, timeout: float | None = None,
            reply: Reply | None = None) -> RunResult:
        """Run ``script`` with ``/bin/sh`` in one session; never raises on a non-zero exit.

        :param script: POSIX shell text; callers quote everything they interpolate.
        :param stdin: bytes fed to the script's standard input (an upload archive, a password).
        :param timeout: seconds before the session is closed and :class:`CommandTimeout` raised.
        :param reply: more stdin, computed from what the script printed (see :class:`Reply`).
        :raises HostUnreachable: the host cannot be reached or the connection dropped.
        """

    def open(self) -> None:  # noqa: B027 - optional hook
        """Connect now (no-op for the local machine)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection, if any."""

    #: Seconds a command may run when the caller gives no timeout (None: no limit).
    default_timeout: float | None = None

    @property
    def user(self) -> str:
        """The login user on the target."""
        return getpass.getuser()

    def alive(self, timeout: float = 5.0) -> bool:
        """True when the target answers a trivial command within ``timeout`` seconds."""
        try:
            return self.run("true", timeout=timeout).ok
        except (HostUnreachable, CommandTimeout, HostKeyError):
            return False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class LocalTarget(Target):
    """The local machine, run through ``/bin/sh`` (``fab TASK`` without ``-H``)."""

    def __init__(self, name: str = LOCAL) -> None:
        self.name = name

    @property
    def is_local(self) -> bool:
        return True

    def run(self, script: str, *, stdin: bytes | None = None, timeout: float | None = None,
            reply: Reply | None = None) -> RunResult:
        _not_cancelled(self.name)
        started = time.monotonic()
        if timeout is None:
            timeout = self.default_timeout
        # Its own process group, so that a time-out or Ctrl-C stops the whole step (hooks included).
        proc = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        if reply is not None:
            return self._converse(proc, stdin, reply, started, timeout)
        data: bytes | None = stdin if stdin is not None else b""
        try:
            while True:
                try:
                    out, err = proc.communicate(data, timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    data = None  # given once; communicate() goes on feeding it
                    if _CANCEL.is_set():
                        raise Cancelled(f"{self.name}: {interrupted()}") from None
                    if timeout is not None and time.monotonic() - started > timeout:
                        raise CommandTimeout(f"{self.name}: command ran past {timeout}s") from None
        except BaseException:
            _stop_group(proc)
            raise
        return RunResult(
            self.name,
            proc.returncode,
            out.decode("utf-8", "replace"),
            err.decode("utf-8", "replace"),
            time.monotonic() - started,
        )


    def _converse(self, proc: subprocess.Popen[bytes], stdin: bytes | None, reply: Reply, started: float,
                  timeout: float | None) -> RunResult:
        """:meth:`run` with a :class:`Reply`: stdout read as it comes, the answer written once due."""
        out: list[bytes] = []
        err: list[bytes] = []
        readers = [threading.Thread(target=_read_all, args=(pipe, into), daemon=True)
                   for pipe, into in ((proc.stdout, out), (proc.stderr, err))]
        for reader in readers:
            reader.start()
        assert proc.stdin is not None
        pending: Reply | None = reply
        failure: BaseException | None = None
        try:
            if stdin:
                _write(proc.stdin, stdin)
            while proc.poll() is None or any(r.is_alive() for r in readers):
                if pending is not None and pending.due(b"".join(out)):
                    answer, pending = pending.answer, None
                    try:
                        _write(proc.stdin, answer(b"".join(out).decode("utf-8", "replace")))
                    except Exception as exc:  # noqa: BLE001 - raised once the script has ended
                        failure = exc
                    _close(proc.stdin)
                if _CANCEL.is_set():
                    raise Cancelled(f"{self.name}: {interrupted()}")
                if timeout is not None and time.monotonic() - started > timeout:
                    raise CommandTimeout(f"{self.name}: command ran past {timeout}s")
                time.sleep(0.01)
        except BaseException:
            _stop_group(proc)
            raise
        finally:
            _close(proc.stdin)
        if failure is not None:
            raise failure
        return RunResult(self.name, proc.returncode, b"".join(out).decode("utf-8", "replace"),
                         b"".join(err).decode("utf-8", "replace"), time.monotonic() - started)


def _read_all(pipe: Any, into: list[bytes]) -> None:
    while chunk := pipe.read1(65536):
        into.append(chunk)


def _write(pipe: Any, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.flush()
    except (BrokenPipeError, ValueError, OSError):
        pass  # the script ended or closed its stdin: it did not want the rest


def _close(pipe: Any) -> None:
    try:
        pipe.close()
    except (BrokenPipeError, ValueError, OSError):
        pass


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """TERM the process group of ``proc``, KILL it if it lingers, and reap ``proc``."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        proc.communicate(timeout=1)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        pass


def host_list(hosts: str | Sequence[str] | None) -> list[str]:
    """The hosts of a run in order, repeats dropped: the one reading of a host list.

    :param hosts: a comma-separated string as ``fab -H`` and ``--deploytest-hosts`` take it (blanks
        around names and empty items dropped), or a sequence of host strings (kept as written, so that
        :func:`~deploytest.ssh.targets_for` can refuse a bad one).
    """
    names = [h.strip() for h in hosts.split(",") if h.strip()] if isinstance(hosts, str) else list(hosts or ())
    return list(dict.fromkeys(names))


def in_parallel(
    items: Iterable[T],
    fn: Callable[[T], R],
    *,
    limit: int = 10,
) -> list[tuple[T, R | BaseException]]:
    """Run ``fn`` over ``items`` with at most ``limit`` at once; results in input order.

    Exceptions are returned, not raised, so one host's failure never hides another's result. The
    calling thread waits in short slices so Ctrl-C reaches it; on Ctrl-C the commands running in the
    workers are stopped (their whole process group, on the host), no new command starts (the
    workers' :meth:`Target.run` raises :class:`Cancelled`), the calls not started are dropped, and
    ``KeyboardInterrupt`` is re-raised once every worker has returned.
    """
    items = list(items)
    if not items:
        return []
    if len(items) == 1:
        try:
            return [(items[0], fn(items[0]))]
        except Exception as exc:  # noqa: BLE001 - returned to the caller
            return [(items[0], exc)]
    results: dict[int, R | BaseException] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, min(limit, len(items))))
    futures: dict[Future[R], int] = {pool.submit(fn, item): index for index, item in enumerate(items)}
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in done:
                error = future.exception()
                results[futures[future]] = error if error is not None else future.result()
    except KeyboardInterrupt:
        _CANCEL.set()
        try:
            for future in futures:
                future.cancel()
            pool.shutdown(wait=True)
        finally:
            _CANCEL.clear()
        raise
    pool.shutdown(wait=True)
    return [(item, results[index]) for index, item in enumerate(items)]
