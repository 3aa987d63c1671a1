"""pytest sessions side by side in this process: their command line, the process-wide state they touch,
and pytest's reasons in one line.

pytest's process-wide helpers that threads would fight over are off in these sessions (output capture
is deploytest's own: what a test prints is kept off the console; see :data:`_OFF` for the plugins not
loaded), and the module globals where pytest keeps "the current session" are put back afterwards.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import sys
import threading
from typing import Any, Iterator

import pytest

from .config import DeploymentTests
from .suite_files import Workspace

#: Plugins these sessions never load: process-wide state that parallel sessions would fight over.
_OFF = ("deploytest", "cacheprovider", "warnings", "faulthandler", "unraisableexception", "threadexception",
        "debugging", "pastebin", "junitxml", "doctest", "stepwise", "setuponly", "setupplan")


def _args(tests: DeploymentTests, space: Workspace, *extra: str) -> list[str]:
    off = [arg for name in _OFF for arg in ("-p", f"no:{name}")]
    return [*off, "--rootdir", space.rootdir, "-q", *tests.args, "--capture=no", *extra, *space.paths]


# -- the process-wide state sessions touch ------------------------------------------------------------


class _Routed(io.TextIOBase):
    """sys.stdout / sys.stderr while sessions run: what a session's thread writes is kept off the console."""

    def __init__(self, original: Any) -> None:
        self.original = original
        self.kept: dict[int, list[str]] = {}

    def write(self, text: str) -> int:
        kept = self.kept.get(threading.get_ident())
        if kept is None:
            return int(self.original.write(text))
        if sum(map(len, kept)) < 64 * 1024:
            kept.append(text)
        return len(text)

    def flush(self) -> None:
        if threading.get_ident() not in self.kept:
            self.original.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return int(self.original.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self.original, "encoding", "utf-8") or "utf-8")


_ROUTE_LOCK = threading.Lock()
_ACTIVE = [0]
_SAVED: list[Any] = []


@contextlib.contextmanager
def _sessions_quiet() -> Iterator[None]:
    """Route the sessions' threads' output away (see :class:`_Routed`), keep pytest from setting
    ``PYTEST_CURRENT_TEST`` from many threads at once (one environment for the whole process), and put
    back afterwards the module globals where pytest keeps its current session (sessions side by side
    would leave them pointing at one another: every session kept alive)."""
    import _pytest.assertion.util as assertion_util
    import _pytest.runner as runner
    from _pytest.mark import MARK_GEN

    globals_ = ((MARK_GEN, "_config"), (assertion_util, "_reprcompare"), (assertion_util, "_assertion_pass"),
                (assertion_util, "_config"))
    with _ROUTE_LOCK:
        if _ACTIVE[0] == 0:
            _SAVED[:] = [sys.stdout, sys.stderr, runner._update_current_test_var,
                         [(owner, name, getattr(owner, name, None)) for owner, name in globals_]]
            sys.stdout, sys.stderr = _Routed(sys.stdout), _Routed(sys.stderr)
            runner._update_current_test_var = _no_current_test_var
        _ACTIVE[0] += 1
    try:
        yield
    finally:
        with _ROUTE_LOCK:
            _ACTIVE[0] -= 1
            if _ACTIVE[0] == 0:
                sys.stdout, sys.stderr, runner._update_current_test_var, saved = _SAVED
                for owner, name, value in saved:
                    setattr(owner, name, value)
                gc.collect()  # the sessions' cycles, at once: memory stays flat from one verification to the next


def _no_current_test_var(item: Any, when: Any) -> None:
    del item, when


@contextlib.contextmanager
def _keep() -> Iterator[list[str]]:
    """Within :func:`_sessions_quiet`: this thread's output is kept (returned), not shown."""
    kept: list[str] = []
    streams = [s for s in (sys.stdout, sys.stderr) if isinstance(s, _Routed)]
    for stream in streams:
        stream.kept[threading.get_ident()] = kept
    try:
        yield kept
    finally:
        for stream in streams:
            stream.kept.pop(threading.get_ident(), None)


@contextlib.contextmanager
def _imports_undone(space: Workspace) -> Iterator[None]:
    """The test modules (and conftest.py files) imported and the ``sys.path`` entries added while
    sessions ran are dropped afterwards: the next verification, maybe with a release's recorded files,
    imports its own. Other modules the tests imported stay."""
    modules, path = set(sys.modules), list(sys.path)
    own = tuple(os.path.realpath(d) + os.sep for d in space.own)
    root = os.path.realpath(space.rootdir) + os.sep
    try:
        yield
    finally:
        for name in [n for n in list(sys.modules) if n not in modules]:
            where = os.path.realpath(getattr(sys.modules.get(name), "__file__", None) or "/")
            if where.startswith(own) or (where.startswith(root) and os.path.basename(where) == "conftest.py"):
                sys.modules.pop(name, None)
        sys.path[:] = [p for p in sys.path if p in path] + [p for p in path if p not in sys.path]


def _ctrl_c(excinfo: pytest.ExceptionInfo[BaseException]) -> bool:
    """Ctrl-C, not pytest's own stop (``Interrupted: 1 error during collection``, ``pytest.exit()``)."""
    return excinfo.errisinstance(KeyboardInterrupt) and not excinfo.errisinstance(pytest.Session.Interrupted)


def _reason_of(longrepr: Any) -> str:
    """pytest's one line for a failure: its ``E`` line (``SyntaxError: ...``), else its last line."""
    crash = getattr(longrepr, "reprcrash", None)
    text = str(longrepr)
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    if errors:
        return errors[-1]
    if crash is not None and getattr(crash, "message", None):
        return str(crash.message).splitlines()[0]
    return lines[-1].strip() if lines else "failed"


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
