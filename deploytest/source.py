"""What a release is made of: the configured source packed once, locally, before any host is touched.

A local directory becomes a ``.tar.gz`` in memory, a local ``.tar.gz`` is sent as it is, a git source
sends nothing (each host clones it; its label is the commit the host resolved). The archive is
streamed to each host in one session, whatever the number of files.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import posixpath
import tarfile
from dataclasses import dataclass
from typing import Optional

from .config import GitSource, Settings
from .errors import ConfigError

DIRECTORY = "directory"
TARBALL = "tarball"
GIT = "git"

_SKIP = {".git"}


@dataclass(frozen=True)
class Package:
    """A release's content, ready to send to every host.

    :ivar data: the ``.tar.gz`` bytes to stream to each host (None for git).
    :ivar label: what the release is: a content hash (12 hex) for a directory or tarball, the git ref
        for git until a host resolves it to a commit.
    :ivar kind: ``directory``, ``tarball`` or ``git``.
    :ivar origin: where it came from (a local path, or the git URL without credentials).
    :ivar files: number of files packed (0 when unknown).
    """

    data: Optional[bytes]
    label: str
    kind: str
    origin: str
    files: int = 0
    git: Optional[GitSource] = None

    @property
    def size(self) -> int:
        """Bytes to upload to each host."""
        return len(self.data) if self.data is not None else 0

    @property
    def unpacked_size(self) -> int:
        """Bytes the release takes once unpacked (about): the tar stream's length from gzip's trailer."""
        if self.data is None or len(self.data) < 18:
            return 0
        return max(int.from_bytes(self.data[-4:], "little"), self.size)  # the trailer counts mod 4 GiB

    @property
    def size_mb(self) -> int:
        """Upload size in MiB, rounded up; what preflight adds to ``min_free_mb``."""
        return -(-self.size // (1024 * 1024))


def pack_source(settings: Settings) -> Package:
    """Pack ``settings.source``; pure local work, no host. Its label is ``settings.label`` when given
    (``--label``), else the content hash (or the git ref).

    :raises ConfigError: no source configured, or it does not exist, cannot be read or holds a file name
        that is not UTF-8.
    """
    package = _pack(settings)
    return dataclasses.replace(package, label=settings.label) if settings.label else package


def _pack(settings: Settings) -> Package:
    source = settings.source
    if source is None:
        raise ConfigError("config deploytest.source: missing (required to deploy). Nothing was changed.")
    if isinstance(source, GitSource):
        return Package(None, source.ref, GIT, redact_url(source.url), git=source)
    path = os.path.normpath(os.path.join(os.path.expanduser(settings.base_dir), os.path.expanduser(source)))
    if not os.path.exists(path):
        raise ConfigError(f"source {source} does not exist (looked for {path}). Nothing was changed.")
    if os.path.isdir(path):
        try:
            data, label, files = pack_directory(path)
        except OSError as exc:
            raise ConfigError(f"source {source}: cannot read {exc.filename or path}: {exc.strerror or exc}."
                              " Nothing was changed.") from exc
        return Package(data, label, DIRECTORY, path, files)
    if path.endswith((".tar.gz", ".tgz")):
        return _read_tarball(source, path)
    raise ConfigError(f"source {source}: expected a directory or a .tar.gz file. Nothing was changed.")


def pack_directory(path: str) -> tuple[bytes, str, int]:
    """``(tar.gz bytes, label, file count)`` for a directory; the label is a hash of paths and contents.

    Owners are dropped (files belong to whoever extracts them); symlinks stay symlinks; ``.git`` is
    left out. The label depends only on names, contents, symlink targets and executable bits.
    """
    digest = hashlib.sha256()
    buffer = io.BytesIO()
    files = 0
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relative, full in _walk(path):
            info = tar.gettarinfo(full, arcname=relative)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isfile():
                files += 1
                digest.update(b"F\0" + relative.encode() + b"\0" + str(info.mode & 0o111).encode() + b"\0")
                with open(full, "rb") as handle:
                    file_digest = hashlib.sha256()
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        file_digest.update(chunk)
                    digest.update(file_digest.digest())
                    handle.seek(0)
                    tar.addfile(info, handle)
            elif info.issym():
                _refuse_escaping_link(relative, info.linkname, "source symlink")
                digest.update(b"L\0" + relative.encode() + b"\0" + info.linkname.encode() + b"\0")
                tar.addfile(info)
            elif info.isdir():
                digest.update(b"D\0" + relative.encode() + b"\0")
                tar.addfile(info)
    return buffer.getvalue(), digest.hexdigest()[:12], files


def _walk(root: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for directory, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP)
        rel_dir = os.path.relpath(directory, root)
        for name in sorted(dirs) + sorted(names):
            full = os.path.join(directory, name)
            relative = name if rel_dir == "." else posixpath.join(rel_dir.replace(os.sep, "/"), name)
            try:
                relative.encode()
            except UnicodeEncodeError:
                raise ConfigError(f"source file {os.fsencode(full)!r}: its name is not UTF-8; rename it."
                                  " Nothing was changed.") from None
            if os.path.isdir(full) and not os.path.islink(full):
                out.append((relative, full))
            elif os.path.islink(full) or os.path.isfile(full):
                out.append((relative, full))
    return out


def _read_tarball(source: str, path: str) -> Package:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        members = check_tarball(data)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise ConfigError(f"source {source}: not a readable .tar.gz ({exc}). Nothing was changed.") from exc
    return Package(data, hashlib.sha256(data).hexdigest()[:12], TARBALL, path, members)


def check_tarball(data: bytes) -> int:
    """Refuse an archive that would write outside the release; return its number of files.

    :raises ConfigError: an absolute path, a ``..`` component, or a path through a symlink member.
    """
    links: set[str] = set()
    files = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:
            name = member.name
            parts = [p for p in name.split("/") if p not in ("", ".")]
            if name.startswith("/") or ".." in parts:
                raise ConfigError(f"archive member {name!r} points outside the release. Nothing was changed.")
            for i in range(1, len(parts)):
                if "/".join(parts[:i]) in links:
                    raise ConfigError(
                        f"archive member {name!r} goes through a symlink in the archive. Nothing was changed."
                    )
            if member.issym():
                _refuse_escaping_link(name, member.linkname, "archive symlink")
            if member.islnk():  # a hard link's target is a path from the archive's root
                _refuse_escaping_link(name, member.linkname, "archive hard link", from_root=True)
            if member.issym() or member.islnk():
                links.add("/".join(parts))
            if member.isfile():
                files += 1
    return files


def _refuse_escaping_link(name: str, target: str, what: str, *, from_root: bool = False) -> None:
    """Refuse a link whose target is absolute or climbs out of the release with ``..``.

    :raises ConfigError: naming the path and its target (exit 2, nothing uploaded).
    """
    base = "" if from_root else posixpath.dirname(name.strip("/"))
    resolved = posixpath.normpath(posixpath.join(base, target)) if target else ""
    if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
        raise ConfigError(f"{what} {name!r} points outside the release (-> {target!r}); a release must be"
                          " self-contained. Nothing was changed.")


def redact_url(url: str) -> str:
    """A URL without its password or token (``https://user:pw@host`` -> ``https://user@host``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    userinfo, _, host = rest.partition("@")
    return f"{scheme}://{userinfo.split(':', 1)[0]}@{host}"

