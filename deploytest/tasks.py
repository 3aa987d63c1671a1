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
from typing import Any, Callable, List, Optional, Sequence

from fabric import Connection
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from . import config as config_module
from . import notify, oncall
from .config import Settings
from .console import Console
from .errors import DeploytestError, Refused, UsageError, exit_code_for, interrupted, sigterm_as_interrupt
from .executor import CoordinatedTask, HostsContext, split_refusal
from .flow import deploy_and_verify as run_flow
from .hosts import LocalTarget, Target
from .report import RunReport, refused_run
from .report_json import write_document
from .report_junit import write_run_junit
from .rollback import rollback as rollback_task
from .rollout import Rollout
from .ssh import targets_for


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


def settings_of(c: Context, *, need_source: bool = False, source: Optional[str] = None,
                label: Optional[str] = None) -> Settings:
    """The validated ``deploytest`` config of this run.

    :param source: ``--source``: this run's directory or .tar.gz (relative to the current directory),
        instead of ``deploytest.source``.
    :param label: ``--label``: this run's release label, shown in ``releases`` and the reports.
    """
    base_dir = getattr(c.config, "_project_prefix", None) or os.getcwd()
    if source:
        source = os.path.abspath(os.path.expanduser(source))
    return config_module.load(c.config.get("deploytest"), base_dir=os.path.abspath(base_dir),
                              need_source=need_source, source=source, label=label)


Body = Callable[..., Optional[int]]


def on_hosts(*, need_source: bool = False) -> Callable[[Body], Callable[..., None]]:
    """Give a task body ``(targets, settings, console, **options)`` and make it safe to run.

    Config is validated before any host is touched; connections are closed at the end; deploytest's
    errors become one message and the contract's exit code, never a bare traceback. A task with
    ``--json``/``--junit`` refused before its body ran (configuration, usage) still writes them.
    """

    def decorate(body: Body) -> Callable[..., None]:
        @functools.wraps(body)
        def task_body(c: Context, **options: Any) -> None:
            console = Console()
            targets: List[Target] = []
            name = body.__name__.replace("_", "-")
            undo_sigterm = sigterm_as_interrupt()
            try:
                try:
                    settings = settings_of(c, need_source=need_source, source=options.get("source"),
                                           label=options.get("label"))
                    targets = targets_of(c, settings, name)
                except DeploytestError as error:
                    hosts = [t.name for t in targets] or list(getattr(c, "hosts", None) or [])
                    write_refusal(name, options.get("json"), options.get("junit"), error, hosts, console)
                    raise
                code = body(targets, settings, console, **options) or 0
            except DeploytestError as error:
                console.error(f"deploytest: {error.render()}")
                raise Exit(code=error.exit_code) from None
            except KeyboardInterrupt:
                console.error(f"deploytest: {interrupted()}")
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
                undo_sigterm()
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


def write_refusal(task: str, json_path: Optional[str], junit_path: Optional[str], error: BaseException,
                  hosts: Sequence[str], console: Console) -> None:
    """The reports of a task that stopped before it changed anything: what was refused, and where."""
    if not json_path and not junit_path:
        return
    message = error.message if isinstance(error, DeploytestError) else f"{type(error).__name__}: {error}"
    facts = refused_run(task, message, hosts, refused=getattr(error, "hosts", ()),
                        next_step=getattr(error, "next_step", ""), exit_code=exit_code_for(error))
    _write(console, json_path, junit_path, facts)


def _write(console: Console, json_path: Optional[str], junit_path: Optional[str], facts: RunReport) -> None:
    for path, write in ((json_path, write_document), (junit_path, write_run_junit)):
        if path:
            try:
                write(path, facts)
            except OSError as error:
                console.error(f"deploytest: could not write the report {path}: {error.strerror or error}")


