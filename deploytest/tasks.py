"""deploytest's Fabric/Invoke tasks: import them into any fabfile.

    from deploytest.tasks import deploy, verify, rollback, deploy_and_verify, status, releases, unlock

Each task runs once over all ``-H`` hosts (hosts in parallel) when ``tasks.executor_class`` is
``deploytest.executor.Executor`` (see :mod:`deploytest.executor`); with no ``-H`` it acts on the local
machine. Errors become one clear message and the contract's exit code (0/1/2/3), never a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from typing import Any, Callable, List, Optional

from fabric import Connection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from . import config as config_module
from . import oncall
from .config import Settings
from .console import Console
from .errors import DeploytestError, UsageError, exit_code_for
from .executor import EXECUTOR_PATH, CoordinatedTask, HostsContext
from .flow import Rollout
from .flow import deploy_and_verify as run_flow
from .hosts import LocalTarget, SSHTarget, Target, connect, secure


def targets_of(c: Context, settings: Settings) -> List[Target]:
    """The targets a task acts on (the ``-H`` hosts, the Connection it was given, or local), with the
    config's connect and step time limits."""
    targets = _targets(c, settings)
    for target in targets:
        target.default_timeout = settings.step_timeout
    return targets


def _targets(c: Context, settings: Settings) -> List[Target]:
    if isinstance(c, HostsContext):
        hosts: List[str] = getattr(c, "hosts", [])
        seen: List[str] = []
        for host in hosts:
            if host not in seen:
                seen.append(host)
        if not seen:
            return [LocalTarget()]
        for host in seen:
            if not host or host.startswith("-") or any(ch.isspace() or ch in "\"'`$;&|<>\\" for ch in host):
                raise UsageError(f"bad host name {host!r}; nothing was changed.")
        return [connect(host, c.config, connect_timeout=settings.connect_timeout) for host in seen]
    if isinstance(c, Connection):
        if c.config.get("tasks", {}).get("executor_class") != EXECUTOR_PATH:
            sys.stderr.write(
                f"deploytest: note: running on {c.original_host} alone; for one coordinated run over all -H hosts,"
                f" set tasks.executor_class: {EXECUTOR_PATH} in fabric.yaml\n"
            )
        return [SSHTarget(secure(c), name=c.original_host)]
    return [LocalTarget()]


def settings_of(c: Context, *, need_source: bool = False) -> Settings:
    """The validated ``deploytest`` config of this run."""
    base_dir = getattr(c.config, "_project_prefix", None) or os.getcwd()
    return config_module.load(c.config.get("deploytest"), base_dir=os.path.abspath(base_dir),
                              need_source=need_source)


def _guarded(body: Callable[..., Optional[int]]) -> Callable[..., None]:
    """Map deploytest errors to one message and the contract's exit code; never a bare traceback."""

    @functools.wraps(body)
    def wrapper(c: Context, *args: Any, **kwargs: Any) -> None:
        console = Console()
        try:
            code = body(c, console, *args, **kwargs) or 0
        except DeploytestError as error:
            console.error(f"deploytest: {error.render()}")
            raise Exit(code=error.exit_code) from None
        except KeyboardInterrupt:
            console.error("deploytest: interrupted")
            raise Exit(code=exit_code_for(KeyboardInterrupt())) from None
        except Exit:
            raise
        except Exception as error:  # noqa: BLE001 - a bug of ours: say so, with the way to see more
            console.error(f"deploytest: internal error: {type(error).__name__}: {error}")
            if os.environ.get("DEPLOYTEST_DEBUG"):
                traceback.print_exc()
            else:
                console.error("deploytest: set DEPLOYTEST_DEBUG=1 for the traceback; hosts may need: fab status")
            raise Exit(code=3) from None
        if code:
            raise Exit(code=code)

    # invoke reads the signature for its CLI flags: hide our injected console argument.
    wrapper.__wrapped__ = _without_console(body)
    return wrapper


