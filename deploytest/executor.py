"""A Fabric ``Executor`` that runs deploytest's tasks ONCE over all ``-H`` hosts.

Stock Fabric expands ``fab -H a,b,c deploy`` into three calls, one per host, run one after another,
stopping at the first exception. A coordinated rollout needs the opposite: one call that sees every
host, plans batches, and can roll back the hosts it touched. Fabric lets a project choose its
executor through the ``tasks.executor_class`` config key, so that is where this plugs in::

    # fabric.yaml
    tasks:
      executor_class: deploytest.executor.Executor

Tasks that are not deploytest's keep Fabric's per-host behaviour.
"""

from __future__ import annotations

from typing import Any, List, Optional

from fabric.executor import Executor as FabricExecutor
from invoke.config import Config
from invoke.context import Context
from invoke.tasks import Call, Task

EXECUTOR_PATH = "deploytest.executor.Executor"


class HostsContext(Context):
    """An invoke ``Context`` that carries the host list of one coordinated call (empty: local)."""

    def __init__(self, config: Config, hosts: List[str]) -> None:
        super().__init__(config=config)
        object.__setattr__(self, "hosts", list(hosts))


class HostsCall(Call):
    """A call of a coordinated task over all of its hosts at once."""

    def __init__(self, *args: Any, hosts: Optional[List[str]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hosts = list(hosts or [])

    def make_context(self, config: Config) -> Context:
        return HostsContext(config, self.hosts)


class CoordinatedTask(Task):  # type: ignore[type-arg]
    """A task that takes all of its hosts in one call: use as ``@task(klass=CoordinatedTask)``."""

    coordinated = True


def is_coordinated(task: object) -> bool:
    """True for tasks that take all hosts in one call (deploytest's tasks)."""
    return bool(getattr(task, "coordinated", False))


class Executor(FabricExecutor):  # type: ignore[misc]
    """Fabric's executor, except that coordinated tasks get one call for all hosts."""

    def expand_calls(self, calls: List[Any], apply_hosts: bool = True) -> List[Any]:
        host_str = self.core[0].args.hosts.value if apply_hosts else None
        cli_hosts = [h.strip() for h in host_str.split(",") if h.strip()] if host_str else []
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
