"""deploytest's Fabric/Invoke tasks: import them into any fabfile.

    from deploytest.tasks import deploy, verify, rollback, deploy_and_verify, status, releases, unlock

Each task runs once over all ``-H`` hosts (hosts in parallel), with no extra configuration (see
:mod:`deploytest.executor`); with no ``-H`` it acts on the local machine.
Errors become one clear message and the contract's exit code (0/1/2/3), never a traceback.
"""

from __future__ import annotations

import functools
import inspect
import os
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
from .executor import CoordinatedTask, HostsContext, split_refusal
from .flow import Rollout
from .flow import deploy_and_verify as run_flow
from .hosts import LocalTarget, Target, targets_for


def targets_of(c: Context, settings: Settings, task_name: str = "this task") -> List[Target]:
    """The targets a task acts on (the ``-H`` hosts, or local), with the config's connect and step
    time limits.

    :raises UsageError: ``c`` is one host's ``Connection``: the task was split per host (exit 2).
    """
    targets = _targets(c, settings, task_name)
    for target in targets:
        target.default_timeout = settings.step_timeout
    return targets


def _targets(c: Context, settings: Settings, task_name: str) -> List[Target]:
    if isinstance(c, HostsContext):
        hosts: List[str] = getattr(c, "hosts", [])
        return targets_for(hosts, c.config, connect_timeout=settings.connect_timeout)
    if isinstance(c, Connection):
        raise UsageError(split_refusal(task_name, c.original_host, c.config))
    return [LocalTarget()]


def settings_of(c: Context, *, need_source: bool = False) -> Settings:
    """The validated ``deploytest`` config of this run."""
    base_dir = getattr(c.config, "_project_prefix", None) or os.getcwd()
    return config_module.load(c.config.get("deploytest"), base_dir=os.path.abspath(base_dir),
                              need_source=need_source)


Body = Callable[..., Optional[int]]


def on_hosts(*, need_source: bool = False) -> Callable[[Body], Callable[..., None]]:
    """Give a task body ``(targets, settings, console, **options)`` and make it safe to run.

    Config is validated before any host is touched; connections are closed at the end; deploytest's
    errors become one message and the contract's exit code, never a bare traceback.
    """

    def decorate(body: Body) -> Callable[..., None]:
        @functools.wraps(body)
        def task_body(c: Context, **options: Any) -> None:
            console = Console()
            targets: List[Target] = []
            try:
                settings = settings_of(c, need_source=need_source)
                targets = targets_of(c, settings, body.__name__.replace("_", "-"))
                code = body(targets, settings, console, **options) or 0
            except DeploytestError as error:
                console.error(f"deploytest: {error.render()}")
                raise Exit(code=error.exit_code) from None
            except KeyboardInterrupt:
                console.error("deploytest: interrupted")
                raise Exit(code=exit_code_for(KeyboardInterrupt())) from None
            except Exception as error:  # noqa: BLE001 - a bug of ours: say so, with the way to see more
                console.error(f"deploytest: internal error: {type(error).__name__}: {error}")
                if os.environ.get("DEPLOYTEST_DEBUG"):
                    traceback.print_exc()
                else:
                    console.error("deploytest: set DEPLOYTEST_DEBUG=1 for the traceback; the hosts may need:"
                                  " fab status")
                raise Exit(code=3) from None
            finally:
                for target in targets:
                    target.close()
            if code:
                raise Exit(code=code)

        # invoke reads the signature for the task's flags: (c, options...) without our arguments.
        task_body.__wrapped__ = _task_signature(body)
        return task_body

    return decorate


def _task_signature(body: Body) -> Callable[..., Any]:
    signature = inspect.signature(body)
    context = inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    options = [p for name, p in signature.parameters.items() if name not in ("targets", "settings", "console")]

    def shape(*args: Any, **kwargs: Any) -> Any:  # only its signature is read
        raise NotImplementedError

    shape.__signature__ = signature.replace(parameters=[context, *options])  # type: ignore[attr-defined]
    return shape


_REPORTS = {
    "json": "write a JSON report (baseline, result, transitions) to this path",
    "junit": "write a JUnit XML report (one testsuite per host) to this path",
}
_DRY_RUN = {"dry-run": "print what would be done on each host, and change nothing"}


@task(klass=CoordinatedTask, name="deploy-and-verify", help={**_DRY_RUN, **_REPORTS})
@on_hosts(need_source=True)
def deploy_and_verify(targets: List[Target], settings: Settings, console: Console, dry_run: bool = False,
                      json: Optional[str] = None, junit: Optional[str] = None) -> int:
    """Deploy a new release, verify it, and roll back on every touched host if it stays red."""
    run = Rollout(settings, targets, console)
    if not run.verifies:
        raise UsageError("config deploytest.checks: nothing to verify (no checks configured), so a green"
                         " deploy-and-verify would mean nothing. Add checks, or use fab deploy for an unverified"
                         " deploy. Nothing was changed.")
    if dry_run:
        return oncall.dry_run(targets, settings, console, verify=True)
    try:
        run_flow(run, verify=True)
    finally:
        oncall.write_reports(run, "deploy-and-verify", json, junit)
        oncall.print_transitions(run)
    return oncall.summarise(run)


@task(klass=CoordinatedTask, help=_DRY_RUN)
@on_hosts(need_source=True)
def deploy(targets: List[Target], settings: Settings, console: Console, dry_run: bool = False) -> int:
    """Prepare and switch to a new release on every host (no verification)."""
    if dry_run:
        return oncall.dry_run(targets, settings, console, verify=False)
    run = Rollout(settings, targets, console)
    run_flow(run, verify=False)
    return oncall.summarise(run)


@task(klass=CoordinatedTask, help=_REPORTS)
@on_hosts()
def verify(targets: List[Target], settings: Settings, console: Console, json: Optional[str] = None,
           junit: Optional[str] = None) -> int:
    """Run the configured checks now; report red/green per host and check (exit 1 if any red)."""
    return oncall.verify(targets, settings, console, json, junit)


@task(klass=CoordinatedTask, help={"to": "the release id to go back to (default: the previous good release)"})
@on_hosts()
def rollback(targets: List[Target], settings: Settings, console: Console, to: Optional[str] = None) -> int:
    """Re-activate the previous good release (or --to RELEASE), restart, verify it with its own suite."""
    return oncall.rollback(Rollout(settings, targets, console), to)


@task(klass=CoordinatedTask)
@on_hosts()
def status(targets: List[Target], settings: Settings, console: Console) -> int:
    """Per host: the live release, the previous one, the lock holder and the last event."""
    return oncall.status(targets, settings, console)


@task(klass=CoordinatedTask)
@on_hosts()
def releases(targets: List[Target], settings: Settings, console: Console) -> int:
    """Per host: a table of releases (id, when, who, label, live and bad marks)."""
    return oncall.releases(targets, settings, console)


@task(klass=CoordinatedTask, help={"force": "also remove a live lock (its deploy still renews it): only when"
                                             " you know that deploy is dead"})
@on_hosts()
def unlock(targets: List[Target], settings: Settings, console: Console, force: bool = False) -> int:
    """Remove a stale deploy lock (its deploy stopped renewing it), printing who held it."""
    return oncall.unlock(targets, settings, console, force)


__all__ = ["deploy", "verify", "rollback", "deploy_and_verify", "status", "releases", "unlock",
           "CoordinatedTask", "on_hosts", "targets_of", "settings_of"]
