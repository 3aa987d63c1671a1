"""How each package manager orders versions: dpkg, rpm and apk, as their own code does.

- dpkg: Debian policy as dpkg implements it (``verrevcmp``): epochs, ``~`` before everything, revisions.
- rpm: ``rpmvercmp`` on epoch, version and release (``~`` pre-releases, ``^`` snapshots).
- apk: apk-tools' ordering (``_alpha``..``_rc`` before the release, ``_p`` after, ``-rN`` revisions).

pip's order is PEP 440's, through :mod:`packaging` (see :mod:`deploytest.checks.versions`).
"""

from __future__ import annotations

import re
from typing import Callable


class VersionError(ValueError):
    """A version or constraint that the package manager's rules cannot parse."""


# --- dpkg ------------------------------------------------------------------------------------------


def _dpkg_split(version: str) -> tuple[int, str, str]:
    """Epoch, upstream version and revision, checked as dpkg's ``parseversion`` checks them."""
    if not version or version != version.strip() or any(c.isspace() for c in version):
        raise VersionError(f"{version!r} is not a dpkg version (empty or contains blanks)")
    epoch_text, colon, rest = version.partition(":")
    if not colon:
        epoch_text, rest = "0", version
    if not epoch_text.isdigit():
        raise VersionError(f"{version!r} is not a dpkg version (the epoch must be a number)")
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, ""
    elif not revision:
        raise VersionError(f"{version!r} is not a dpkg version (empty revision after '-')")
    if not upstream or not upstream[0].isdigit():
        raise VersionError(f"{version!r} is not a dpkg version (it must start with a digit)")
    if re.fullmatch(r"[A-Za-z0-9.+~:-]+", upstream) is None:
        raise VersionError(f"{version!r} is not a dpkg version (invalid character in the upstream part)")
    if revision and re.fullmatch(r"[A-Za-z0-9.+~]+", revision) is None:
        raise VersionError(f"{version!r} is not a dpkg version (invalid character in the revision)")
    return int(epoch_text), upstream, revision


def _dpkg_order(c: str) -> int:
    if not c or c.isdigit():
        return 0
    if c.isascii() and c.isalpha():
        return ord(c)
    if c == "~":
        return -1
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    """dpkg's ``verrevcmp``: non-digit runs by :func:`_dpkg_order`, digit runs as numbers."""
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _dpkg_order(a[i] if i < len(a) else "")
            bc = _dpkg_order(b[j] if j < len(b) else "")
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        first_diff = 0
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def dpkg_compare(a: str, b: str) -> int:
    """Compare two Debian versions as ``dpkg --compare-versions`` does (negative, 0, positive)."""
    ea, ua, ra = _dpkg_split(a)
    eb, ub, rb = _dpkg_split(b)
    if ea != eb:
        return ea - eb
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


# --- rpm -------------------------------------------------------------------------------------------


def _rpm_split(version: str) -> tuple[int, str, str | None]:
    if not version or re.fullmatch(r"(\d+:)?[A-Za-z0-9._+~^]+(-[A-Za-z0-9._+~^]+)?", version) is None:
        raise VersionError(f"{version!r} is not an rpm version ([epoch:]version[-release])")
    epoch_text, colon, rest = version.partition(":")
    if not colon:
        epoch_text, rest = "0", version
    ver, dash, release = rest.partition("-")
    return int(epoch_text), ver, (release if dash else None)


def rpmvercmp(a: str, b: str) -> int:
    """rpm's ``rpmvercmp`` on one version or release string (-1, 0 or 1)."""
    if a == b:
        return 0
    i = j = 0
    while i < len(a) or j < len(b):
        while i < len(a) and not a[i].isalnum() and a[i] not in "~^":
            i += 1
        while j < len(b) and not b[j].isalnum() and b[j] not in "~^":
            j += 1
        ca = a[i] if i < len(a) else ""
        cb = b[j] if j < len(b) else ""
        if ca == "~" or cb == "~":
            if ca != "~":
                return 1
            if cb != "~":
                return -1
            i += 1
            j += 1
            continue
        if ca == "^" or cb == "^":
            if not ca:
                return -1
            if not cb:
                return 1
            if ca != "^":
                return 1
            if cb != "^":
                return -1
            i += 1
            j += 1
            continue
        if not (ca and cb):
            break
        numeric = ca.isdigit()
        kind: Callable[[str], bool] = str.isdigit if numeric else (lambda c: c.isascii() and c.isalpha())
        si, sj = i, j
        while i < len(a) and kind(a[i]):
            i += 1
        while j < len(b) and kind(b[j]):
            j += 1
        one, two = a[si:i], b[sj:j]
        if not one:
            return -1  # rpm: arbitrary, a number segment against a letter segment
        if not two:
            return 1 if numeric else -1
        if numeric:
            one, two = one.lstrip("0"), two.lstrip("0")
            if len(one) != len(two):
                return 1 if len(one) > len(two) else -1
        if one != two:
            return 1 if one > two else -1
    rest_a, rest_b = i >= len(a), j >= len(b)
    if rest_a and rest_b:
        return 0
    return -1 if rest_a else 1


