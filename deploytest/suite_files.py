"""The deployment tests' files: today's, or recorded with a release.

The files are recorded with each verified release (:func:`snapshot`: a tar.gz, base64, bounded by
:data:`MAX_ARCHIVE`); a rollback to that release runs them from a temporary directory (:func:`workspace`).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import gzip
import io
import json
import os
import posixpath
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Iterator

from .config import DeploymentTests, Settings
from .errors import ConfigError

#: The most the recorded test files may take in a release's suite (base64 of their tar.gz): the suite
#: travels to each host inside one remote command, which the kernel bounds at 128 KiB.
MAX_ARCHIVE = 48 * 1024


def files_of(tests: DeploymentTests, base_dir: str) -> list[str]:
    """The files the tests need, relative to ``base_dir``: everything under the named directories and
    the named files, with the ``conftest.py`` and ``__init__.py`` files above them (sorted)."""
    found: set[str] = set()
    for path in tests.paths:
        rel = posixpath.normpath(path.split("::", 1)[0])
        full = os.path.join(base_dir, rel)
        if os.path.isdir(full):
            for root, dirs, files in os.walk(full):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
                for name in files:
                    if not name.startswith(".") and not name.endswith((".pyc", ".pyo")):
                        candidate = os.path.join(root, name)
                        if os.path.isfile(candidate) and not os.path.islink(candidate):
                            found.add(os.path.relpath(candidate, base_dir))
        elif os.path.isfile(full):
            found.add(rel)
        parent = posixpath.dirname(rel) if not os.path.isdir(full) else rel
        while True:
            for name in ("conftest.py", "__init__.py"):
                candidate = posixpath.join(parent, name) if parent else name
                if os.path.isfile(os.path.join(base_dir, candidate)):
                    found.add(candidate)
            if not parent:
                break
            parent = posixpath.dirname(parent)
    return sorted(found)


def pack(tests: DeploymentTests, base_dir: str) -> str:
    """The test files as base64 of a reproducible tar.gz (same files, same text)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in files_of(tests, base_dir):
            with open(os.path.join(base_dir, rel), "rb") as handle:
                data = handle.read()
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(gzip.compress(raw.getvalue(), mtime=0)).decode("ascii")


def unpack(archive: str, into: str) -> None:
    """Write recorded test files under ``into`` (regular files with relative paths only)."""
    data = gzip.decompress(base64.b64decode(archive.encode("ascii")))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for member in tar.getmembers():
            name = posixpath.normpath(member.name)
            if not member.isreg() or posixpath.isabs(name) or name.startswith(".."):
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            path = os.path.join(into, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(source.read())


def snapshot(settings: Settings) -> Settings:
    """``settings`` whose suite records today's test files (to go with each verified release).

    :raises ConfigError: the files are past :data:`MAX_ARCHIVE` or cannot be read (exit 2).
    """
    tests = settings.tests
    if tests is None or tests.archive is not None:
        return settings
    try:
        archive = pack(tests, settings.base_dir)
    except OSError as error:
        raise ConfigError(f"config deploytest.tests: cannot read the test files ({error})."
                          " Nothing was changed.") from None
    if len(archive) > MAX_ARCHIVE:
        raise ConfigError(f"config deploytest.tests: the test files take {len(archive) // 1024} KiB packed; at most"
                          f" {MAX_ARCHIVE // 1024} KiB are recorded with a release (its rollback runs them)."
                          " Nothing was changed.")
    suite = json.loads(settings.suite)
    recorded = dataclasses.replace(tests, archive=archive)
    suite["tests"] = recorded.to_dict()
    return dataclasses.replace(settings, tests=recorded,
                               suite=json.dumps(suite, sort_keys=True, separators=(",", ":")))


@dataclass
class Workspace:
    """Where a session runs: its rootdir, the paths to hand pytest, and the directories whose modules
    are the tests' own (imported anew by each verification)."""

    rootdir: str
    paths: list[str]
    own: list[str]


@contextlib.contextmanager
def workspace(tests: DeploymentTests, base_dir: str) -> Iterator[Workspace]:
    """Today's files in ``base_dir``, or the recorded ones unpacked into a temporary directory."""
    if tests.archive is None:
        own = []
        for path in tests.paths:
            full = os.path.join(base_dir, path.split("::", 1)[0])
            own.append(full if os.path.isdir(full) else os.path.dirname(full))
        yield Workspace(base_dir, [_arg(base_dir, p) for p in tests.paths], own)
        return
    with tempfile.TemporaryDirectory(prefix="deploytest-tests-") as tmp:
        unpack(tests.archive, tmp)
        yield Workspace(tmp, [_arg(tmp, p) for p in tests.paths], [tmp])


def _arg(root: str, path: str) -> str:
    """A path (or node id) for pytest: relative to the current directory when under it, as pytest's
    own messages then read."""
    file_part, sep, rest = path.partition("::")
    full = os.path.join(root, file_part)
    cwd = os.getcwd()
    shown = os.path.relpath(full, cwd) if (full + os.sep).startswith(cwd + os.sep) or full == cwd else full
    return shown + sep + rest
