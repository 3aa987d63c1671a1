"""Reading and validating the ``deploytest`` key of Fabric's config: pure, no host needed.

Everything a user wrote is checked here, before any host is touched: unknown keys, wrong types and
missing required keys are refused with one line naming the key and what was expected (one value's
checks are :mod:`deploytest.config_values`).
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, Union

from .checks import parse_checks
from .checks.base import Check
from .config_values import (
    _batches,
    _check_keys,
    _deploy_to,
    _fail,
    _number,
    _string,
    _string_list,
    clean_relative_path,
)
from .errors import ConfigError
from .gate_keys import GATE_KEYS, parse_gates
from .notify import parse_notify

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class GitSource:
    """A git repository cloned on each host at ``ref``."""

    url: str
    ref: str = "HEAD"


Source = Union[str, GitSource]


@dataclass(frozen=True)
class VerifySettings:
    """"Eventually" semantics: re-check what is red every ``interval`` until ``timeout`` seconds."""

    timeout: float = 30.0
    interval: float = 1.0


@dataclass(frozen=True)
class RolloutSettings:
    """How hosts are switched: batches (first = canary), failures tolerated, connections at once."""

    batches: tuple[Union[int, str], ...] = (1, "100%")
    max_fail: int = 0
    parallel: int = 50
    prepare: str = "all"  # or "per_batch": each batch is uploaded and built just before it goes live
    # gates (see deploytest.gates): re-verify a green batch this long; "after_canary": ask before going on
    soak: float = 0.0
    confirm: str = ""
    confirm_url: str | None = None
    confirm_timeout: float = 600.0
    analysis: str = ""  # "background": keep verifying switched batches while later ones go live


@dataclass(frozen=True)
class DeploymentTests:
    """The pytest deployment tests of the suite: ``deploytest.tests`` and ``deploytest.pytest_args``.

    :ivar paths: files, directories or node ids, relative to the fabfile's directory.
    :ivar args: extra pytest arguments.
    :ivar archive: the test files as recorded with a release (base64 of a tar.gz, see
        :mod:`deploytest.suite_files`); None: today's files, read from the fabfile's directory.
    """

    paths: tuple[str, ...]
    args: tuple[str, ...] = ()
    archive: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form kept in a recorded suite."""
        data: dict[str, Any] = {"paths": list(self.paths), "pytest_args": list(self.args)}
        if self.archive is not None:
            data["archive"] = self.archive
        return data


@dataclass(frozen=True)
class Settings:
    """The validated ``deploytest`` configuration."""

    deploy_to: str
    app: str = "app"
    source: Source | None = None
    keep_releases: int = 5
    shared: tuple[str, ...] = ()
    build_hooks: tuple[str, ...] = ()
    restart_hooks: tuple[str, ...] = ()
    stop_hooks: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()
    tests: DeploymentTests | None = None  # pytest deployment tests, run with the checks
    # The suite recorded with each verified release (JSON): {"checks": [as the user wrote them],
    # "tests": {paths, pytest_args, archive}}; a suite recorded before tests existed is a list of checks.
    suite: str = '{"checks":[]}'
    verify: VerifySettings = field(default_factory=VerifySettings)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    sudo: bool = False
    connect_timeout: float = 10.0
    min_free_mb: int = 1
    step_timeout: float = 900.0
    base_dir: str = "."
    label: str | None = None  # this run's release label (--label), instead of the source's content hash
    notify: tuple[Any, ...] = ()  # webhooks told of the rollout's events (see deploytest.notify)

    @property
    def releases_dir(self) -> str:
        """``<deploy_to>/releases``."""
        return posixpath.join(self.deploy_to, "releases")

    @property
    def shared_dir(self) -> str:
        """``<deploy_to>/shared``."""
        return posixpath.join(self.deploy_to, "shared")

    @property
    def current(self) -> str:
        """``<deploy_to>/current``, the symlink to the live release."""
        return posixpath.join(self.deploy_to, "current")

    @property
    def state_dir(self) -> str:
        """``<deploy_to>/.deploytest``: the lock and the audit log."""
        return posixpath.join(self.deploy_to, ".deploytest")


_TOP_KEYS = {
    "app",
    "deploy_to",
    "source",
    "keep_releases",
    "shared",
    "hooks",
    "checks",
    "verify",
    "rollout",
    "sudo",
    "connect_timeout",
    "min_free_mb",
    "step_timeout",
    "tests",
    "pytest_args",
    "notify",
}


