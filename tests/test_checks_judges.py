"""Data-driven tests of the check judges and of config validation: one JSON file per case.

``tests/data/judges/<kind>/<case>.json`` holds ``check`` (its config form), ``output`` (what the
probe gave back: exit, stdout or stdout_b64, stderr, timed_out, truncated, stopped) and ``verdict`` (ok and,
optionally, the exact expected / observed / detail, or detail_contains). ``probe_contains`` /
``probe_excludes`` pin parts of the probe text; ``probe_safe`` runs the probe for real with values
full of shell syntax (secret values in its environment, ``@DB@`` a real SQLite database) and asserts
nothing they spell was executed, that ``probe_reaches`` texts show the value got to its tool, and that
each ``env_reaches`` variable holds its value, intact, in the probe's shell (a secret that never arrived
proves nothing about quoting).
``tests/data/judges/config/<case>.json`` holds a ``checks`` list and the ``error`` (a prefix of the
one-line message) or the ``count`` of checks it gives.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deploytest.checks import parse_check, parse_checks
from deploytest.checks.base import ProbeOutput
from deploytest.errors import ConfigError

DATA = Path(__file__).parent / "data" / "judges"
JUDGE_CASES = sorted(p for p in DATA.glob("*/*.json") if p.parent.name != "config")
CONFIG_CASES = sorted(DATA.glob("config/*.json"))


def _load(path: Path, canary: str = "/nonexistent/canary", database: str = "/nonexistent/app.db") -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text().replace("@CANARY@", canary).replace("@DB@", database))
    return data


def _output(spec: dict[str, Any]) -> ProbeOutput:
    stdout = base64.b64decode(spec["stdout_b64"]) if "stdout_b64" in spec else spec.get("stdout", "").encode()
    return ProbeOutput(
        exit_code=spec.get("exit", 0),
        stdout=stdout,
        stderr=spec.get("stderr", "").encode(),
        timed_out=spec.get("timed_out", False),
        stopped=spec.get("stopped", False),
        truncated=spec.get("truncated", False),
        seconds_limit=spec.get("seconds_limit", 0.0),
    )


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def test_enough_cases() -> None:
    assert len(JUDGE_CASES) + len(CONFIG_CASES) >= 60
    kinds = {p.parent.name for p in JUDGE_CASES}
    assert kinds >= {
        "command",
        "file",
        "http",
        "port",
        "tcp",
        "service",
        "process",
        "package",
        "user",
        "group",
        "database",
        "disk",
    }


@pytest.mark.parametrize("path", [p for p in JUDGE_CASES if "output" in _load(p)], ids=_id)
def test_judge(path: Path) -> None:
    case = _load(path)
    check = parse_check(case["check"], path.stem)
    assert check.kind == path.parent.name
    verdict = check.evaluate(_output(case["output"]))
    want = case["verdict"]
    assert verdict.ok is want["ok"], verdict
    for key in ("expected", "observed", "detail"):
        if key in want:
            assert getattr(verdict, key) == want[key], verdict
    if "detail_contains" in want:
        assert want["detail_contains"] in verdict.detail, verdict
    if want.get("observed_printable"):
        assert verdict.observed.isprintable(), verdict


@pytest.mark.parametrize("path", JUDGE_CASES, ids=_id)
def test_probe_is_valid_shell(path: Path) -> None:
    case = _load(path)
    probe = parse_check(case["check"], path.stem).probe()
    syntax = subprocess.run(["/bin/sh", "-n", "-c", probe], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    for text in case.get("probe_contains", []):
        assert text in probe
    for text in case.get("probe_excludes", []):
        assert text not in probe
    described = json.dumps(parse_check(case["check"], path.stem).to_dict())
    for text in case.get("dict_excludes", []):
        assert text not in described


@pytest.mark.parametrize("path", [p for p in JUDGE_CASES if _load(p).get("probe_safe")], ids=_id)
def test_probe_quotes_hostile_values(path: Path, tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    database = tmp_path / "app.db"  # ``@DB@``: a real database, so that a query really runs
    sqlite3.connect(database).close()
    case = _load(path, str(canary), str(database))
    check = parse_check(case["check"], path.stem)
    probe = check.probe()
    # as the runner gives them: each secret value in the probe's environment, never in its text
    env = {**os.environ, **check.secret_env()}
    # what the probe's shell holds in each ``env_reaches`` variable when it ends, however it ends
    shown = "".join(f' "{name}" "${{{name}-@unset@}}"' for name in case.get("env_reaches", {}))
    script = f"trap 'printf \"\\n@@env %s=%s@@\\n\"{shown}' EXIT\n{probe}" if shown else probe
    ran = subprocess.run(["/bin/sh", "-c", script], capture_output=True, timeout=30, stdin=subprocess.DEVNULL, env=env)
    assert not canary.exists(), "a parameter value was executed as shell"
    for must in case.get("probe_reaches", []):  # the hostile value got as far as the tool that uses it
        assert must in (ran.stdout + ran.stderr).decode(errors="replace"), (ran.stdout, ran.stderr)
    for name, value in case.get("env_reaches", {}).items():  # the secret got, intact, to the tool's environment
        assert f"@@env {name}={value}@@" in ran.stdout.decode(errors="replace"), (ran.stdout, ran.stderr)


@pytest.mark.parametrize("path", CONFIG_CASES, ids=_id)
def test_config(path: Path) -> None:
    case = _load(path)
    if "error" in case:
        with pytest.raises(ConfigError) as caught:
            parse_checks(case["checks"])
        message = str(caught.value)
        assert message.startswith(case["error"]), message
        assert "\n" not in message
        assert message.endswith("Nothing was changed.")
        assert "s3cret" not in message
    else:
        assert len(parse_checks(case["checks"])) == case["count"]