def rpm_compare(a: str, b: str) -> int:
    """Compare ``[epoch:]version[-release]`` as rpm does; a release missing on one side is not compared."""
    ea, va, ra = _rpm_split(a)
    eb, vb, rb = _rpm_split(b)
    if ea != eb:
        return 1 if ea > eb else -1
    result = rpmvercmp(va, vb)
    if result or ra is None or rb is None:
        return result
    return rpmvercmp(ra, rb)


# --- apk -------------------------------------------------------------------------------------------

_INVALID, _DIGIT_OR_ZERO, _DIGIT, _LETTER, _SUFFIX, _SUFFIX_NO, _REVISION_NO, _END = range(-1, 7)
_PRE = ("alpha", "beta", "pre", "rc")
_POST = ("cvs", "svn", "git", "hg", "p")


class _ApkBlob:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def left(self) -> int:
        return len(self.text) - self.pos

    def at(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""


def _apk_next(kind: int, blob: _ApkBlob) -> int:
    new = _INVALID
    c = blob.at()
    if blob.left() == 0 or c == "\0":
        return _END
    if kind in (_DIGIT, _DIGIT_OR_ZERO) and c.islower():
        new = _LETTER
    elif kind == _LETTER and c.isdigit():
        new = _DIGIT
    elif kind == _SUFFIX and c.isdigit():
        new = _SUFFIX_NO
    else:
        if c == ".":
            new = _DIGIT_OR_ZERO
        elif c == "_":
            new = _SUFFIX
        elif c == "-":
            if blob.left() > 1 and blob.at(1) == "r":
                new = _REVISION_NO
                blob.pos += 1
        blob.pos += 1
    if new < kind and not (
        (new == _DIGIT_OR_ZERO and kind == _DIGIT)
        or (new == _SUFFIX and kind == _SUFFIX_NO)
        or (new == _DIGIT and kind == _LETTER)
    ):
        new = _INVALID
    return new


def _apk_token(kind: int, blob: _ApkBlob) -> tuple[int, int]:
    """apk-tools' ``get_token``: the value of the token at ``blob`` and the kind of the next one."""
    if blob.left() <= 0:
        return 0, _END
    value = 0
    length = 0
    following = _INVALID
    zeros = 0
    while kind == _DIGIT_OR_ZERO and blob.at(zeros) == "0":
        zeros += 1
    if zeros and blob.at(zeros).isdigit():  # "1.01": leading zeros sort before any number
        length = zeros
        following = _DIGIT
        value = -length
    elif kind in (_DIGIT_OR_ZERO, _DIGIT, _SUFFIX_NO, _REVISION_NO):
        while blob.at(length).isdigit():
            value = value * 10 + int(blob.at(length))
            length += 1
    elif kind == _LETTER:
        value = ord(blob.at())
        length = 1
    elif kind == _SUFFIX:
        rest = blob.text[blob.pos :]
        pre = next((n for n, word in enumerate(_PRE) if rest.startswith(word)), None)
        post = next((n for n, word in enumerate(_POST) if rest.startswith(word)), None)
        if pre is not None:
            value, length = pre - len(_PRE), len(_PRE[pre])
        elif post is not None:
            value, length = post, len(_POST[post])
        else:
            return -1, _INVALID
    else:
        return -1, _INVALID
    blob.pos += length
    if blob.left() == 0:
        return value, _END
    if following != _INVALID:
        return value, following
    return value, _apk_next(kind, blob)


def apk_valid(version: str) -> bool:
    """Whether apk-tools accepts ``version`` (``1.2.3_rc1-r0``)."""
    if not version or not version[0].isdigit():
        return False
    blob, kind = _ApkBlob(version), _DIGIT
    while kind not in (_END, _INVALID):
        _, kind = _apk_token(kind, blob)
    return kind == _END


def apk_compare(a: str, b: str) -> int:
    """Compare two apk versions as ``apk version -t`` does (-1, 0 or 1)."""
    for version in (a, b):
        if not apk_valid(version):
            raise VersionError(f"{version!r} is not an apk version (like 1.2.3_rc1-r0)")
    ba, bb = _ApkBlob(a), _ApkBlob(b)
    at = bt = _DIGIT
    av = bv = 0
    while at == bt and at not in (_END, _INVALID) and av == bv:
        av, at = _apk_token(at, ba)
        bv, bt = _apk_token(bt, bb)
    if av != bv:
        return -1 if av < bv else 1
    if at == bt:
        return 0
    if at == _SUFFIX and _apk_token(at, _ApkBlob(ba.text[ba.pos :]))[0] < 0:
        return -1
    if bt == _SUFFIX and _apk_token(bt, _ApkBlob(bb.text[bb.pos :]))[0] < 0:
        return 1
    if at > bt:
        return -1
    if bt > at:
        return 1
    return 0