def _source(value: object) -> Source | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, dict):
        _check_keys(value, {"git", "ref"}, "source.")
        url = _string(value, "git", "source.", required=True)
        ref = _string(value, "ref", "source.", default="HEAD")
        assert url is not None and ref is not None
        if url.startswith("-") or ref.startswith("-"):
            raise _fail("source.git", "a git URL and ref that do not start with '-'", value)
        return GitSource(url, ref)
    raise _fail("source", "a local directory, a .tar.gz file, or {git: URL, ref: REF}", value)


def load(data: Mapping[str, Any] | None, *, base_dir: str = ".", need_source: bool = False,
         source: str | None = None, label: str | None = None) -> Settings:
    """Validate the ``deploytest`` config mapping and return :class:`Settings`.

    :param data: the ``deploytest`` key of Fabric's config (a mapping).
    :param base_dir: the directory relative ``source`` paths are resolved against.
    :param need_source: refuse a config without ``source`` (deploy needs one; verify does not).
    :param source: this run's source (``--source``: a directory or .tar.gz), validated as
        ``deploytest.source`` is, instead of the configured one.
    :param label: this run's release label (``--label``): one line of printable text.
    :raises ConfigError: with one line naming the bad key and what was expected.
    """
    if data is None or (hasattr(data, "__len__") and len(data) == 0):
        raise ConfigError(
            "config deploytest: missing. Add a 'deploytest:' section to fabric.yaml beside your fabfile"
            " (at least deploy_to). Nothing was changed."
        )
    if not isinstance(data, Mapping):
        raise _fail("", "a mapping", data)
    data = dict(data)
    _check_keys(data, _TOP_KEYS, "")
    deploy_to = _string(data, "deploy_to", "", required=True)
    assert deploy_to is not None
    app = _string(data, "app", "", default="app") or "app"
    if not _NAME.match(app):
        raise _fail("app", "a name of letters, digits, '.', '_' or '-'", app)
    configured = _source(data.get("source"))
    if source is not None:
        if not source.strip() or "\x00" in source or "\n" in source:
            raise ConfigError(f"--source: expected a local directory or a .tar.gz file, got {source!r}."
                              " Nothing was changed.")
        configured = source
    if label is not None and not re.fullmatch(r"[^\x00-\x1f\x7f]{1,100}", label):
        raise ConfigError(f"--label: expected one line of up to 100 printable characters, got {label[:120]!r}."
                          " Nothing was changed.")
    if need_source and configured is None:
        raise ConfigError("config deploytest.source: missing (required to deploy). Nothing was changed.")
    shared = tuple(clean_relative_path(p, "shared") for p in _string_list(data, "shared", ""))

    hooks = data.get("hooks") or {}
    if not isinstance(hooks, Mapping):
        raise _fail("hooks", "a mapping with build, restart and/or stop lists", hooks)
    _check_keys(hooks, {"build", "restart", "stop"}, "hooks.")

    verify_data = data.get("verify") or {}
    if not isinstance(verify_data, Mapping):
        raise _fail("verify", "a mapping like {timeout: 30, interval: 1}", verify_data)
    _check_keys(verify_data, {"timeout", "interval"}, "verify.")
    verify = VerifySettings(
        timeout=float(_number(verify_data, "timeout", "verify.", 30.0)),
        interval=float(_number(verify_data, "interval", "verify.", 1.0, minimum=0.05)),
    )

    rollout_data = data.get("rollout") or {}
    if not isinstance(rollout_data, Mapping):
        raise _fail("rollout", "a mapping like {batches: [1, \"50%\"], max_fail: 0, parallel: 10}", rollout_data)
    _check_keys(rollout_data, {"batches", "max_fail", "parallel", "prepare", *GATE_KEYS}, "rollout.")
    prepare_mode = rollout_data.get("prepare", "all")
    if prepare_mode not in ("all", "per_batch"):
        raise _fail("rollout.prepare", '"all" (every host before the canary) or "per_batch"', prepare_mode)
    rollout = RolloutSettings(
        batches=_batches(rollout_data["batches"]) if "batches" in rollout_data else (1, "100%"),
        max_fail=int(_number(rollout_data, "max_fail", "rollout.", 0, integer=True)),
        parallel=int(_number(rollout_data, "parallel", "rollout.", 50, minimum=1, integer=True)),
        prepare=str(prepare_mode),
        **parse_gates(rollout_data),
    )

    sudo = data.get("sudo", False)
    if not isinstance(sudo, bool):
        raise _fail("sudo", "true or false", sudo)
    tests = _tests(data)

    return Settings(
        deploy_to=_deploy_to(deploy_to),
        app=app,
        source=configured,
        keep_releases=int(_number(data, "keep_releases", "", 5, minimum=1, integer=True)),
        shared=shared,
        build_hooks=_string_list(hooks, "build", "hooks."),
        restart_hooks=_string_list(hooks, "restart", "hooks."),
        stop_hooks=_string_list(hooks, "stop", "hooks."),
        checks=tuple(parse_checks(data.get("checks"))),
        tests=tests,
        suite=_suite_json(data.get("checks"), tests),
        verify=verify,
        rollout=rollout,
        sudo=sudo,
        connect_timeout=float(_number(data, "connect_timeout", "", 10.0, minimum=1)),
        min_free_mb=int(_number(data, "min_free_mb", "", 1, integer=True)),
        step_timeout=float(_number(data, "step_timeout", "", 900.0, minimum=1)),
        base_dir=base_dir,
        label=label,
        notify=parse_notify(data.get("notify")),
    )


