"""The check model: a probe (shell text run on the host) and a judge (pure Python over its output).

A check never talks to a host itself. Its :meth:`Check.probe` is POSIX shell text, safe to run
beside other probes in one remote script; its :meth:`Check.judge` turns what the probe printed
into a :class:`Verdict`. Everything a user wrote that reaches the shell is quoted with
:func:`deploytest.shell.quote`, and a check refuses parameters it cannot use when it is built.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from .schema import Field, validate

if TYPE_CHECKING:
    from ..hosts import Target

REDACTED = "***"
#: Output past a probe's cap is read and dropped on the host up to this many bytes per stream; a probe
#: that writes more has its output closed and is judged "stopped" (see :mod:`deploytest.checks.script`).
DRAIN_BYTES = 1024 * 1024 * 1024
#: The default ``max_output`` of the checks that judge output or content (command, file, http).
MAX_OUTPUT = 16 * 1024 * 1024


@dataclass(frozen=True)
class Verdict:
    """What a judge concluded: green or red, what was expected and what was observed."""

    ok: bool
    expected: str
    observed: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return {"ok": self.ok, "expected": self.expected, "observed": self.observed, "detail": self.detail}

    def redacted(self, secret_values: list[str]) -> Verdict:
        """This verdict with every secret value replaced by ``***``."""
        return Verdict(
            self.ok,
            redact(self.expected, secret_values),
            redact(self.observed, secret_values),
            redact(self.detail, secret_values),
        )


@dataclass(frozen=True)
class ProbeOutput:
    """What one probe gave back on the host: exit status, output (capped) and whether it was killed.

    ``truncated``: more output than the cap was written (the rest was read and dropped on the host);
    ``stopped``: the probe wrote past the drain bound and its output was closed (SIGPIPE).
    """

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False
    truncated: bool = False
    seconds_limit: float = 0.0
    stopped: bool = False

    @property
    def text(self) -> str:
        """Standard output as text (invalid UTF-8 replaced)."""
        return self.stdout.decode("utf-8", "replace")

    @property
    def error_text(self) -> str:
        """Standard error as text (invalid UTF-8 replaced)."""
        return self.stderr.decode("utf-8", "replace")


def redact(text: str, secret_values: list[str]) -> str:
    """``text`` with every secret value (longest first) replaced by ``***``."""
    for value in sorted((v for v in secret_values if v), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def size_text(size: int) -> str:
    """A byte count for people: ``16 MiB``, ``64 KiB``, ``1000 bytes``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


def snippet(text: str, limit: int = 80) -> str:
    """One line of ``text`` for a message: whitespace folded, cut at ``limit`` characters."""
    flat = " ".join(text.split())
    printable = "".join(ch if ch.isprintable() else "?" for ch in flat)
    return printable if len(printable) <= limit else printable[: limit - 3] + "..."


def quoted(text: str, limit: int = 80) -> str:
    """:func:`snippet` of ``text`` in double quotes, for showing a value or an output in a verdict."""
    return '"' + snippet(text, limit).replace('"', '\\"') + '"'


