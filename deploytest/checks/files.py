"""Files and disks on the host: a file's presence, kind, mode, owner and content; free space."""

from __future__ import annotations

import re
from typing import ClassVar

from ..shell import quote
from .accounts import id_of
from .base import MAX_OUTPUT, Check, ProbeOutput, Verdict, key_values, quoted, size_text, snippet
from .schema import Field


class FileCheck(Check):
    """A path on the host: existence, type, link target, mode, owner, group, content, digest, size.

    A path "exists" as ``test -e`` says: a dangling symlink does not (its target is absent), except for
    ``type: symlink``. With ``type: symlink``, ``mode``, ``owner`` and ``group`` are the link's own
    (``ls -l``); otherwise they are those of what the path leads to. ``owner`` and ``group`` compare as
    numeric ids on the host: a name is looked up there (a name of digits first as a name, as chown does).
    ``contains`` (one line) is searched on the host over the whole file; ``matches`` reads the first
    ``max_output`` bytes (16 MiB unless set).
    """

    kind = "file"
    primary = "path"
    output_cap = MAX_OUTPUT
    fields: ClassVar[dict[str, Field]] = {
        "path": Field("path", required=True),
        "exists": Field("bool", default=True),
        "type": Field("str", choices=("file", "dir", "symlink")),
        "target": Field("str"),
        "mode": Field("octal"),
        "owner": Field("name"),
        "group": Field("name"),
        "contains": Field("text"),
        "matches": Field("regex"),
        "sha256": Field("str"),
        "size": Field("count"),
        "max_output": Field("size"),
    }

    def subject(self) -> str:
        return str(self.params["path"])

    def expectation(self) -> str:
        if not self.params["exists"]:
            return "absent"
        parts = [str(self.params["type"] or "present")]
        for key in ("mode", "owner", "group"):
            if self.params.get(key) is not None:
                parts.append(f"{key} {self.params[key]}")
        return ", ".join(parts)

    def _grep_contains(self) -> bool:
        contains = self.params.get("contains")
        return contains is not None and "\n" not in contains and "\r" not in contains

    def _wants_content(self) -> bool:
        return self.params.get("matches") is not None or (
            self.params.get("contains") is not None and not self._grep_contains()
        )

    def probe(self) -> str:
        lines = [
            f"p={quote(self.params['path'])}",
            'if [ -L "$p" ]; then echo link=1; echo "target=$(readlink -- "$p")";'
            " stat -c 'lmode=%a\nlowner=%U\nluid=%u\nlgroup=%G\nlgid=%g' -- \"$p\" 2>/dev/null;"
            " else echo link=0; fi",
            'if [ -d "$p" ]; then echo type=dir; elif [ -f "$p" ]; then echo type=file;'
            ' elif [ -e "$p" ]; then echo type=other; elif [ -L "$p" ]; then echo type=broken;'
            " else echo type=absent; exit 0; fi",
            # one fact a line: stat prints the format's newlines as they are (no tr, one process less)
            "stat -L -c 'mode=%a\nowner=%U\nuid=%u\ngroup=%G\ngid=%g\nsize=%s' -- \"$p\" 2>/dev/null",
        ]
        for key, database in (("owner", "passwd"), ("group", "group")):
            name = self.params.get(key)
            if name is not None:
                lines.append(f"echo \"want_{key}=$({id_of(database, str(name))})\"")
        if self.params.get("sha256"):
            lines.append(
                'if [ -f "$p" ]; then h=$( (sha256sum -- "$p" || shasum -a 256 -- "$p"'
                ' || openssl dgst -sha256 -r -- "$p") 2>/dev/null); echo "sha256=${h%% *}"; fi'
            )
        if self._grep_contains():
            lines.append(
                f'if [ -f "$p" ]; then if LC_ALL=C grep -F -q -a -e {quote(self.params["contains"])} -- "$p";'
                " then echo found=1; else echo found=0; fi; fi"
            )
        if self._wants_content():
            lines.append('if [ -f "$p" ]; then echo "--content--"; cat -- "$p"; fi')
        elif self._grep_contains():
            lines.append('if [ -f "$p" ]; then echo "--content--"; head -c 200 -- "$p"; fi')
        return "\n".join(lines)

    def direct_output(self) -> bool:
        return True  # stat facts, and the content judged from its first max_output bytes ("cut" past them)

    def judge(self, output: ProbeOutput) -> Verdict:
        head, _, content = output.stdout.partition(b"\n--content--\n")
        facts = key_values(head.decode("utf-8", "replace"))
        kind = facts.get("type", "")
        is_link = facts.get("link") == "1"
        if not kind:
            return Verdict(
                False,
                self.expectation(),
                "nothing (the probe printed no file facts)",
                snippet(output.error_text),
            )
        dangling = f"a dangling symlink to {facts.get('target')}"
        wanted = self.params.get("type")
        if not self.params["exists"]:
            if kind == "absent":
                return Verdict(True, "absent", "absent")
            if kind == "broken":
                return Verdict(True, "absent", f"absent ({dangling})")
            return Verdict(False, "absent", f"a {'symlink to a ' if is_link else ''}{kind}")
        if kind == "absent":
            return Verdict(False, self.expectation(), "absent")
        if kind == "broken" and wanted != "symlink":
            return Verdict(False, self.expectation(), dangling)
        if wanted == "symlink" and not is_link:
            return Verdict(False, "symlink", kind)
        if wanted in ("file", "dir") and kind != wanted:
            return Verdict(False, wanted, kind if kind != "other" else "a special file")
        target = self.params.get("target")
        if target is not None and facts.get("target") != target:
            return Verdict(
                False,
                f"symlink to {target}",
                f"symlink to {facts['target']}" if is_link else f"not a symlink ({kind})",
            )
        own = "l" if wanted == "symlink" else ""  # the link's own mode and owner
        mode = self.params.get("mode")
        if mode is not None:
            got = facts.get(own + "mode")
            if got is None or not re.fullmatch(r"[0-7]+", got):
                return Verdict(False, f"mode {mode}", "unknown mode (stat -c unavailable)")
            if int(got, 8) != int(mode, 8):
                return Verdict(False, f"mode {mode}", f"mode {int(got, 8):04o}")
        for key, numeric in (("owner", "uid"), ("group", "gid")):
            verdict = self._judge_id(key, facts, own + key, own + numeric)
            if verdict is not None:
                return verdict
        size = self.params.get("size")
        if size is not None and facts.get("size") != str(size):
            return Verdict(False, f"size {size} bytes", f"size {facts.get('size', 'unknown')} bytes")
        digest = self.params.get("sha256")
        if digest is not None:
            got_digest = facts.get("sha256", "")
            if got_digest.lower() != str(digest).lower():
                return Verdict(False, f"sha256 {digest}", f"sha256 {got_digest or 'unknown'}")
        if kind == "broken":
            return Verdict(True, self.expectation(), f"symlink to {facts.get('target')} (dangling)")
        verdict = self._judge_content(content.decode("utf-8", "replace"), output.truncated, kind, facts)
        return verdict or Verdict(True, self.expectation(), f"{'symlink to ' if is_link else ''}{kind}")

    def _judge_id(self, key: str, facts: dict[str, str], name_key: str, id_key: str) -> Verdict | None:
        """``owner``/``group`` against the numeric id on the host (None when it holds)."""
        wanted = self.params.get(key)
        if wanted is None:
            return None
        got_id = facts.get(id_key, "")
        got_name = facts.get(name_key, "")
        id_word, entry = ("uid", "user") if key == "owner" else ("gid", "group")
        shown = f"{key} {got_name} ({id_word} {got_id})" if got_id else f"{key} unknown"
        if got_name == "UNKNOWN" and got_id:  # stat's placeholder for an id with no entry
            shown = f"{key} {id_word} {got_id} (no {entry} entry)"
        want_id = facts.get(f"want_{key}", "")
        if not want_id and str(wanted).isdigit():
            want_id = str(int(str(wanted)))
        if not want_id:
            return Verdict(False, f"{key} {wanted}", f"{shown}; no {key} named {wanted} on the host")
        if not got_id or int(got_id) != int(want_id):
            return Verdict(False, f"{key} {wanted}", shown)
        return None

    def _judge_content(self, text: str, truncated: bool, kind: str, facts: dict[str, str]) -> Verdict | None:
        contains = self.params.get("contains")
        pattern = self.params.get("matches")
        if contains is None and pattern is None:
            return None
        if kind != "file":
            return Verdict(False, "a regular file to read", kind)
        where = "the file"
        if truncated:
            where = f"the first {size_text(self.capture_bytes())} (cut there; raise max_output)"
        if contains is not None:
            found = facts.get("found") == "1" if "found" in facts else contains in text
            if not found:
                where = "the file" if "found" in facts else where
                return Verdict(
                    False, f"containing {quoted(contains)}", f"not found in {where}", f"content: {quoted(text)}"
                )
        if pattern is not None and re.search(pattern, text, re.MULTILINE) is None:
            return Verdict(
                False, f"matching /{pattern}/", f"no match in {where}", f"content: {quoted(text)}"
            )
        return None


