"""Checks on the host itself: commands, files, disk, users and groups, processes, packages, services."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Mapping

from ..errors import ConfigError
from ..shell import quote
from .base import MAX_OUTPUT, Check, ProbeOutput, Verdict, as_list, key_values, quoted, size_text, snippet
from .schema import Field
from .versions import VersionError, parse_spec, satisfies


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
            " stat -c 'lmode=%a lowner=%U luid=%u lgroup=%G lgid=%g' -- \"$p\" 2>/dev/null | tr ' ' '\\n';"
            " else echo link=0; fi",
            'if [ -d "$p" ]; then echo type=dir; elif [ -f "$p" ]; then echo type=file;'
            ' elif [ -e "$p" ]; then echo type=other; elif [ -L "$p" ]; then echo type=broken;'
            " else echo type=absent; exit 0; fi",
            "stat -L -c 'mode=%a owner=%U uid=%u group=%G gid=%g size=%s' -- \"$p\" 2>/dev/null"
            " | tr ' ' '\\n'",
        ]
        for key, database in (("owner", "passwd"), ("group", "group")):
            name = self.params.get(key)
            if name is not None:
                lines.append(f"echo \"want_{key}=$({_id_of(database, str(name))})\"")
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


def _lookup(database: str, name: str) -> str:
    """Shell text printing ``name``'s line of ``passwd`` or ``group`` (name in ``$n``), looked up by name.

    ``getent passwd 1234`` looks up uid 1234, so a name of digits is found by listing the database.
    """
    if name.isdigit():
        return (
            f"n={quote(name)}; {{ getent {database} || cat /etc/{database}; }} 2>/dev/null"
            " | awk -F: -v n=\"$n\" '$1 == n'"
        )
    return f'n={quote(name)}; getent {database} "$n" 2>/dev/null || awk -F: -v n="$n" \'$1 == n\' /etc/{database}'


def _id_of(database: str, name: str) -> str:
    """Shell text printing the numeric id of user or group ``name`` on the host (nothing if none)."""
    return f" ( {_lookup(database, name)} ) | cut -d: -f3 | head -n 1"


def _entry(text: str, name: str) -> list[str] | None:
    """The fields of ``name``'s line in ``getent passwd``/``group`` output, None when it has none."""
    return next((line.split(":") for line in text.splitlines() if line.split(":")[0] == name), None)


def _absent(fields: list[str] | None, id_key: str) -> Verdict:
    """The verdict for an account that should not exist: green when ``fields`` is None."""
    return Verdict(fields is None, "absent", "absent" if fields is None else f"present ({id_key} {fields[2]})")


class UserCheck(Check):
    """A user account: exists, uid, gid, groups, home, shell."""

    kind = "user"
    primary = "name"
    fields: ClassVar[dict[str, Field]] = {
        "name": Field("name", required=True),
        "exists": Field("bool", default=True),
        "uid": Field("count"),
        "gid": Field("count"),
        "groups": Field("str_list"),
        "home": Field("path"),
        "shell": Field("path"),
    }

    def subject(self) -> str:
        return str(self.params["name"])

    def expectation(self) -> str:
        return "present" if self.params["exists"] else "absent"

    def probe(self) -> str:
        return (
            _lookup("passwd", self.params["name"]) + '\necho "--groups--"; id -Gn -- "$n" 2>/dev/null; true'
        )

    def judge(self, output: ProbeOutput) -> Verdict:
        entry, _, groups_text = output.text.partition("--groups--")
        fields = _entry(entry, str(self.params["name"]))
        if not self.params["exists"]:
            return _absent(fields, "uid")
        if fields is None or len(fields) < 7:
            return Verdict(False, "present", "absent")
        observed = f"uid {fields[2]}, gid {fields[3]}"
        for key, index in (("uid", 2), ("gid", 3), ("home", 5), ("shell", 6)):
            wanted = self.params.get(key)
            if wanted is not None and str(wanted) != fields[index]:
                return Verdict(False, f"{key} {wanted}", f"{key} {fields[index]}")
        wanted_groups = self.params.get("groups")
        if wanted_groups is not None:
            wanted_list = as_list(wanted_groups)
            have = groups_text.split()
            if any(g not in have for g in wanted_list):
                return Verdict(
                    False, "member of " + ", ".join(wanted_list), "groups " + (", ".join(have) or "none")
                )
        return Verdict(True, "present", observed)


