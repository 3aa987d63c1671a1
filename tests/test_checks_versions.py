"""Version ordering of the package check against each manager's own rules.

dpkg's ordering is checked against ``dpkg --compare-versions`` itself (the ground truth on this
machine); rpm's and apk's against the known answers of their own test suites; pip's against PEP 440.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess

import pytest

from deploytest.checks import make_check
from deploytest.checks.version_order import VersionError, apk_compare, dpkg_compare, rpm_compare
from deploytest.checks.versions import satisfies
from deploytest.errors import ConfigError

DPKG_VERSIONS = [
    "1.0", "1.0-1", "1:1.0", "0:1.0", "2:0", "1:0.1", "1.0~rc1", "1.0~", "1.0~~", "1.0~~a", "1.0a~", "1.0+b1",
    "1.0.1", "1.00", "1.0a", "1.0-1~deb12u1", "1.0-1+b2", "1.0-0", "1.0-1.1", "1.0-1a", "2.40-2", "2.40.2",
    "5.2.15-2+b8", "5.2.15.1", "1.0.0", "10", "9", "1.2rc1", "1.2", "1.14.10-1~deb12u1", "1.14.10-1",
]


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg (the reference ordering)")
def test_dpkg_order_is_dpkgs_own() -> None:
    wrong = []
    for a, b in itertools.product(DPKG_VERSIONS, DPKG_VERSIONS):
        ours = dpkg_compare(a, b)
        lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
        eq = subprocess.run(["dpkg", "--compare-versions", a, "eq", b]).returncode == 0
        if (ours < 0, ours == 0) != (lt, eq):
            wrong.append((a, b, ours))
    assert wrong == []


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [  # rpm's tests/rpmvercmp.at
        ("1.0", "1.0", 0), ("1.0", "2.0", -1), ("2.0.1", "2.0", 1), ("2.0.1a", "2.0.1", 1), ("5.5p1", "5.5p2", -1),
        ("5.5p10", "5.5p1", 1), ("10xyz", "10.1xyz", -1), ("xyz10", "xyz10.1", -1), ("1.0~rc1", "1.0", -1),
        ("1.0~rc1", "1.0~rc2", -1), ("1.0~rc1~git123", "1.0~rc1", -1), ("1.0^", "1.0", 1), ("1.0^git1", "1.01", -1),
        ("1.0^20160101", "1.0.1", -1), ("1.0~rc1^git1", "1.0~rc1", 1), ("1.0a", "1.0", 1), ("10b2", "10a1", 1),
        ("6.0.rc1", "6.0", 1), ("1:1.0", "2.0", 1), ("1.0-2.el9", "1.0-10.el9", -1), ("1.0", "1.0-5", 0),
    ],
)
def test_rpm_order(a: str, b: str, want: int) -> None:
    assert rpm_compare(a, b) == want


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [  # apk-tools' version ordering
        ("1.0", "1.0", 0), ("1.0_rc1", "1.0", -1), ("1.0_p1", "1.0", 1), ("1.0-r1", "1.0-r0", 1), ("1.0.1", "1.0", 1),
        ("1.0a", "1.0", 1), ("1.0_alpha", "1.0_beta", -1), ("1.10", "1.9", 1), ("1.01", "1.1", -1),
        ("1.0-r1", "1.0", 1), ("1.0_rc1", "1.0_rc2", -1), ("1.2.3", "1.2.3_p0", -1),
    ],
)
def test_apk_order(a: str, b: str, want: int) -> None:
    assert apk_compare(a, b) == want


@pytest.mark.parametrize(
    ("installed", "spec", "manager", "want"),
    [
        ("2.40-2", ">=2.40.2", "dpkg", False),
        ("2.40-2", "<2.40.1", "dpkg", True),
        ("1.14.10-1~deb12u1", "==1.14.10-1", "dpkg", False),
        ("5.2.15-2+b8", "<5.2.15.1", "dpkg", True),
        ("5.2.15-2+b8", "==5.2.15-2", "dpkg", True),
        ("1.2rc1", ">=1.2", "pip", False),
        ("1.2rc1", "<1.2", "pip", True),
        ("2.0.dev1", ">=2.0", "pip", False),
        ("1.2.0", "<=1.2", "pip", True),
        ("1.2.0", "<=1.2", "dpkg", False),
        ("1.2.3", "==1.2", "pip", False),
        ("1.2.3", "==1.2.*", "pip", True),
        ("1.2.3", "1.2", "rpm", True),
        ("1.2~rc1", "1.2", "rpm", False),
        ("1.2.3-r0", ">=1.2.3_rc1, <1.3", "apk", True),
    ],
)
def test_satisfies(installed: str, spec: str, manager: str, want: bool) -> None:
    assert satisfies(installed, spec, manager) is want


@pytest.mark.parametrize(
    ("spec", "manager"),
    [
        ("abc", "dpkg"),
        (">=1.0-", "dpkg"),
        ("~=1.2", "dpkg"),
        ("==1.0.x", "pip"),
        (">=1..2:x", "auto"),
        ("1.0_zz", "apk"),
    ],
)
def test_unparseable_constraint_is_a_config_error(spec: str, manager: str) -> None:
    with pytest.raises(ConfigError, match=r"\.version: .*Nothing was changed\.$"):
        make_check("package", name="x", version=spec, manager=manager)


def test_unparseable_installed_version_is_not_a_guess() -> None:
    with pytest.raises(VersionError):
        satisfies("not-a-version", ">=1.0", "pip")