_DF_LINE = re.compile(
    r"^(?P<fs>.*?)\s+(?P<size>\d+)\s+(?P<used>\d+)\s+(?P<free>\d+)\s+(?:\d+|-)%\s+(?P<mount>/.*)$"
)


class DiskCheck(Check):
    """Free space on the filesystem holding a path."""

    kind = "disk"
    primary = "path"
    fields: ClassVar[dict[str, Field]] = {
        "path": Field("path", default="/"),
        "min_free_mb": Field("number"),
        "max_used_percent": Field("percent"),
    }

    def subject(self) -> str:
        return str(self.params["path"])

    def expectation(self) -> str:
        parts = []
        if self.params.get("min_free_mb") is not None:
            parts.append(f"at least {self.params['min_free_mb']:g} MB free")
        if self.params.get("max_used_percent") is not None:
            parts.append(f"at most {self.params['max_used_percent']:g}% used")
        return " and ".join(parts) or "a mounted filesystem"

    def probe(self) -> str:
        return f"df -Pk -- {quote(self.params['path'])} | tail -n 1"

    def judge(self, output: ProbeOutput) -> Verdict:
        # Filesystem and mount point may hold blanks: read the numbers between them, not by position.
        line = output.text.rstrip("\n").rpartition("\n")[2]
        match = _DF_LINE.match(line)
        if output.exit_code != 0 or match is None:
            return Verdict(False, self.expectation(), "no df output", snippet(output.error_text or line))
        used_kb, free_kb = int(match.group("used")), int(match.group("free"))
        free_mb = free_kb / 1024
        used_pct = 100.0 * used_kb / (used_kb + free_kb) if used_kb + free_kb else 0.0
        observed = f"{free_mb:.0f} MB free, {used_pct:.0f}% used on {match.group('mount')}"
        minimum = self.params.get("min_free_mb")
        if minimum is not None and free_mb < float(minimum):
            return Verdict(False, self.expectation(), observed)
        maximum = self.params.get("max_used_percent")
        if maximum is not None and used_pct > float(maximum):
            return Verdict(False, self.expectation(), observed)
        return Verdict(True, self.expectation(), observed)