class GroupCheck(Check):
    """A group: exists, gid, members."""

    kind = "group"
    primary = "name"
    fields: ClassVar[dict[str, Field]] = {
        "name": Field("name", required=True),
        "exists": Field("bool", default=True),
        "gid": Field("count"),
        "members": Field("str_list"),
    }

    def subject(self) -> str:
        return str(self.params["name"])

    def expectation(self) -> str:
        return "present" if self.params["exists"] else "absent"

    def probe(self) -> str:
        return _lookup("group", self.params["name"])

    def judge(self, output: ProbeOutput) -> Verdict:
        fields = _entry(output.text, str(self.params["name"]))
        if not self.params["exists"]:
            return _absent(fields, "gid")
        if fields is None or len(fields) < 4:
            return Verdict(False, "present", "absent")
        gid = self.params.get("gid")
        if gid is not None and str(gid) != fields[2]:
            return Verdict(False, f"gid {gid}", f"gid {fields[2]}")
        members = [m for m in fields[3].split(",") if m]
        wanted = self.params.get("members")
        if wanted is not None:
            wanted_list = as_list(wanted)
            if any(m not in members for m in wanted_list):
                return Verdict(
                    False, "members " + ", ".join(wanted_list), "members " + (", ".join(members) or "none")
                )
        return Verdict(True, "present", f"gid {fields[2]}")


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
        return Verdict(ok, self.expectation(), observed)


class PackageCheck(Check):
    """An installed package (dpkg, rpm, apk, or pip for a given python) and its version."""

    kind = "package"
    primary = "name"
    fields: ClassVar[dict[str, Field]] = {
        "name": Field("name", required=True),
        "version": Field("version"),
        "installed": Field("bool", default=True),
        "manager": Field("str", default="auto", choices=("auto", "dpkg", "rpm", "apk", "pip")),
        "python": Field("str", default="python3"),
    }

    _PIP = (
        "import sys\ntry:\n from importlib.metadata import version\nexcept ImportError:\n"
        " sys.exit(3)\ntry:\n v = version(sys.argv[1])\nexcept Exception:\n print('status=not-installed')\n"
        "else:\n print('status=install ok installed'); print('version=' + v)\n"
    )

    @classmethod
    def refine(cls, params: Mapping[str, Any], where: str) -> None:
        """Refuse a version constraint that the manager's own rules cannot parse."""
        version = params.get("version")
        if version:
            try:
                parse_spec(str(version), str(params["manager"]))
            except VersionError as exc:
                raise ConfigError(f"{where}.version: {exc}. Nothing was changed.") from None

    def subject(self) -> str:
        return str(self.params["name"])

    def expectation(self) -> str:
        if not self.params["installed"]:
            return "not installed"
        version = self.params.get("version")
        return f"installed, version {version.strip()}" if version else "installed"

    def probe(self) -> str:
        name = quote(self.params["name"])
        return "\n".join(
            [
                f"n={name}; m={quote(self.params['manager'])}",
                'if [ "$m" = auto ]; then',
                "  if command -v dpkg-query >/dev/null 2>&1; then m=dpkg",
                "  elif command -v rpm >/dev/null 2>&1; then m=rpm",
                "  elif command -v apk >/dev/null 2>&1; then m=apk; else m=none; fi",
                "fi",
                'echo "manager=$m"',
                'case "$m" in',
                "  dpkg) dpkg-query -W -f='status=${Status}\\nversion=${Version}\\n' \"$n\" 2>/dev/null"
                " || echo status=not-installed ;;",
                "  rpm) rpm -q --qf 'status=install ok installed\\n"
                "version=%|EPOCH?{%{EPOCH}:}|%{VERSION}-%{RELEASE}\\n' \"$n\" 2>/dev/null"
                " || echo status=not-installed ;;",
                '  apk) if apk info -e "$n" >/dev/null 2>&1; then echo "status=install ok installed";'
                ' v=$(apk info "$n" 2>/dev/null | head -n 1); v=${v%% *}; echo "version=${v#"$n"-}";'
                " else echo status=not-installed; fi ;;",
                f'  pip) {quote(self.params["python"])} -c {quote(self._PIP)} "$n" ;;',
                "esac",
            ]
        )

    def judge(self, output: ProbeOutput) -> Verdict:
        facts = key_values(output.text)
        manager = facts.get("manager", "unknown")
        status = facts.get("status", "")
        if manager == "none":
            return Verdict(False, self.expectation(), "no package manager found (dpkg, rpm, apk)")
        if not status:
            return Verdict(False, self.expectation(), f"no answer from {manager}", snippet(output.error_text))
        installed = status.split()[-1] == "installed" and status != "not-installed"
        version = facts.get("version", "")
        if not self.params["installed"]:
            return Verdict(
                not installed,
                "not installed",
                f"installed {version} ({manager})" if installed else "not installed",
            )
        if not installed:
            return Verdict(False, self.expectation(), f"not installed ({manager})")
        wanted = self.params.get("version")
        if wanted:
            try:
                ok = satisfies(version, wanted, manager)
            except VersionError as exc:
                return Verdict(False, self.expectation(), f"version {version} ({manager})", f"{exc}")
            if not ok:
                return Verdict(False, self.expectation(), f"version {version} ({manager})")
        return Verdict(True, self.expectation(), f"version {version} ({manager})")