def _without_console(body: Callable[..., Any]) -> Callable[..., Any]:
    import inspect

    signature = inspect.signature(body)
    params = [p for name, p in signature.parameters.items() if name != "console"]

    def shape(*args: Any, **kwargs: Any) -> Any:  # only its signature is read
        raise NotImplementedError

    shape.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return shape


def _close(targets: List[Target]) -> None:
    for target in targets:
        target.close()


@task(klass=CoordinatedTask, name="deploy-and-verify", help={
    "dry-run": "print what would be done on each host, change nothing",
    "json": "write a JSON report of baseline and result to this path",
    "junit": "write a JUnit XML report (one testsuite per host) to this path",
})
@_guarded
def deploy_and_verify(c: Context, console: Console, dry_run: bool = False, json: Optional[str] = None,
                      junit: Optional[str] = None) -> int:
    """Deploy a new release, verify it, and roll back on every touched host if it stays red."""
    settings = settings_of(c, need_source=True)
    targets = targets_of(c, settings)
    try:
        if dry_run:
            return oncall.dry_run(targets, settings, console, verify=True)
        run = Rollout(settings, targets, console)
        try:
            run_flow(run, verify=True)
        finally:
            oncall.write_reports(run, json, junit)
            oncall.print_transitions(run)
        return oncall.summarise(run)
    finally:
        _close(targets)


@task(klass=CoordinatedTask, help={"dry-run": "print what would be done on each host, change nothing"})
@_guarded
def deploy(c: Context, console: Console, dry_run: bool = False) -> int:
    """Prepare and switch to a new release on every host (no verification)."""
    settings = settings_of(c, need_source=True)
    targets = targets_of(c, settings)
    try:
        if dry_run:
            return oncall.dry_run(targets, settings, console, verify=False)
        run = Rollout(settings, targets, console)
        run_flow(run, verify=False)
        return oncall.summarise(run)
    finally:
        _close(targets)


@task(klass=CoordinatedTask, help={
    "json": "write a JSON report to this path",
    "junit": "write a JUnit XML report (one testsuite per host) to this path",
})
@_guarded
def verify(c: Context, console: Console, json: Optional[str] = None, junit: Optional[str] = None) -> int:
    """Run the configured checks now; report red/green per host and check (exit 1 if any red)."""
    settings = settings_of(c)
    targets = targets_of(c, settings)
    try:
        return oncall.verify(targets, settings, console, json, junit)
    finally:
        _close(targets)


@task(klass=CoordinatedTask, help={"to": "the release id to go back to (default: the previous good release)"})
@_guarded
def rollback(c: Context, console: Console, to: Optional[str] = None) -> int:
    """Re-activate the previous good release (or --to RELEASE), restart, verify."""
    settings = settings_of(c)
    targets = targets_of(c, settings)
    try:
        return oncall.rollback(targets, settings, console, to)
    finally:
        _close(targets)


@task(klass=CoordinatedTask)
@_guarded
def status(c: Context, console: Console) -> int:
    """Per host: the live release, the previous one, the lock holder and the last event."""
    settings = settings_of(c)
    targets = targets_of(c, settings)
    try:
        return oncall.status(targets, settings, console)
    finally:
        _close(targets)


@task(klass=CoordinatedTask)
@_guarded
def releases(c: Context, console: Console) -> int:
    """Per host: a table of releases (id, when, who, label, live and bad marks)."""
    settings = settings_of(c)
    targets = targets_of(c, settings)
    try:
        return oncall.releases(targets, settings, console)
    finally:
        _close(targets)


@task(klass=CoordinatedTask)
@_guarded
def unlock(c: Context, console: Console) -> int:
    """Remove a deploy lock left behind, printing who held it."""
    settings = settings_of(c)
    targets = targets_of(c, settings)
    try:
        return oncall.unlock(targets, settings, console)
    finally:
        _close(targets)


__all__ = ["deploy", "verify", "rollback", "deploy_and_verify", "status", "releases", "unlock",
           "CoordinatedTask", "targets_of", "settings_of"]