def _tests(data: Mapping[str, Any]) -> DeploymentTests | None:
    """``tests`` (files, directories or node ids relative to the fabfile's directory) and ``pytest_args``."""
    paths = _string_list(data, "tests", "")
    args = _string_list(data, "pytest_args", "")
    for path in paths:
        file_part = path.split("::", 1)[0]
        if not file_part.strip() or posixpath.isabs(file_part) or ".." in file_part.split("/") \
                or "\x00" in path or "\n" in path:
            raise _fail("tests", "files, directories or node ids inside the fabfile's directory"
                        " (relative, no '..')", path)
    if any("\x00" in arg for arg in args):
        raise _fail("pytest_args", "a list of strings", list(args))
    return DeploymentTests(paths, args) if paths else None


def _suite_json(raw: object, tests: DeploymentTests | None = None) -> str:
    """The suite as written, as one JSON text (YAML gives plain data; anything else is kept as text)."""
    suite: dict[str, Any] = {"checks": _plain(raw or [])}
    if tests is not None:
        suite["tests"] = tests.to_dict()
    return json.dumps(suite, sort_keys=True, separators=(",", ":"))


def _plain(value: object) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def with_suite(settings: Settings, suite: str) -> Settings:
    """``settings`` whose checks and tests are a recorded suite (JSON, as :attr:`Settings.suite` holds it:
    ``{"checks": [...], "tests": {...}}``, or a list of checks as recorded before tests existed).

    :raises ConfigError: the recorded suite does not validate with today's check catalog.
    """
    try:
        raw = json.loads(suite)
    except ValueError as error:
        raise ConfigError(f"recorded suite: not JSON ({error})") from None
    tests: DeploymentTests | None = None
    if isinstance(raw, dict):
        _check_keys(raw, {"checks", "tests"}, "(recorded suite).")
        recorded = raw.get("tests")
        if recorded is not None:
            if not isinstance(recorded, dict):
                raise ConfigError("recorded suite: tests: expected a mapping")
            _check_keys(recorded, {"paths", "pytest_args", "archive"}, "(recorded suite).tests.")
            tests = _tests({"tests": recorded.get("paths"), "pytest_args": recorded.get("pytest_args")})
            archive = recorded.get("archive")
            if tests is None or not isinstance(archive, str) or not archive:
                raise ConfigError("recorded suite: tests without their recorded files")
            tests = dataclasses.replace(tests, archive=archive)
        raw = raw.get("checks")
    return dataclasses.replace(settings, checks=tuple(parse_checks(raw)), tests=tests,
                               suite=_suite_json(raw, tests))


def plan_batches(hosts: Sequence[str], batches: Sequence[Union[int, str]]) -> list[list[str]]:
    """Split hosts into rollout batches, like Ansible's ``serial``; the last size repeats.

    ``[1, "50%"]`` over 5 hosts gives ``[[h1], [h2, h3], [h4, h5]]``: one canary, then half of the
    rest at a time. A percentage is of the hosts left when the first percentage batch starts,
    rounded up, and at least one host.
    """
    remaining = list(hosts)
    out: list[list[str]] = []
    base: int | None = None
    index = 0
    while remaining:
        spec = batches[min(index, len(batches) - 1)]
        if isinstance(spec, str):
            if base is None:
                base = len(remaining)
            size = -(-round(float(spec[:-1]) * base) // 100)
        else:
            size = spec
        size = max(1, size)
        out.append(remaining[:size])
        remaining = remaining[size:]
        index += 1
    return out