def key_values(text: str) -> dict[str, str]:
    """``key=value`` lines into a mapping (first occurrence wins; other lines ignored)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key and key.isidentifier() and key not in out:
            out[key] = value
    return out


def as_list(value: object) -> list[Any]:
    """``value`` as a list: a list as it is, anything else as a list of one (``status: 200``)."""
    return list(value) if isinstance(value, list) else [value]


#: The keys every check accepts beside its own.
COMMON_FIELDS: Mapping[str, Field] = {"name": Field("str"), "timeout": Field("number")}


class Check(ABC):
    """One expectation about a host: a probe plus a judge.

    Subclasses set :attr:`kind`, :attr:`fields` (the keys a user may write) and :attr:`primary`
    (the key a scalar shorthand like ``- port: 8000`` fills), and implement :meth:`subject`,
    :meth:`expectation`, :meth:`probe` and :meth:`judge`.
    """

    kind: ClassVar[str]
    fields: ClassVar[Mapping[str, Field]]
    primary: ClassVar[str]
    #: The most output of its probe a check keeps (per stream); ``max_output`` overrides it where allowed.
    output_cap: ClassVar[int] = 64 * 1024
    secret_fields: ClassVar[frozenset[str]] = frozenset()
    #: True for a check measured from this machine (:meth:`measure`), not by a probe on the host.
    local: ClassVar[bool] = False

    def __init__(
        self,
        params: Mapping[str, Any],
        *,
        name: str | None = None,
        timeout: float | None = None,
        where: str | None = None,
    ) -> None:
        """A check of this kind; its parameters are validated as the config's are.

        :param params: the kind's keys as a user writes them (defaults are filled in).
        :param where: the key path for messages; default ``<kind> check``.
        :raises ConfigError: one line naming the key and what was expected.
        """
        where = where or f"{self.kind} check"
        common = validate(COMMON_FIELDS, {"name": name, "timeout": timeout}, where)
        self.params: dict[str, Any] = validate(self.fields, params, where, self.secret_fields)
        self.refine(self.params, where)
        self._name: str | None = common["name"]
        self.timeout: float | None = float(timeout) if timeout is not None else None
        self._secret_vars: dict[str, str] = {}

    @classmethod
    def refine(cls, params: Mapping[str, Any], where: str) -> None:
        """Refuse combinations of keys that are valid one by one but not together (raise ConfigError)."""
        del params, where  # most kinds have no such combinations

    @property
    def name(self) -> str:
        """The readable name: the user's ``name``, else ``<kind> <subject>``."""
        return self._name or f"{self.kind} {self.subject()}"

    @abstractmethod
    def subject(self) -> str:
        """What the check is about, e.g. the URL or the port."""

    @abstractmethod
    def expectation(self) -> str:
        """A short phrase for what green means, e.g. ``status 200``."""

    @abstractmethod
    def probe(self) -> str:
        """Shell text whose output the judge reads; runs in its own ``/bin/sh``."""

    @abstractmethod
    def judge(self, output: ProbeOutput) -> Verdict:
        """Turn the probe's output into a verdict; pure, no host needed."""

    def evaluate(self, output: ProbeOutput) -> Verdict:
        """The verdict for ``output``, with a time-out or a broken frame judged the same for all kinds."""
        if output.timed_out:
            return Verdict(
                False, self.expectation(), f"no answer within {output.seconds_limit:g}s (probe killed)"
            )
        if output.stopped:
            return Verdict(False, self.expectation(), f"more than {size_text(DRAIN_BYTES)} of output (probe stopped)")
        if output.exit_code < 0:
            return Verdict(
                False,
                self.expectation(),
                "no result from the probe",
                snippet(output.error_text) if output.stderr else "",
            )
        return self.judge(output)

    def measure(self, target: Target) -> ProbeOutput:
        """A local check's measurement about ``target``, taken from this machine (see :attr:`local`)."""
        raise NotImplementedError(f"{self.kind} checks run on the host")

    def conclude(self, verdicts: Sequence[Verdict], *, last: bool) -> tuple[Verdict, bool]:
        """The verdict of the latest attempt on one host given those before it, and whether it is final
        (no use trying again before the deadline).

        :param verdicts: this host's verdicts so far, oldest first (at least one).
        :param last: the deadline comes before another attempt.
        """
        del last
        return verdicts[-1], False

    def direct_output(self) -> bool:
        """True when the probe may write straight to its files on the host, without the readers that
        cap and drain an output of unknown size (see :mod:`deploytest.checks.script`). Only for
        deploytest's own probe text, never a user's command, and only when the judge reads no more than
        the first :meth:`capture_bytes` and no exit status of a writer stopped past them: a probe that
        writes past its cap is then stopped there (its output kept and judged "cut"), not drained."""
        return False

    def capture_bytes(self) -> int:
        """How many bytes of its probe's stdout and stderr this check keeps and judges."""
        limit = self.params.get("max_output")
        return int(limit) if limit else self.output_cap

    def secret_env(self) -> dict[str, str]:
        """Environment variables (name -> secret value) the probe reads; sent on stdin, never in text."""
        return dict(self._secret_vars)

    def secret_values(self) -> list[str]:
        """Values to redact from everything this check reports."""
        return [v for v in self._secret_vars.values() if v]

    def _secret_var(self, value: str) -> str:
        """A fresh variable name holding ``value`` on the host; the value never enters the script."""
        for var, known in self._secret_vars.items():
            if known == value:
                return var
        var = f"DTS_{secrets.token_hex(6)}"
        self._secret_vars[var] = value
        return var

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description with secret parameters redacted."""
        params: dict[str, Any] = {}
        for key, value in self.params.items():
            if value is None:
                continue
            if key in self.secret_fields:
                value = {k: REDACTED for k in value} if isinstance(value, dict) else REDACTED
            params[key] = value
        return {"kind": self.kind, "name": self.name, "timeout": self.timeout, "params": params}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
