"""Users and groups on the host, as ``getent`` (or ``/etc/passwd`` and ``/etc/group``) know them."""

from __future__ import annotations

from typing import ClassVar

from ..shell import quote
from .base import Check, ProbeOutput, Verdict, as_list
from .schema import Field


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


def id_of(database: str, name: str) -> str:
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
