"""One call over all ``-H`` hosts for deploytest's tasks, with the contract's config alone.

Stock Fabric expands ``fab -H a,b,c deploy`` into three calls, one per host, run one after another,
stopping at the first exception. A coordinated rollout needs the opposite: one call that sees every
host, plans batches, and can roll back the hosts it touched.

How it plugs in: Invoke's ``Program`` takes its executor from ``Program.executor_class`` unless the
``tasks.executor_class`` config key names another. When a :class:`CoordinatedTask` is defined (a
fabfile importing :mod:`deploytest.tasks` does that while ``fab`` loads it, before any task runs),
the running ``fab`` program is handed :class:`Executor` if it still uses Fabric's stock one.
:class:`Executor` changes nothing for other tasks: they keep Fabric's per-host calls. Setting
``tasks.executor_class: deploytest.executor.Executor`` in fabric.yaml does the same explicitly.

A coordinated task that is split per host anyway (another executor, a program of one's own handing
it a ``Connection``) refuses before touching any host: see :func:`split_refusal`.
"""

from __future__ import annotations

import sys
from typing import Any, List, Optional

from fabric.executor import Executor as FabricExecutor
from invoke.config import Config
from invoke.context import Context
from invoke.tasks import Call, Task

from .hosts import host_list

EXECUTOR_PATH = "deploytest.executor.Executor"


class HostsContext(Context):
    """An invoke ``Context`` that carries the host list of one coordinated call (empty: local)."""

    def __init__(self, config: Config, hosts: List[str], **kwargs: Any) -> None:
        super().__init__(config=config, **kwargs)
        object.__setattr__(self, "hosts", list(hosts))


class HostsCall(Call):
    """A call of a coordinated task over all of its hosts at once."""

    def __init__(self, *args: Any, hosts: Optional[List[str]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hosts = list(hosts or [])

    def clone_data(self) -> dict[str, Any]:
        data: dict[str, Any] = super().clone_data()
        data["hosts"] = list(self.hosts)
        return data

    def make_context(self, config: Config, *args: Any, **kwargs: Any) -> Context:
        # invoke 3 also passes core_parse_result (for the remainder); deploytest's tasks take none
        del args, kwargs
        return HostsContext(config, self.hosts)


class CoordinatedTask(Task):  # type: ignore[type-arg]
    """A task that takes all of its hosts in one call: use as ``@task(klass=CoordinatedTask)``."""

    coordinated = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        adopt_running_program()


def is_coordinated(task: object) -> bool:
    """True for tasks that take all hosts in one call (deploytest's tasks)."""
    return bool(getattr(task, "coordinated", False))


def adopt_running_program() -> bool:
    """Give the running ``fab`` program this module's :class:`Executor` if it uses Fabric's stock one.

    Only ``fabric.main.program`` (what ``fab`` and ``python -m fabric`` run) is touched, and only while
    it still has Fabric's own executor class: a program or executor of one's own is left alone (its
    coordinated tasks then refuse to run split, see :func:`split_refusal`). Returns True if adopted.
    """
    main = sys.modules.get("fabric.main")
    program = getattr(main, "program", None)
    if program is None or getattr(program, "executor_class", None) is not FabricExecutor:
        return False
    program.executor_class = Executor
    return True


def split_refusal(task_name: str, host: str, config: Config) -> str:
    """The one line a coordinated task says when it is handed a single host's ``Connection``."""
    chosen = config.get("tasks", {}).get("executor_class") if hasattr(config, "get") else None
    by = f"tasks.executor_class {chosen}" if chosen and chosen != EXECUTOR_PATH else "its caller"
    return (f"{task_name} was handed {host} alone by {by}: deploytest's tasks run once over all hosts"
            f" (one rollout), never host by host. Run it with fab -H, set tasks.executor_class:"
            f" {EXECUTOR_PATH}, or call it with a deploytest.executor.HostsContext. Nothing was changed.")


class Executor(FabricExecutor):  # type: ignore[misc]
    """Fabric's executor, except that coordinated tasks get one call for all hosts."""

    def expand_calls(self, calls: List[Any], apply_hosts: bool = True) -> List[Any]:
        host_str = self.core[0].args.hosts.value if apply_hosts else None
        cli_hosts = host_list(host_str)
        remainder = self.core.remainder
        self.core.remainder = ""  # the anonymous remainder task is added once, below
        ret: List[Any] = []
        try:
            for call in calls:
                if isinstance(call, Task):
                    call = Call(task=call)
                if not is_coordinated(call.task):
                    ret.extend(super().expand_calls([call], apply_hosts=apply_hosts))
                    continue
                ret.extend(self.expand_calls(call.pre, apply_hosts=False))
                hosts = cli_hosts or list(getattr(call.task, "hosts", None) or [])
                ret.append(call.clone(into=HostsCall, with_={"hosts": hosts}))
                ret.extend(self.expand_calls(call.post, apply_hosts=False))
        finally:
            self.core.remainder = remainder
        if apply_hosts and remainder:
            ret.extend(super().expand_calls([], apply_hosts=True))
        return ret
