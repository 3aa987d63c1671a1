"""Checking one value of the ``deploytest`` config: its type, its range, and the one-line refusal
naming the key and what was expected. Pure, no host needed.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any, Mapping, Union

from .errors import ConfigError


def _type_name(value: object) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "true/false", list: "a list",
            dict: "a mapping", type(None): "nothing"}.get(type(value), type(value).__name__)


def _fail(key: str, expected: str, value: object = ...) -> ConfigError:
    got = "" if value is ... else f", got {_type_name(value)} {value!r}"[:120]
    return ConfigError(f"config deploytest.{key}: expected {expected}{got}. Nothing was changed.")


def _string(data: Mapping[str, Any], key: str, where: str, *, required: bool = False,
            default: str | None = None) -> str | None:
    if key not in data or data[key] is None:
        if required:
            raise ConfigError(f"config deploytest.{where}{key}: missing (required). Nothing was changed.")
        return default
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise _fail(where + key, "a non-empty string", value)
    if "\x00" in value or "\n" in value:
        raise _fail(where + key, "a single line of text", value)
    return value


def _number(data: Mapping[str, Any], key: str, where: str, default: float, *, minimum: float = 0,
            integer: bool = False) -> float:
    if key not in data or data[key] is None:
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise _fail(where + key, "a whole number" if integer else "a number", value)
    if value < minimum:
        raise _fail(where + key, f"a number >= {minimum:g}", value)
    return value


def _string_list(data: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = data.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(where + key, "a list of strings", value)
    return tuple(value)


def _check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            names = ", ".join(sorted(allowed))
            raise ConfigError(
                f"config deploytest.{where}{key}: unknown key (expected one of: {names}). Nothing was changed."
            )


def clean_relative_path(path: str, key: str) -> str:
    """A path that stays inside its base directory (no absolute path, no ``..``)."""
    normal = posixpath.normpath(path)
    if posixpath.isabs(path) or normal == "." or normal.startswith("..") or "\x00" in path or "\n" in path:
        raise _fail(key, "a relative path inside the release (no '..', not absolute)", path)
    return normal


def _deploy_to(value: str) -> str:
    normal = posixpath.normpath(value)
    if not posixpath.isabs(value) or "\x00" in value or "\n" in value or normal == "/":
        raise _fail("deploy_to", "an absolute directory path other than /", value)
    if ".." in value.split("/"):
        raise _fail("deploy_to", "a path without '..'", value)
    return normal


def _batches(value: object) -> tuple[Union[int, str], ...]:
    if not isinstance(value, list) or not value:
        raise _fail("rollout.batches", 'a non-empty list of host counts or percentages like [1, "50%"]', value)
    out: list[Union[int, str]] = []
    for item in value:
        if isinstance(item, bool):
            raise _fail("rollout.batches", "host counts (1) or percentages (\"50%\")", item)
        if isinstance(item, int) and item >= 1:
            out.append(item)
        elif isinstance(item, str) and re.fullmatch(r"\d{1,3}(\.\d+)?%", item.strip()) and \
                0 < float(item.strip()[:-1]) <= 100:
            out.append(item.strip())
        else:
            raise _fail("rollout.batches", 'host counts >= 1 or percentages like "50%"', item)
    return tuple(out)