class ServiceCheck(Check):
    """A service under systemd, supervisor or SysV init: running and/or enabled."""

    kind = "service"
    primary = "name"
    fields: ClassVar[dict[str, Field]] = {
        "name": Field("name", required=True),
        "running": Field("bool", default=True),
        "enabled": Field("bool"),
        "manager": Field("str", default="auto", choices=("auto", "systemd", "supervisor", "sysv")),
        "supervisor_conf": Field("path"),
    }

    def subject(self) -> str:
        return str(self.params["name"])

    def expectation(self) -> str:
        parts = ["running" if self.params["running"] else "stopped"]
        if self.params.get("enabled") is not None:
            parts.append("enabled" if self.params["enabled"] else "disabled")
        return ", ".join(parts)

    def probe(self) -> str:
        conf = self.params.get("supervisor_conf") or ""
        return "\n".join(
            [
                f"n={quote(self.params['name'])}; m={quote(self.params['manager'])}; c={quote(conf)}",
                '_sv() { if [ -n "$c" ]; then supervisorctl -c "$c" "$@"; else supervisorctl "$@"; fi; }',
                "_sd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }",
                'if [ "$m" = auto ]; then',
                "  m=none",
                '  if [ -n "$c" ]; then m=supervisor',
                '  elif _sd && [ "$(systemctl show -p LoadState --value -- "$n" 2>/dev/null)" = loaded ];'
                " then m=systemd",
                "  elif command -v supervisorctl >/dev/null 2>&1; then",
                '    set -- $(_sv status "$n" 2>/dev/null | head -n 1)',
                '    case "${1:-}" in "$n"|*":$n") m=supervisor ;; esac',
                "  fi",
                '  if [ "$m" = none ] && [ -x "/etc/init.d/$n" ]; then m=sysv; fi',
                '  if [ "$m" = none ] && _sd; then m=systemd; fi',
                "fi",
                'echo "manager=$m"',
                'case "$m" in',
                '  systemd) echo "active=$(systemctl is-active -- "$n" 2>/dev/null)";'
                ' echo "enabled=$(systemctl is-enabled -- "$n" 2>/dev/null)" ;;',
                '  supervisor) echo "status=$(_sv status "$n" 2>&1 | head -n 1)";'
                " a=$(_sv avail 2>/dev/null | awk -v n=\"$n\" '$1 == n {print $4}');"
                ' echo "enabled=${a:-unknown}" ;;',
                '  sysv) if [ -x "/etc/init.d/$n" ]; then'
                ' "/etc/init.d/$n" status >/dev/null 2>&1; echo "rc=$?";'
                " else echo rc=4; fi;"
                ' if ls /etc/rc[2345].d/S[0-9][0-9]"$n" >/dev/null 2>&1; then echo enabled=enabled;'
                " else echo enabled=disabled; fi ;;",
                "esac",
            ]
        )

    def judge(self, output: ProbeOutput) -> Verdict:
        facts = key_values(output.text)
        manager = facts.get("manager", "")
        enabled_state = facts.get("enabled", "")
        if manager == "systemd":
            state = facts.get("active", "") or "unknown"
            running = state == "active"
            enabled = enabled_state in ("enabled", "enabled-runtime", "static", "alias", "indirect")
            observed = f"{state} (systemd)"
        elif manager == "supervisor":
            words = facts.get("status", "").split()
            name = str(self.params["name"])
            # A program in a group is "group:name"; a bare name also finds it as a homogeneous group.
            known = len(words) > 1 and (words[0] == name or (":" not in name and words[0].split(":")[-1] == name))
            state = words[1] if known else "unknown"
            running = state == "RUNNING"
            enabled = enabled_state == "auto"
            observed = f"{state} (supervisor)"
            if state == "unknown" and facts.get("status"):
                observed = f"unknown to supervisor ({snippet(facts['status'], 60)})"
        elif manager == "sysv":
            rc = facts.get("rc", "")
            running = rc == "0"
            enabled = enabled_state == "enabled"
            observed = {"0": "running", "3": "stopped", "4": "unknown service"}.get(
                rc, f"status exit {rc}"
            ) + " (sysv)"
        else:
            return Verdict(
                False, self.expectation(), "no service manager knows it (systemd, supervisor, sysv)"
            )
        if running != self.params["running"]:
            return Verdict(False, self.expectation(), observed)
        wanted_enabled = self.params.get("enabled")
        if wanted_enabled is not None and enabled != wanted_enabled:
            return Verdict(False, self.expectation(), f"{observed}, {enabled_state or 'unknown'} at boot")
        return Verdict(True, self.expectation(), observed)
