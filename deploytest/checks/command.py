"""A command's exit status and output on the host."""

from __future__ import annotations

import re
from typing import ClassVar

from ..shell import quote
from .base import MAX_OUTPUT, Check, ProbeOutput, Verdict, as_list, quoted, size_text, snippet
from .schema import Field


class CommandCheck(Check):
    """Run a command; judge its exit status and output.

    The command runs with the session's umask and no limit of deploytest's; the first ``max_output``
    bytes (16 MiB unless set) of each stream are kept and judged, the rest is read and dropped.
    """

    kind = "command"
    primary = "run"
    fields: ClassVar[dict[str, Field]] = {
        "run": Field("shell", required=True),
        "exit": Field("exit", default=0),
        "stdout": Field("text"),
        "stdout_matches": Field("regex"),
        "stdout_equals": Field("text"),
        "stdout_empty": Field("bool"),
        "stderr": Field("text"),
        "stderr_matches": Field("regex"),
        "stderr_equals": Field("text"),
        "stderr_empty": Field("bool"),
        "cwd": Field("path"),
        "max_output": Field("size"),
    }
    output_cap = MAX_OUTPUT

    def subject(self) -> str:
        return snippet(str(self.params["run"]), 60)

    def expectation(self) -> str:
        return "exit " + "/".join(str(e) for e in as_list(self.params["exit"]))

    def probe(self) -> str:
        cwd = self.params.get("cwd")
        prefix = f"cd -- {quote(cwd)} || exit 126\n" if cwd else ""
        return prefix + str(self.params["run"])

    def judge(self, output: ProbeOutput) -> Verdict:
        if output.exit_code not in as_list(self.params["exit"]):
            detail = ""
            if output.error_text.strip():
                detail = f"stderr: {quoted(output.error_text)}"
            elif output.text.strip():
                detail = f"stdout: {quoted(output.text)}"
            return Verdict(False, self.expectation(), f"exit {output.exit_code}", detail)
        for stream, text in (("stdout", output.text), ("stderr", output.error_text)):
            verdict = self._judge_stream(stream, text, output.truncated)
            if verdict is not None:
                return verdict
        return Verdict(True, self.expectation(), f"exit {output.exit_code}")

    def _judge_stream(self, stream: str, text: str, truncated: bool) -> Verdict | None:
        shown = quoted(text) if text.strip() else "nothing"
        cut = f" (output cut at {size_text(self.capture_bytes())}; raise max_output)" if truncated else ""
        contains = self.params.get(stream)
        if contains is not None and contains not in text:
            return Verdict(False, f"{stream} containing {quoted(contains)}", shown + cut)
        pattern = self.params.get(f"{stream}_matches")
        if pattern is not None and re.search(pattern, text, re.MULTILINE) is None:
            return Verdict(False, f"{stream} matching /{pattern}/", shown + cut)
        equals = self.params.get(f"{stream}_equals")
        if equals is not None and text.rstrip("\n") != equals.rstrip("\n"):
            return Verdict(False, f"{stream} equal to {quoted(equals)}", shown + cut)
        empty = self.params.get(f"{stream}_empty")
        if empty is True and text.strip():
            return Verdict(False, f"empty {stream}", shown)
        if empty is False and not text.strip():
            return Verdict(False, f"some {stream}", "nothing")
        return None
