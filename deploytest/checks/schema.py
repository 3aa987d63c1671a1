"""The keys a check accepts and how each value is validated: pure, one line per refusal."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import ConfigError


@dataclass(frozen=True)
class Field:
    """One key of a check: its value type, whether it is required, its default and allowed values."""

    type: str
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()


def _whole(value: object, low: float = float("-inf"), high: float = float("inf")) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _in_range(value: object, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


def _single_line(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip()) and "\n" not in value and "\x00" not in value


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value) and "\x00" not in value


def _regex(value: object) -> bool:
    if not _text(value):
        return False
    try:
        re.compile(str(value))
    except re.error:
        return False
    return True


def _wholes(value: object, low: float, high: float) -> bool:
    """A whole number from ``low`` to ``high``, or a non-empty list of them."""
    values = value if isinstance(value, list) else [value]
    return bool(values) and all(_whole(v, low, high) for v in values)


def _str_map(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(
            _single_line(k) and isinstance(v, str) and "\n" not in v and "\x00" not in v
            for k, v in value.items()
        )
    )


def _env_map(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(
            isinstance(k, str)
            and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) is not None
            and isinstance(v, (str, int))
            and not isinstance(v, bool)
            and "\n" not in str(v)
            and "\x00" not in str(v)
            for k, v in value.items()
        )
    )


def _json_map(value: object) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(_single_line(k) for k in value)


def _str_list(value: object) -> bool:
    values = value if isinstance(value, list) else [value]
    return bool(values) and all(_single_line(v) for v in values)


def _url(value: object) -> bool:
    return _single_line(value) and re.match(r"^https?://[^\s]+$", str(value)) is not None


def _path(value: object) -> bool:
    return _single_line(value) and str(value).startswith("/")


_VALIDATORS: dict[str, tuple[Callable[[object], bool], str]] = {
    "str": (_single_line, "a single-line string"),
    "text": (_text, "a string"),
    "shell": (_text, "a shell command string"),
    "regex": (_regex, "a valid regular expression"),
    "path": (_path, "an absolute path"),
    "url": (_url, "an http:// or https:// URL"),
    "int": (_whole, "a whole number"),
    "count": (lambda v: _whole(v, 0), "a whole number >= 0"),
    "port": (lambda v: _whole(v, 1, 65535), "a port number from 1 to 65535"),
    "number": (lambda v: _in_range(v, 0, float("inf")), "a number >= 0"),
    "percent": (lambda v: _in_range(v, 0, 100), "a number from 0 to 100"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "status": (lambda v: _wholes(v, 100, 599), "a number or list of numbers (HTTP status codes 100-599)"),
    "str_map": (_str_map, "a mapping of names to single-line strings"),
    "env_map": (_env_map, "a mapping of environment variable names to single-line values"),
    "json_map": (_json_map, "a mapping of JSON paths (like data.items.0.id or /a.b/0) to expected values"),
    "str_list": (_str_list, "a string or a list of strings"),
    "mapping": (lambda v: isinstance(v, Mapping) and bool(v), "a mapping"),
    "octal": (
        lambda v: isinstance(v, str) and re.fullmatch(r"0?[0-7]{3,4}", v) is not None,
        'a quoted octal mode like "0644"',
    ),
    "version": (_single_line, 'a version or constraint like "1.2", ">=1.2" or ">=1.2, <2"'),
    "size": (lambda v: _whole(v, 1), "a number of bytes >= 1"),
    "name": (
        lambda v: (
            _single_line(v) and re.fullmatch(r"[A-Za-z0-9_.@:+/][A-Za-z0-9_.@:+/-]*", str(v)) is not None
        ),
        "a name of letters, digits and . _ - @ : + / (not starting with -)",
    ),
    "exit": (lambda v: _wholes(v, 0, 255), "an exit status 0-255 or a list of them"),
    "scalar": (
        lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool),
        "a string or a number",
    ),
}


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(
    fields: Mapping[str, Field],
    raw: Mapping[str, Any],
    where: str,
    secret_fields: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Check ``raw`` against ``fields``; return the values with defaults filled in.

    :param where: the key path for messages, e.g. ``config deploytest.checks[2].http``.
    :raises ConfigError: one line naming the key and what was expected.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys, got {_shown(raw)}. Nothing was changed.")
    for key in raw:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where}.{key}: unknown key (expected one of: {known}). Nothing was changed.")
    out: dict[str, Any] = {}
    for key, field in fields.items():
        value = raw.get(key)
        if value is None:
            if field.required:
                raise ConfigError(f"{where}.{key}: missing (required). Nothing was changed.")
            out[key] = field.default
            continue
        check, expected = _VALIDATORS[field.type]
        if field.choices:
            ok = value in field.choices
            expected = "one of " + ", ".join(field.choices)
        else:
            ok = check(value)
        if not ok:
            got = "a secret value" if key in secret_fields else _shown(value)
            raise ConfigError(f"{where}.{key}: expected {expected}, got {got}. Nothing was changed.")
        out[key] = value
    return out