def reported(run: Rollout, task: str, json_path: Optional[str], junit_path: Optional[str],
             action: Callable[[], int]) -> int:
    """Run ``action`` and write the run's reports whatever its end: exit 0, 1, 2, 3, Ctrl-C or a bug."""
    error: Optional[BaseException] = None
    if run.settings.notify and task in ("deploy", "deploy-and-verify"):
        run.notifier = notify.Notifier(run.settings.notify)
    try:
        return action()
    except BaseException as caught:
        error = caught
        raise
    finally:
        try:
            oncall.write_reports(run, task, json_path, junit_path, error)
        except OSError as problem:
            run.console.error(f"deploytest: could not write the reports: {problem}")
        if run.notifier is not None:
            notify.finish(run, task, error)


_REPORTS = {
    "json": "write the JSON report (deploytest/schemas/report.schema.json) to this path, whatever the outcome",
    "junit": "write a JUnit XML report (one testsuite per host) to this path, whatever the outcome",
}
_SOURCE = {
    "source": "deploy this directory or .tar.gz instead of deploytest.source (e.g. the build's artifact)",
    "label": "the release's label (e.g. v1.2, a commit): shown in releases and the reports",
}
_DRY_RUN = {"dry-run": "print what would be done on each host, and change nothing"}


def _nothing_to_verify() -> UsageError:
    return UsageError("config deploytest.checks: nothing to verify (no checks or tests configured), so a green"
                      " deploy-and-verify would mean nothing. Add checks or tests, or use fab deploy for an"
                      " unverified deploy. Nothing was changed.")


@task(klass=CoordinatedTask, name="deploy-and-verify", help={**_DRY_RUN, **_REPORTS, **_SOURCE})
@on_hosts(need_source=True)
def deploy_and_verify(targets: List[Target], settings: Settings, console: Console, dry_run: bool = False,
                      json: Optional[str] = None, junit: Optional[str] = None, source: Optional[str] = None,
                      label: Optional[str] = None) -> int:
    """Deploy a new release, verify it, and roll back on every touched host if it stays red."""
    run = Rollout(settings, targets, console)
    if dry_run:
        if not run.verifies:
            raise _nothing_to_verify()
        return oncall.dry_run(targets, settings, console, verify=True)

    def flow() -> int:
        if not run.verifies:
            raise _nothing_to_verify()
        try:
            run_flow(run, verify=True)
        finally:
            oncall.print_transitions(run)
        return oncall.summarise(run)

    return reported(run, "deploy-and-verify", json, junit, flow)


@task(klass=CoordinatedTask, help={**_DRY_RUN, **_REPORTS, **_SOURCE})
@on_hosts(need_source=True)
def deploy(targets: List[Target], settings: Settings, console: Console, dry_run: bool = False,
           json: Optional[str] = None, junit: Optional[str] = None, source: Optional[str] = None,
           label: Optional[str] = None) -> int:
    """Prepare and switch to a new release on every host (no verification)."""
    if dry_run:
        return oncall.dry_run(targets, settings, console, verify=False)
    run = Rollout(settings, targets, console)

    def flow() -> int:
        run_flow(run, verify=False)
        return oncall.summarise(run)

    return reported(run, "deploy", json, junit, flow)


@task(klass=CoordinatedTask, help=_REPORTS)
@on_hosts()
def verify(targets: List[Target], settings: Settings, console: Console, json: Optional[str] = None,
           junit: Optional[str] = None) -> int:
    """Run the configured checks and tests now; report red/green per host and check (exit 1 if any red)."""
    try:
        return oncall.verify(targets, settings, console, json, junit)
    except Refused as error:  # refused before any check ran: the reports say what and where
        write_refusal("verify", json, junit, error, [t.name for t in targets], console)
        raise


@task(klass=CoordinatedTask, help={"to": "the release id to go back to (default: the previous verified release)",
                                    "force": "let --to name a release that was never verified live", **_REPORTS})
@on_hosts()
def rollback(targets: List[Target], settings: Settings, console: Console, to: Optional[str] = None,
             force: bool = False, json: Optional[str] = None, junit: Optional[str] = None) -> int:
    """Go back to the previous verified release (or --to RELEASE) on every host, restart, verify it with
    its own recorded suite; after an interrupted rollout, undo it on every host it touched."""
    run = Rollout(settings, targets, console)
    return reported(run, "rollback", json, junit, lambda: rollback_task(run, to, force=force))


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
