"""One verify attempt on one host: every probe still due, as ONE script in one session, and the local
checks (``metric``) measured from this machine at the same time.

A session can carry more than the probes: a script that runs after them in the same session (the
preflight's inspection and lock, whose marks come back after the probes' frames), and an
``answer`` that this machine gives the script once the probes have printed their frames, computed from
their outputs (a ``verify`` that logs its own verdict on the host). Both save a round trip.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Sequence

from ..hosts import CommandTimeout, Reply, RunResult, Target
from ..shell import from_descriptor, quote
from .base import Check, ProbeOutput
from .script import NO_TMPDIR, ProbeJob, build_script, new_nonce, parse_frames, secret_stdin

#: The shortest time a probe is given on the host when its check sets no ``timeout`` of its own,
#: even when the suite's deadline is closer (a suite timeout of 0 means "check once").
MIN_PROBE_SECONDS = 10.0
#: Slack for the whole session beyond the longest probe (connection, start-up, framing).
SESSION_SLACK_SECONDS = 15.0

#: Given the outputs of every check of an attempt, what to write to the session's stdin.
Answer = Callable[[list[ProbeOutput]], bytes]


@dataclass(frozen=True)
class Probes:
    """The probes of some checks as one script: its text, its stdin (the checks' secrets, one a line)
    and how to read its output back."""

    script: str
    stdin: bytes | None
    nonce: str
    jobs: tuple[ProbeJob, ...]
    limit: float  # seconds the whole session may take

    @classmethod
    def of(cls, checks: Sequence[Check], limits: Sequence[float]) -> Probes:
        """The script of ``checks``, each probe bounded by its limit (seconds) on the host."""
        jobs = tuple(ProbeJob(i, c.probe(), limit, c.capture_bytes(), tuple(c.secret_env()), c.direct_output())
                     for i, (c, limit) in enumerate(zip(checks, limits)))
        secret_env: dict[str, str] = {}
        for check in checks:
            secret_env.update(check.secret_env())
        nonce = new_nonce()
        return cls(build_script(jobs, secret_env, nonce), secret_stdin(secret_env), nonce, jobs,
                   max(limits, default=MIN_PROBE_SECONDS) + SESSION_SLACK_SECONDS)

    @property
    def sent(self) -> str:
        """The script as a session runs it: from a descriptor (see :func:`~deploytest.shell.from_descriptor`),
        so the harness's shells do not carry the script in their command lines."""
        return from_descriptor(self.script)

    @property
    def end(self) -> str:
        """The line the script prints once every frame is out."""
        return f"DT{self.nonce} end"

    def outputs(self, stdout: str, missing: str) -> list[ProbeOutput]:
        """The probes' outputs in order; a probe whose frame is missing gets ``missing`` as its error."""
        frames = parse_frames(stdout, self.nonce, self.jobs)
        return [frames.get(job.index) or ProbeOutput(-1, stderr=missing.encode()) for job in self.jobs]

    def timed_out(self) -> list[ProbeOutput]:
        """The outputs of a session that ran past its limit."""
        return [ProbeOutput(-1, stderr=f"the check session ran past {self.limit:g}s".encode(), timed_out=True,
                            seconds_limit=self.limit) for _ in self.jobs]

    def read(self, result: RunResult) -> list[ProbeOutput]:
        """The outputs of a finished session."""
        missing = ("no usable temporary directory on the host" if result.exit_code == NO_TMPDIR else
                   (result.stderr.strip().splitlines() or [f"the check script exited {result.exit_code}"])[-1])
        return self.outputs(result.stdout, missing)


def probes_first(probes: Probes, current: str, rest: str) -> str:
    """The probes, where something is live (``current`` is a link), then ``rest``, in one script.

    The probes go first, in a subshell of their own, so they run as they would alone (no strict mode,
    no locale of ``rest``'s prelude); what ``rest`` prints follows their last frame (see
    :func:`after_frames`). A probe's output travels encoded in its frame: it cannot pass for
    ``rest``'s lines.
    """
    return f"if [ -L {quote(current)} ]; then (\n{probes.sent}\n); fi\n{rest}"


def after_frames(stdout: str, probes: Probes) -> str:
    """What a :func:`probes_first` session printed after the probes' frames (all of it, if none)."""
    end = f"\n{probes.end}\n"
    at = ("\n" + stdout).find(end)
    return stdout if at < 0 else stdout[at + len(end) - 1:]


def run_probes(target: Target, checks: Sequence[Check], limits: Sequence[float], *,
               answer: Callable[[list[ProbeOutput]], bytes] | None = None, tail: str = "") -> list[ProbeOutput]:
    """Run the probes of ``checks`` on ``target`` as one script (one session); outputs in order.

    :param answer: given the outputs once every frame is out, what to write to the script's stdin
        (read by ``tail``), in the same session.
    :param tail: shell text run after the frames (e.g. what logs the answer).
    :raises HostUnreachable: the host could not be reached.
    """
    probes = Probes.of(checks, limits)
    reply = None
    if answer is not None:
        reply = Reply(probes.end, lambda out: answer(probes.outputs(out, "no frame came back")))
    try:
        result = target.run(f"(\n{probes.sent}) || exit $?\n{tail}", stdin=probes.stdin,
                            timeout=probes.limit, reply=reply)
    except CommandTimeout:
        return probes.timed_out()
    return probes.read(result)


def run_attempt(target: Target, checks: Sequence[Check], limits: Sequence[float], *,
                probed: Sequence[ProbeOutput] | None = None, answer: Answer | None = None,
                tail: str = "") -> list[ProbeOutput]:
    """One attempt of ``checks`` about ``target``: the probes as one script on the host (one session),
    and the local checks (``metric``) measured from this machine at the same time; outputs in order.

    :param limits: per-check time limits on the host, in seconds.
    :param probed: the outputs of the probes of this attempt, already taken (in another session, like
        the preflight's): no session is opened for them.
    :param answer: given every check's output, what to write to the probe session's stdin for
        ``tail`` (see :func:`run_probes`); with no probes to run, it is not asked.
    :raises HostUnreachable: the host could not be reached.
    """
    local = {i: c for i, c in enumerate(checks) if c.local}
    measured: dict[int, ProbeOutput] = {}

    def measure(index: int, check: Check) -> None:
        try:
            measured[index] = check.measure(target)
        except Exception as exc:  # noqa: BLE001 - a measuring bug is that check's red, not the host's
            measured[index] = ProbeOutput(1, stderr=f"could not measure ({exc})".encode())

    threads = [threading.Thread(target=measure, args=item, daemon=True) for item in local.items()]
    for thread in threads:
        thread.start()
    remote = [i for i in range(len(checks)) if i not in local]

    def merged(outs: Sequence[ProbeOutput]) -> list[ProbeOutput]:
        for thread in threads:
            thread.join()
        outputs = {i: out for i, out in zip(remote, outs)}
        outputs.update(measured)
        return [outputs[i] for i in range(len(checks))]

    if probed is not None:
        return merged(probed)
    if not remote:
        return merged([])
    answered = None if answer is None else (lambda outs: answer(merged(outs)))
    return merged(run_probes(target, [checks[i] for i in remote], [limits[i] for i in remote],
                             answer=answered, tail=tail))
