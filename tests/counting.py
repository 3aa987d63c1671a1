"""A local target that counts its sessions: one call to ``run`` is one remote session on a host."""

from __future__ import annotations

from deploytest.hosts import LocalTarget, Reply, RunResult


class CountingTarget(LocalTarget):
    """The local machine, counting sessions (calls to run)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def run(self, script: str, *, stdin: bytes | None = None, timeout: float | None = None,
            reply: Reply | None = None) -> RunResult:
        self.calls += 1
        return super().run(script, stdin=stdin, timeout=timeout, reply=reply)
