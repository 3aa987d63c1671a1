"""Processes running on the host, matched by command line (deploytest's own probe excluded)."""

from __future__ import annotations

import re
from typing import ClassVar

from .base import Check, ProbeOutput, Verdict, key_values, size_text, snippet
from .schema import Field

_SSHD_CONNECTION = re.compile(r"^sshd(-session)?: \S+( \[priv\]| \[net\]|@)")


def _own_processes(root: str, parents: dict[str, str], args: dict[str, str]) -> set[str]:
    """The check's own processes: its script and probes (descendants of ``root``), and the chain that
    runs the script: over SSH, the shell and the connection's own sshd processes (not the sshd that
    listens); run locally, every caller up to, not including, init.
    """
    ours = {root}
    for pid in parents:
        chain = [pid]
        while chain[-1] in parents and chain[-1] not in ours and len(chain) < 256:
            chain.append(parents[chain[-1]])
        if chain[-1] in ours:
            ours.update(chain)
    ancestors: list[str] = []
    pid = parents.get(root, "")
    while pid in parents and pid not in ("0", "1") and pid not in ancestors and len(ancestors) < 256:
        ancestors.append(pid)
        pid = parents[pid]
    connection = [i for i, pid in enumerate(ancestors) if _SSHD_CONNECTION.match(args.get(pid, ""))]
    ours.update(ancestors[: connection[-1] + 1] if connection else ancestors)
    return ours


class ProcessCheck(Check):
    """Processes whose command line matches a regular expression (like ``pgrep -f``)."""

    kind = "process"
    primary = "pattern"
    output_cap = 1024 * 1024
    fields: ClassVar[dict[str, Field]] = {
        "pattern": Field("regex", required=True),
        "user": Field("name"),
        "count": Field("count"),
        "min": Field("count"),
        "max": Field("count"),
    }

    def subject(self) -> str:
        return str(self.params["pattern"])

    def _bounds(self) -> tuple[int, int | None]:
        count = self.params.get("count")
        if count is not None:
            return int(count), int(count)
        low = self.params.get("min")
        high = self.params.get("max")
        return (
            int(low) if low is not None else (0 if high is not None else 1),
            int(high) if high is not None else None,
        )

    def expectation(self) -> str:
        low, high = self._bounds()
        who = f" of user {self.params['user']}" if self.params.get("user") else ""
        if high is None:
            return f"at least {low} process{'es' if low != 1 else ''}{who}"
        if low == high:
            return f"exactly {low} process{'es' if low != 1 else ''}{who}"
        return f"{low} to {high} processes{who}"

    def probe(self) -> str:
        return (
            'echo "root=${DT_ROOT:-0}"; ps -ww -eo pid=,ppid=,stat=,user:32=,args= 2>/dev/null'
            " || ps -o pid,ppid,stat,user,args"
        )

    def direct_output(self) -> bool:
        return True  # a process list cut at max_output proves "at least" (judged so below), and no more

    def judge(self, output: ProbeOutput) -> Verdict:
        lines = output.text.splitlines()
        root = key_values("\n".join(lines[:1])).get("root", "0")
        table: list[tuple[str, str, str, str, str]] = []
        for line in lines[1:]:
            parts = line.split(None, 4)
            if len(parts) == 5 and parts[0].isdigit():
                table.append((parts[0], parts[1], parts[2], parts[3], parts[4]))
        parents = {pid: ppid for pid, ppid, _, _, _ in table}
        ours = _own_processes(root, parents, {pid: args for pid, _, _, _, args in table})
        pattern = re.compile(str(self.params["pattern"]))
        user = self.params.get("user")
        found = [
            (pid, owner)
            for pid, _, state, owner, args in table
            if not state.startswith("Z")  # a zombie has ended: it runs nothing
            and pid not in ours
            and pattern.search(args)
            and (user is None or owner == user)
        ]
        low, high = self._bounds()
        ok = len(found) >= low and (high is None or len(found) <= high)
        if not table:
            return Verdict(
                False, self.expectation(), "no process list (ps failed)", snippet(output.error_text)
            )
        pids = ", ".join(pid for pid, _ in found[:5]) + (", ..." if len(found) > 5 else "")
        observed = f"{len(found)} process{'es' if len(found) != 1 else ''}" + (
            f" (pid {pids})" if found else ""
        )
        if output.truncated and not (ok and high is None):
            # a cut list proves "at least" and nothing else: the rest may hold more (or the one sought)
            return Verdict(False, self.expectation(), f"{observed} in the first"
                           f" {size_text(self.capture_bytes())} of the process list (cut there: the rest unseen)")
        return Verdict(ok, self.expectation(), observed)
