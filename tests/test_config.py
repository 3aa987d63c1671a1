"""Config validation and rollout planning: pure functions, no host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from deploytest.config import GitSource, load, plan_batches
from deploytest.errors import ConfigError

ROOT = str(Path(__file__).resolve().parent.parent)


def base(**extra: Any) -> Dict[str, Any]:
    data: Dict[str, Any] = {"deploy_to": "/srv/hello", "source": "build/"}
    data.update(extra)
    return data


def refused(data: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(data, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "Nothing was changed" in message, message
    return message


def test_defaults() -> None:
    settings = load(base())
    assert settings.deploy_to == "/srv/hello"
    assert settings.keep_releases == 5
    assert settings.verify.timeout == 30 and settings.verify.interval == 1
    assert settings.rollout.batches == (1, "100%")
    assert settings.current == "/srv/hello/current"
    assert settings.state_dir == "/srv/hello/.deploytest"


def test_full_contract_example() -> None:
    settings = load(base(
        app="hello", keep_releases=3, shared=["data", "config/app.env"],
        hooks={"build": ["make"], "restart": ["sudo systemctl restart hello"]},
        checks=[{"port": {"port": 8000}}],
        verify={"timeout": 10, "interval": 0.5},
        rollout={"batches": [1, "50%"], "max_fail": 1, "parallel": 4},
    ))
    assert settings.shared == ("data", "config/app.env")
    assert settings.build_hooks == ("make",)
    assert settings.rollout.batches == (1, "50%")
    assert settings.rollout.max_fail == 1 and settings.rollout.parallel == 4
    assert len(settings.checks) == 1


def test_git_source() -> None:
    assert load(base(source={"git": "https://example.invalid/app.git", "ref": "v1"})).source == \
        GitSource("https://example.invalid/app.git", "v1")


@pytest.mark.parametrize("data, words", [
    (None, "deploytest: missing"),
    ({"source": "x"}, "deploy_to: missing"),
    (base(deploy_to="srv/hello"), "deploy_to: expected an absolute"),
    (base(deploy_to="/"), "deploy_to: expected an absolute"),
    (base(deploy_to="/srv/../etc"), "deploy_to"),
    (base(deploy_to=5), "deploy_to: expected a non-empty string"),
    (base(keep_releases="five"), "keep_releases: expected a whole number"),
    (base(keep_releases=0), "keep_releases: expected a number >= 1"),
    (base(keep_releases=True), "keep_releases"),
    (base(colour="blue"), "deploytest.colour: unknown key"),
    (base(hooks={"build": "make", "deploy": ["x"]}), "hooks.deploy: unknown key"),
    (base(hooks={"build": [1]}), "hooks.build: expected a list of strings"),
    (base(shared=["../etc"]), "shared: expected a relative path"),
    (base(shared=["/etc/passwd"]), "shared: expected a relative path"),
    (base(verify={"timeout": "soon"}), "verify.timeout: expected a number"),
    (base(verify={"retries": 3}), "verify.retries: unknown key"),
    (base(rollout={"batches": []}), "rollout.batches"),
    (base(rollout={"batches": [0]}), "rollout.batches"),
    (base(rollout={"batches": ["150%"]}), "rollout.batches"),
    (base(rollout={"parallel": 0}), "rollout.parallel"),
    (base(source={"git": "x", "branch": "main"}), "source.branch: unknown key"),
    (base(source={"git": "--upload-pack=evil"}), "source.git"),
    (base(source=42), "deploytest.source: expected a local directory"),
    (base(sudo="yes"), "sudo: expected true or false"),
    (base(app="hello world"), "app: expected a name"),
])
def test_refused_with_one_line_naming_the_key(data: Any, words: str) -> None:
    assert words in refused(data)


def test_source_required_to_deploy() -> None:
    assert "source: missing" in refused({"deploy_to": "/srv/x"}, need_source=True)
    assert load({"deploy_to": "/srv/x"}).source is None  # verify and status need none


@pytest.mark.parametrize("hosts, batches, expected", [
    (5, [1, "50%"], [[1], [2, 3], [4, 5]]),
    (1, [1, "50%"], [[1]]),
    (4, ["100%"], [[1, 2, 3, 4]]),
    (10, [1, 2, "100%"], [[1], [2, 3], [4, 5, 6, 7, 8, 9, 10]]),
    (7, [2], [[1, 2], [3, 4], [5, 6], [7]]),
    (3, ["10%"], [[1], [2], [3]]),
    (50, [1, "25%"], [[1]] + [list(range(i, min(i + 13, 51))) for i in range(2, 51, 13)]),
])
def test_plan_batches(hosts: int, batches: Any, expected: Any) -> None:
    names = [f"web{i}" for i in range(1, hosts + 1)]
    planned = plan_batches(names, batches)
    assert [[int(n[3:]) for n in batch] for batch in planned] == expected
    assert [n for batch in planned for n in batch] == names


def test_config_is_pure_no_ssh_library_is_imported() -> None:
    """Reading config needs no host: importing and using it must not pull in paramiko or fabric."""
    code = (
        "import sys\n"
        "from deploytest.config import load\n"
        "settings = load({'deploy_to': '/srv/x', 'checks': [{'port': 8000}, {'http': {'url': 'http://h/'}}]})\n"
        "assert len(settings.checks) == 2\n"
        "print(sorted(m for m in ('paramiko', 'fabric', 'invoke') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
