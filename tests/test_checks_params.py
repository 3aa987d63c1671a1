"""A check refuses parameters it cannot use when it is built, from config or directly from Python."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from deploytest.checks import CATALOG, parse_check
from deploytest.checks.database import DatabaseCheck
from deploytest.checks.http import HttpCheck
from deploytest.checks.network import PortCheck
from deploytest.errors import ConfigError


def refusal(cls: Any, params: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        cls(params, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.endswith("Nothing was changed."), message
    return message


@pytest.mark.parametrize(
    "cls, params, expected",
    [
        (PortCheck, {"port": "80; rm -rf /"}, "port check.port: expected a port number from 1 to 65535"),
        (PortCheck, {"port": 0}, "port check.port: expected a port number"),
        (PortCheck, {"port": 8000, "colour": "red"}, "port check.colour: unknown key"),
        (PortCheck, {}, "port check.port: missing (required)"),
        (CATALOG["file"], {"path": "/etc/passwd\nrm -rf /"}, "file check.path: expected an absolute path"),
        (CATALOG["file"], {"path": "relative/path"}, "file check.path: expected an absolute path"),
        (HttpCheck, {"url": "http://x/$(reboot)\n"}, "http check.url: expected an http:// or https:// URL"),
        (CATALOG["service"], {"name": "-hello"}, "service check.name: expected a name"),
        (DatabaseCheck, {"engine": "sqlite"}, "database check.path: missing (required for engine sqlite)"),
        (PortCheck, [8000], "port check: expected a mapping of keys"),
    ],
)
def test_direct_construction_refuses_what_config_refuses(cls: Any, params: Any, expected: str) -> None:
    assert refusal(cls, params).startswith(expected)


def test_same_message_as_the_config_loader() -> None:
    where = "config deploytest.checks[0].port"
    with pytest.raises(ConfigError) as from_config:
        parse_check({"port": {"port": "80; rm -rf /"}}, "config deploytest.checks[0]")
    assert refusal(PortCheck, {"port": "80; rm -rf /"}, where=where) == str(from_config.value)


def test_name_and_timeout_are_validated_too() -> None:
    assert refusal(PortCheck, {"port": 80}, name="a\nb").startswith("port check.name: expected a single-line string")
    assert refusal(PortCheck, {"port": 80}, timeout=-1).startswith("port check.timeout: expected a number >= 0")


def test_secret_values_are_not_shown_in_the_refusal() -> None:
    message = refusal(DatabaseCheck, {"engine": "postgres", "env": {"PGPASSWORD": "hunter2\nx"}})
    assert "hunter2" not in message and "a secret value" in message


def test_a_valid_direct_check_gets_its_defaults() -> None:
    check = PortCheck({"port": 8000}, name="app port", timeout=5)
    parsed = parse_check({"port": {"port": 8000, "name": "app port", "timeout": 5}})
    assert check.params == parsed.params and check.name == parsed.name == "app port"
    assert check.timeout == parsed.timeout == 5.0 and check.probe() == parsed.probe()


@pytest.mark.parametrize("kind", sorted(CATALOG))
def test_every_kind_refuses_an_unknown_key(kind: str) -> None:
    params: Dict[str, Any] = {"no_such_key": 1}
    assert refusal(CATALOG[kind], params).startswith(f"{kind} check.no_such_key: unknown key")
